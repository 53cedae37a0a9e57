"""Customers: business rules. No HTTP here, and no commit (the request owns the transaction).

Raises: ``NotFound`` (``customer_not_found``, also for records outside the caller's scope),
``Conflict`` (``customer_duplicate``), ``Forbidden`` (``assign_not_allowed``),
``PreconditionFailed`` (stale If-Match), ``UnprocessableEntity`` (bad references).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.types import Access
from crm_api.customer import repository as repo
from crm_api.customer.schemas import (
    NOT_NULLABLE,
    CustomerCreate,
    CustomerListQuery,
    CustomerTransfer,
    CustomerTransferOne,
    CustomerUpdate,
)
from crm_api.db.reader import Reader
from crm_api.errors import Conflict, UnprocessableEntity
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.resource import Locked
from crm_api.kit.transfer import check_placement, invalid_owner
from crm_api.models.user import User
from crm_api.resources import CUSTOMERS
from crm_api.user import service as users

R = CUSTOMERS


async def list_customers(conn: Reader, access: Access, query: CustomerListQuery) -> dict[str, Any]:
    return await repo.list_page(conn, access, query)


async def get_customer(conn: Reader, access: Access, customer_id: uuid.UUID) -> dict[str, Any]:
    return await kit.read_or_404(conn, R, access, customer_id)


async def _duplicate_check(
    session: AsyncSession,
    access: Access,
    external_ref: str | None,
    tax_number: str | None,
    exclude_id: uuid.UUID | None = None,
) -> None:
    found = await repo.find_duplicate(
        session, external_ref=external_ref, tax_number=tax_number, exclude_id=exclude_id
    )
    if found is None:
        return
    field, existing_id = found
    # Name the existing record only to a caller allowed to see it (no existence leak).
    visible = await repo.is_visible(session, access, existing_id)
    raise Conflict(
        f"A customer with this {field} already exists.",
        code="customer_duplicate",
        field=field,
        existing_id=str(existing_id) if visible else None,
    )


async def create_customer(
    session: AsyncSession, access: Access, assign: Access | None, data: CustomerCreate
) -> dict[str, Any]:
    values, placement = await lifecycle.prepare_create(
        session, R, access, assign, data.model_dump(), users
    )
    assert placement is not None
    await _duplicate_check(session, access, data.external_ref, data.tax_number)
    return await lifecycle.insert(session, R, access, values, placement)


async def update_customer(
    session: AsyncSession,
    access: Access,
    assign: Access | None,
    customer_id: uuid.UUID,
    patch: CustomerUpdate,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    locked = await lifecycle.lock_or_404(
        session, R, access, customer_id, if_match=if_match, require_if_match=require_if_match
    )
    before, changes = await lifecycle.prepare_update(
        session,
        R,
        access,
        assign,
        locked,
        patch.model_dump(exclude_unset=True),
        not_nullable=NOT_NULLABLE,
        users=users,
    )
    ext, tax = changes.get("external_ref"), changes.get("tax_number")
    if ext or tax:
        await _duplicate_check(session, access, ext, tax, exclude_id=customer_id)
    return await lifecycle.save_changes(session, R, access, locked, before, changes)


async def delete_customer(
    session: AsyncSession,
    access: Access,
    customer_id: uuid.UUID,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> None:
    await lifecycle.soft_delete(
        session, R, access, customer_id, if_match, require_if_match=require_if_match
    )


async def restore_customer(
    session: AsyncSession, access: Access, customer_id: uuid.UUID
) -> dict[str, Any]:
    """A customer whose tax number a live customer took meanwhile stays deleted (409)."""

    async def no_duplicate(locked: Locked) -> None:
        if locked.row.tax_number:
            await _duplicate_check(
                session, access, None, locked.row.tax_number, exclude_id=customer_id
            )

    return await lifecycle.restore(session, R, access, customer_id, prepare=no_duplicate)


async def purge_customer(session: AsyncSession, access: Access, customer_id: uuid.UUID) -> None:
    """Remove a soft-deleted customer (and its contacts) for good."""
    await lifecycle.purge(session, R, access, customer_id)


# --- transfer ----------------------------------------------------------------------------
async def _new_owner(session: AsyncSession, access: Access, to_user_id: uuid.UUID) -> User:
    """An active user a record may be handed to, with their own org unit: the rule of
    every owner change (:func:`check_placement`)."""
    to_user = await users.get_active_user(session, to_user_id)
    if to_user is None:
        raise invalid_owner("to_user_id")
    await check_placement(session, access, to_user, to_user.org_unit_id, owner_field="to_user_id")
    return to_user


async def transfer_customers(
    session: AsyncSession, access: Access, data: CustomerTransfer
) -> dict[str, Any]:
    """Hand ``from_user_id``'s live customers (all, or those listed) to ``to_user_id``:
    owner and org unit change, ``version`` moves, one audit event per customer. Only the
    customers inside the caller's ``assign`` scope move; the others are left alone."""
    if data.from_user_id == data.to_user_id:
        raise UnprocessableEntity(
            "from_user_id and to_user_id are the same user.",
            code="same_user",
            errors=[
                {"field": "to_user_id", "code": "same_user", "message": "same as from_user_id"}
            ],
        )
    if await users.find_user(session, data.from_user_id) is None:
        raise UnprocessableEntity(
            "from_user_id is not a user.",
            code="invalid_user",
            errors=[
                {"field": "from_user_id", "code": "invalid_reference", "message": "no such user"}
            ],
        )
    to_user = await _new_owner(session, access, data.to_user_id)
    moved = await repo.transfer(
        session,
        access,
        to_owner=to_user.id,
        to_org_unit=to_user.org_unit_id,
        from_owner=data.from_user_id,
        ids=list(dict.fromkeys(data.customer_ids)) if data.customer_ids else None,
    )
    contacts = None
    if data.include_contacts:
        contacts = await repo.count_contacts(session, [m.id for m in moved])
    return {"transferred": len(moved), "contacts": contacts}


async def transfer_customer(
    session: AsyncSession,
    access: Access,
    customer_id: uuid.UUID,
    data: CustomerTransferOne,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    """Hand one customer to ``to_user_id``; the customer as it now is."""
    await lifecycle.lock_or_404(
        session, R, access, customer_id, if_match=if_match, require_if_match=require_if_match
    )
    to_user = await _new_owner(session, access, data.to_user_id)
    await repo.transfer(
        session, access, to_owner=to_user.id, to_org_unit=to_user.org_unit_id, ids=[customer_id]
    )
    return await kit.read_or_404(session, R, access, customer_id)
