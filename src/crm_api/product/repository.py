"""All SQL of products. Every read starts from :func:`kit.scoped` (reference data: every
holder of ``products:read`` reads all of it)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit import search, statements
from crm_api.kit.filtering import one_of, time_range
from crm_api.kit.resource import Executor, ScopedSelect
from crm_api.models.product import Product
from crm_api.product.schemas import ProductListQuery, ProductSort
from crm_api.resources import PRODUCTS

R = PRODUCTS


def filtered(access: Access, query: ProductListQuery) -> ScopedSelect:
    return kit.narrow(
        kit.scoped(R, access, deleted=query.deleted),
        one_of(Product.brand, query.brand),
        one_of(Product.series, query.series),
        one_of(Product.category, query.category),
        one_of(Product.currency, query.currency),
        Product.active.is_(query.active) if query.active is not None else None,
        Product.list_price >= query.min_price if query.min_price is not None else None,
        Product.list_price <= query.max_price if query.max_price is not None else None,
        func.lower(Product.sku) == func.lower(query.sku) if query.sku else None,
        *time_range(Product.created_at, query.created_after, query.created_before),
        *time_range(Product.updated_at, query.updated_after, query.updated_before),
    )


async def list_page(executor: Executor, access: Access, query: ProductListQuery) -> dict[str, Any]:
    """One page of the catalog; with ``q`` the kit's search (:mod:`crm_api.kit.search`,
    the n-gram index of migration 0012_sdecl: best first unless ``sort`` is given)."""
    stmt = statements.list_base(R, access, query, lambda: filtered(access, query))
    return await search.page(
        executor,
        R,
        access,
        stmt,
        query.page(ProductSort),
        query.q,
        relevance="sort" not in query.model_fields_set,
        deleted=query.deleted,
    )


async def find_by_sku(
    session: AsyncSession, sku: str, exclude_id: uuid.UUID | None = None
) -> uuid.UUID | None:
    """The live product holding ``sku`` (any letter case), after taking a transaction-scoped
    advisory lock on it: concurrent writers of one SKU queue here, and the second sees the
    first's committed row (READ COMMITTED) and gets the 409 naming it, instead of hitting
    the unique index."""
    key = f"products.sku:{sku.lower()}"
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))
    stmt = select(Product.id).where(
        func.lower(Product.sku) == func.lower(sku), Product.deleted_at.is_(None)
    )
    if exclude_id is not None:
        stmt = stmt.where(Product.id != exclude_id)
    return (await session.execute(stmt.limit(1))).scalar_one_or_none()
