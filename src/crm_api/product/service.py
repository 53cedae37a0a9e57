"""Products: business rules. No HTTP here, and no commit (the request owns the transaction).

Raises: ``NotFound`` (``product_not_found``), ``Conflict`` (``product_duplicate``: the SKU
is taken, ignoring case; ``product_in_use``: order lines name the product, so it can be
deactivated but not deleted or purged), ``PreconditionFailed`` (stale If-Match).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.types import Access
from crm_api.db.reader import Reader
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.resource import Locked
from crm_api.product import repository as repo
from crm_api.product.schemas import NOT_NULLABLE, ProductCreate, ProductListQuery, ProductUpdate
from crm_api.resources import PRODUCTS, product_duplicate
from crm_api.system_settings import SystemSettings

R = PRODUCTS


async def list_products(conn: Reader, access: Access, query: ProductListQuery) -> dict[str, Any]:
    return await repo.list_page(conn, access, query)


async def get_product(conn: Reader, access: Access, product_id: uuid.UUID) -> dict[str, Any]:
    return await kit.read_or_404(conn, R, access, product_id)


async def _sku_free(session: AsyncSession, sku: str, exclude_id: uuid.UUID | None = None) -> None:
    existing = await repo.find_by_sku(session, sku, exclude_id)
    if existing is not None:
        # reference data: whoever may write products may read them all, so naming the
        # existing product leaks nothing
        raise product_duplicate(existing)


async def create_product(
    session: AsyncSession, access: Access, settings: SystemSettings, data: ProductCreate
) -> dict[str, Any]:
    values, _ = await lifecycle.prepare_create(session, R, access, None, data.model_dump())
    if values["currency"] is None:
        values["currency"] = settings.default_currency
    await _sku_free(session, data.sku)
    return await lifecycle.insert(session, R, access, values, kit.Placement(None, None))


async def update_product(
    session: AsyncSession,
    access: Access,
    product_id: uuid.UUID,
    patch: ProductUpdate,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    locked = await lifecycle.lock_or_404(
        session, R, access, product_id, if_match=if_match, require_if_match=require_if_match
    )
    before, changes = await lifecycle.prepare_update(
        session,
        R,
        access,
        None,
        locked,
        patch.model_dump(exclude_unset=True),
        not_nullable=NOT_NULLABLE,
    )
    # a change of letter case only keeps the product's own SKU
    if "sku" in changes and changes["sku"].lower() != before["sku"].lower():
        await _sku_free(session, changes["sku"], exclude_id=product_id)
    return await lifecycle.save_changes(session, R, access, locked, before, changes)


async def delete_product(
    session: AsyncSession,
    access: Access,
    product_id: uuid.UUID,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> None:
    """To the trash (restorable); a product order lines name is 409 ``product_in_use``."""
    await lifecycle.soft_delete(
        session, R, access, product_id, if_match, require_if_match=require_if_match
    )


async def restore_product(
    session: AsyncSession, access: Access, product_id: uuid.UUID
) -> dict[str, Any]:
    """A product whose SKU a live product took meanwhile stays deleted (409)."""

    async def sku_still_free(locked: Locked) -> None:
        await _sku_free(session, locked.row.sku, exclude_id=product_id)

    return await lifecycle.restore(session, R, access, product_id, prepare=sku_still_free)


async def purge_product(session: AsyncSession, access: Access, product_id: uuid.UUID) -> None:
    await lifecycle.purge(session, R, access, product_id)
