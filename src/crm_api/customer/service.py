"""Customers: business rules. No HTTP here, and no commit (the request owns the transaction).

Raises: ``NotFound`` (``customer_not_found``, also for records outside the caller's scope),
``Conflict`` (``customer_duplicate``), ``Forbidden`` (``assign_not_allowed``),
``PreconditionFailed`` (stale If-Match), ``UnprocessableEntity`` (bad references).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import service as audit
from crm_api.authz.masking import reject_masked, resolve_masked
from crm_api.authz.scope import UNMASKED, mask_sensitive, unmasked_for
from crm_api.authz.types import Access, PrincipalKind
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
from crm_api.errors import Conflict, Forbidden, NotFound, UnprocessableEntity
from crm_api.kit.concurrency import check_if_match
from crm_api.kit.repository import to_dict
from crm_api.kit.transfer import check_placement, invalid_owner
from crm_api.models.customer import Customer
from crm_api.models.user import User
from crm_api.user import service as users

RESOURCE = "customers"
SENSITIVE = ("bank_account", "tax_number")


def not_found(customer_id: uuid.UUID) -> NotFound:
    return NotFound(f"No customer {customer_id}.", code="customer_not_found")


def present(row: dict[str, Any], access: Access) -> dict[str, Any]:
    """What the caller may see of a row: sensitive fields masked outside the caller's
    read_sensitive scope (rows read through the repository carry the per-row flag)."""
    return mask_sensitive(row, access, SENSITIVE)


async def present_one(
    session: AsyncSession, access: Access, row: dict[str, Any]
) -> dict[str, Any]:
    """:func:`present` for a row just written (no flag read with it)."""
    row[UNMASKED] = await unmasked_for(session, access, row["owner_id"], row["org_unit_id"])
    return present(row, access)


async def list_customers(
    conn: Reader, access: Access, query: CustomerListQuery
) -> dict[str, Any]:
    page = await repo.list_page(conn, access, query)
    page["data"] = [present(r, access) for r in page["data"]]
    return page


async def get_customer(conn: Reader, access: Access, customer_id: uuid.UUID) -> dict[str, Any]:
    row = await repo.get_row(conn, access, customer_id)
    if row is None:
        raise not_found(customer_id)
    return present(row, access)


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


async def _resolve_owner(
    session: AsyncSession,
    access: Access,
    assign: Access | None,
    owner_id: uuid.UUID | None,
    org_unit_id: uuid.UUID | None,
) -> tuple[uuid.UUID, uuid.UUID | None]:
    """Owner and org unit of a new customer: the caller and their unit unless the body
    names others, which needs ``assign`` and must satisfy :func:`check_placement`."""
    principal = access.principal
    # an API client acts through its service account: that user id is the principal's id,
    # so what it creates is its own, like a person's
    acting_user = (
        principal.id if principal.kind in (PrincipalKind.user, PrincipalKind.api_client) else None
    )
    if owner_id is None:
        if acting_user is None:
            raise UnprocessableEntity(
                "owner_id is required when the caller is not a user.",
                code="owner_required",
                errors=[{"field": "owner_id", "code": "missing", "message": "required"}],
            )
        owner_id = acting_user
    chosen = owner_id != acting_user or org_unit_id is not None
    if chosen and assign is None:
        raise Forbidden(
            "Setting another owner or the org unit needs the 'assign' permission.",
            code="assign_not_allowed",
        )
    owner = await users.get_active_user(session, owner_id)
    if owner is None:
        raise invalid_owner()
    unit = org_unit_id if org_unit_id is not None else owner.org_unit_id
    if assign is not None and chosen:
        await check_placement(session, assign, owner, unit)
    return owner_id, unit


async def _flush(session: AsyncSession, access: Access, customer: Customer) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        # A concurrent insert won the unique index between our check and our write.
        text = str(exc.orig)
        field = (
            "external_ref" if "external_ref" in text
            else "tax_number" if "tax_number" in text
            else None
        )
        if field is None:
            if "org_unit" in text:
                raise UnprocessableEntity(
                    "org_unit_id does not exist.", code="invalid_org_unit",
                    errors=[{"field": "org_unit_id", "code": "invalid_reference",
                             "message": "no such org unit"}],
                ) from exc
            raise
        raise Conflict(
            f"A customer with this {field} already exists.",
            code="customer_duplicate",
            field=field,
        ) from exc


async def create_customer(
    session: AsyncSession, access: Access, assign: Access | None, data: CustomerCreate
) -> dict[str, Any]:
    reject_masked(data.model_dump(include=set(SENSITIVE)), SENSITIVE)
    await _duplicate_check(session, access, data.external_ref, data.tax_number)
    owner_id, org_unit_id = await _resolve_owner(
        session, access, assign, data.owner_id, data.org_unit_id
    )
    values = data.model_dump(exclude={"owner_id", "org_unit_id"})
    now = datetime.now(UTC)
    customer = Customer(
        id=uuid.uuid4(), owner_id=owner_id, org_unit_id=org_unit_id,
        created_at=now, updated_at=now, version=1, **values,
    )
    session.add(customer)
    await _flush(session, access, customer)
    after = to_dict(customer, repo.COLUMNS)
    audit.record(
        session, access.principal, action="create", resource_type=RESOURCE,
        resource_id=customer.id, changes=audit.diff(None, after, SENSITIVE),
        owner_id=owner_id, org_unit_id=org_unit_id,
    )
    return await present_one(session, access, after)


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
    customer = await repo.lock(session, access, customer_id)
    if customer is None:
        raise not_found(customer_id)
    check_if_match(if_match, customer.version, required=require_if_match)
    changes = patch.model_dump(exclude_unset=True)
    nulled = sorted(k for k, v in changes.items() if v is None and k in NOT_NULLABLE)
    if nulled:
        raise UnprocessableEntity(
            "These fields cannot be null.", code="validation_error",
            errors=[{"field": f, "code": "null_not_allowed", "message": "may not be null"}
                    for f in nulled],
        )
    before = to_dict(customer, repo.COLUMNS)
    changes = await resolve_masked(
        session, access, changes, before, SENSITIVE,
        owner_id=customer.owner_id, org_unit_id=customer.org_unit_id,
    )
    # Only a real change needs ``assign``: a client that GETs the customer and PATCHes it
    # back whole sends the current owner_id and org_unit_id unchanged.
    owner_changed = "owner_id" in changes and changes["owner_id"] != customer.owner_id
    unit_changed = "org_unit_id" in changes and changes["org_unit_id"] != customer.org_unit_id
    if owner_changed or unit_changed:
        if assign is None:
            raise Forbidden(
                "Changing the owner or org unit needs the 'assign' permission.",
                code="assign_not_allowed",
            )
        if owner_changed:
            owner = await users.get_active_user(session, changes["owner_id"])
            if owner is None:
                raise invalid_owner()
            changes.setdefault("org_unit_id", owner.org_unit_id)
        else:
            # the current owner stays (even if deactivated since); only the unit moves
            owner = await users.find_user(session, customer.owner_id)
        await check_placement(
            session, assign, owner, changes.get("org_unit_id", customer.org_unit_id),
            check_owner=owner_changed,
        )
    ext = changes.get("external_ref") if "external_ref" in changes else None
    tax = changes.get("tax_number") if "tax_number" in changes else None
    if (ext and ext != customer.external_ref) or (tax and tax != customer.tax_number):
        await _duplicate_check(session, access, ext, tax, exclude_id=customer.id)
    for key, value in changes.items():
        setattr(customer, key, value)
    diff = audit.diff(before, {**before, **changes}, SENSITIVE)
    if not diff:
        return await present_one(session, access, before)
    customer.updated_at = datetime.now(UTC)
    await _flush(session, access, customer)
    after = to_dict(customer, repo.COLUMNS)
    audit.record(
        session, access.principal, action="update", resource_type=RESOURCE,
        resource_id=customer.id, changes=diff,
        owner_id=customer.owner_id, org_unit_id=customer.org_unit_id,
    )
    return await present_one(session, access, after)


async def delete_customer(
    session: AsyncSession, access: Access, customer_id: uuid.UUID, if_match: str | None,
    *, require_if_match: bool,
) -> None:
    customer = await repo.lock(session, access, customer_id)
    if customer is None:
        raise not_found(customer_id)
    check_if_match(if_match, customer.version, required=require_if_match)
    now = datetime.now(UTC)
    customer.deleted_at = now
    customer.updated_at = now
    await session.flush()
    audit.record(
        session, access.principal, action="delete", resource_type=RESOURCE,
        resource_id=customer.id, changes={"deleted_at": {"before": None, "after": now.isoformat()}},
        owner_id=customer.owner_id, org_unit_id=customer.org_unit_id,
    )


async def restore_customer(
    session: AsyncSession, access: Access, customer_id: uuid.UUID
) -> dict[str, Any]:
    customer = await repo.lock(session, access, customer_id, deleted=True)
    if customer is None:
        raise NotFound(f"No deleted customer {customer_id}.", code="customer_not_found")
    if customer.tax_number:
        await _duplicate_check(session, access, None, customer.tax_number, exclude_id=customer.id)
    before = customer.deleted_at
    customer.deleted_at = None
    customer.updated_at = datetime.now(UTC)
    await _flush(session, access, customer)
    audit.record(
        session, access.principal, action="restore", resource_type=RESOURCE,
        resource_id=customer.id,
        changes={"deleted_at": {"before": before.isoformat() if before else None, "after": None}},
        owner_id=customer.owner_id, org_unit_id=customer.org_unit_id,
    )
    return await present_one(session, access, to_dict(customer, repo.COLUMNS))


async def purge_customer(session: AsyncSession, access: Access, customer_id: uuid.UUID) -> None:
    """Remove a soft-deleted customer (and its contacts) for good."""
    customer = await repo.lock(session, access, customer_id, deleted=True)
    if customer is None:
        raise NotFound(
            f"No deleted customer {customer_id}; delete it before purging.",
            code="customer_not_found",
        )
    before = to_dict(customer, repo.COLUMNS)
    await session.delete(customer)
    await session.flush()
    audit.record(
        session, access.principal, action="purge", resource_type=RESOURCE,
        resource_id=customer_id, changes=audit.diff(before, None, SENSITIVE),
        owner_id=before["owner_id"], org_unit_id=before["org_unit_id"],
    )


# --- transfer ----------------------------------------------------------------------------
async def _new_owner(session: AsyncSession, access: Access, to_user_id: uuid.UUID) -> User:
    """An active user a record may be handed to, with their own org unit: the rule of
    every owner change (:func:`check_placement`)."""
    to_user = await users.get_active_user(session, to_user_id)
    if to_user is None:
        raise invalid_owner("to_user_id")
    await check_placement(
        session, access, to_user, to_user.org_unit_id, owner_field="to_user_id"
    )
    return to_user


async def transfer_customers(
    session: AsyncSession, access: Access, data: CustomerTransfer
) -> dict[str, Any]:
    """Hand ``from_user_id``'s live customers (all, or those listed) to ``to_user_id``:
    owner and org unit change, ``version`` moves, one audit event per customer. Only the
    customers inside the caller's ``assign`` scope move; the others are left alone."""
    if data.from_user_id == data.to_user_id:
        raise UnprocessableEntity(
            "from_user_id and to_user_id are the same user.", code="same_user",
            errors=[{"field": "to_user_id", "code": "same_user",
                     "message": "same as from_user_id"}],
        )
    if await users.find_user(session, data.from_user_id) is None:
        raise UnprocessableEntity(
            "from_user_id is not a user.", code="invalid_user",
            errors=[{"field": "from_user_id", "code": "invalid_reference",
                     "message": "no such user"}],
        )
    to_user = await _new_owner(session, access, data.to_user_id)
    moved = await repo.transfer(
        session, access, to_owner=to_user.id, to_org_unit=to_user.org_unit_id,
        from_owner=data.from_user_id,
        ids=list(dict.fromkeys(data.customer_ids)) if data.customer_ids else None,
    )
    contacts = None
    if data.include_contacts:
        contacts = await repo.count_contacts(session, [m.id for m in moved])
    return {"transferred": len(moved), "contacts": contacts}


async def transfer_customer(
    session: AsyncSession, access: Access, customer_id: uuid.UUID, data: CustomerTransferOne,
    if_match: str | None,
) -> dict[str, Any]:
    """Hand one customer to ``to_user_id``; the customer as it now is."""
    customer = await repo.lock(session, access, customer_id)
    if customer is None:
        raise not_found(customer_id)
    check_if_match(if_match, customer.version, required=False)
    to_user = await _new_owner(session, access, data.to_user_id)
    await repo.transfer(
        session, access, to_owner=to_user.id, to_org_unit=to_user.org_unit_id, ids=[customer_id]
    )
    row = await repo.get_row(session, access, customer_id)
    if row is None:  # pragma: no cover - the new owner is inside the caller's scope
        raise not_found(customer_id)
    return present(row, access)
