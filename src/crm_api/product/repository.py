"""All SQL of products. Every read starts from :func:`kit.scoped` (reference data: every
holder of ``products:read`` reads all of it)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit.filtering import (
    FIELD_SEPARATOR,
    contains_lowered,
    contains_pattern,
    one_of,
    time_range,
)
from crm_api.kit.resource import Executor, ScopedSelect
from crm_api.models.product import Product
from crm_api.product.schemas import ProductListQuery, ProductSort
from crm_api.resources import PRODUCTS

R = PRODUCTS


def _search(term: str) -> ColumnElement[bool]:
    """``q``: the term in the SKU, name, brand or series; any case, anywhere (substring
    matching is what makes Chinese searchable). One LIKE over the generated, lower()ed
    ``search_text`` (migration 0006), as for customers."""
    if FIELD_SEPARATOR in term:  # could match across two fields: field by field instead
        pattern = contains_pattern(term)
        return (
            Product.sku.ilike(pattern)
            | Product.name.ilike(pattern)
            | Product.brand.ilike(pattern)
            | Product.series.ilike(pattern)
        )
    return contains_lowered(Product.__table__.c.search_text, term)


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
        _search(query.q) if query.q else None,
        *time_range(Product.created_at, query.created_after, query.created_before),
        *time_range(Product.updated_at, query.updated_after, query.updated_before),
    )


async def list_page(executor: Executor, access: Access, query: ProductListQuery) -> dict[str, Any]:
    return await kit.fetch_page(
        executor, R, access, filtered(access, query), query.page(ProductSort)
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
