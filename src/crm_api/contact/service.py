"""Contacts: business rules. No HTTP here, and no commit (the request owns the transaction).

A contact is reachable exactly when its customer is: every rule below goes through the
customer (``repository.visible`` / ``repository.lock``), and every audit event is filed
under the customer's owner and org unit, so the audit log is scoped like the contacts.

At most one live contact per customer is primary. Making a contact primary demotes the
previous one in the same transaction (with an audit event of its own), holding the
customer's row lock so two such changes cannot race.

Raises: ``NotFound`` (``contact_not_found``; ``customer_not_found`` for a customer in the
URL path that is missing, deleted or outside the caller's scope), ``PreconditionFailed``
(stale If-Match), ``PreconditionRequired`` (If-Match required by settings),
``UnprocessableEntity`` (null for a required field; ``invalid_customer`` for such a customer
named in the request body), ``Conflict`` (``primary_contact_conflict``, a safety net only).
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
from crm_api.authz.types import Access
from crm_api.contact import repository as repo
from crm_api.contact.repository import Parent
from crm_api.contact.schemas import (
    NOT_NULLABLE,
    ContactCreate,
    ContactListQuery,
    ContactUpdate,
    CustomerContactCreate,
    CustomerContactListQuery,
)
from crm_api.db.reader import Reader
from crm_api.errors import Conflict, NotFound, UnprocessableEntity
from crm_api.kit.concurrency import check_if_match
from crm_api.kit.repository import to_dict
from crm_api.models.contact import Contact

RESOURCE = "contacts"
SENSITIVE = ("mobile",)


def not_found(contact_id: uuid.UUID) -> NotFound:
    return NotFound(f"No contact {contact_id}.", code="contact_not_found")


def customer_not_found(customer_id: uuid.UUID) -> NotFound:
    return NotFound(f"No customer {customer_id}.", code="customer_not_found")


def invalid_customer() -> UnprocessableEntity:
    """A ``customer_id`` in a request body that is missing, deleted or outside the caller's
    scope: a bad reference (422, like a customer's unknown ``owner_id``), worded the same
    whichever it is so it reveals nothing."""
    return UnprocessableEntity(
        "customer_id is not a customer within your scope.", code="invalid_customer",
        errors=[{"field": "customer_id", "code": "invalid_reference",
                 "message": "no such customer in your scope"}],
    )


def present(row: dict[str, Any], access: Access) -> dict[str, Any]:
    """What the caller may see of a row: ``mobile`` masked outside the caller's
    read_sensitive scope, which reaches a contact through its customer (rows read through
    the repository carry the per-row flag)."""
    return mask_sensitive(row, access, SENSITIVE)


async def present_one(
    session: AsyncSession, access: Access, row: dict[str, Any], parent: Parent
) -> dict[str, Any]:
    """:func:`present` for a row just written (no flag read with it), judged by its
    customer's owner and org unit."""
    row[UNMASKED] = await unmasked_for(session, access, parent.owner_id, parent.org_unit_id)
    return present(row, access)


# --- reads -------------------------------------------------------------------------------
async def list_contacts(
    conn: Reader, access: Access, query: ContactListQuery
) -> dict[str, Any]:
    page = await repo.list_page(conn, access, query)
    page["data"] = [present(r, access) for r in page["data"]]
    return page


async def list_customer_contacts(
    conn: Reader, access: Access, customer_id: uuid.UUID, query: CustomerContactListQuery
) -> dict[str, Any]:
    """One customer's contacts. A customer the caller cannot see is a 404, not an empty
    page, so a client can tell "no contacts" from "wrong customer"."""
    if await repo.find_parent(conn, access, customer_id) is None:
        raise customer_not_found(customer_id)
    page = await repo.list_page(conn, access, query, customer_id)
    page["data"] = [present(r, access) for r in page["data"]]
    return page


async def get_contact(
    conn: Reader, access: Access, contact_id: uuid.UUID
) -> dict[str, Any]:
    row = await repo.get_row(conn, access, contact_id)
    if row is None:
        raise not_found(contact_id)
    return present(row, access)


# --- writes ------------------------------------------------------------------------------
async def _flush(
    session: AsyncSession, customer_id: uuid.UUID, missing: Exception | None = None
) -> None:
    """Flush, turning the constraint violations a concurrent writer could still cause into
    the errors the API documents (``missing`` when the customer went away)."""
    try:
        await session.flush()
    except IntegrityError as exc:
        text = str(exc.orig)
        if "uq_contacts_one_primary" in text:
            raise Conflict(
                "Another contact of this customer became primary at the same time; retry.",
                code="primary_contact_conflict",
            ) from exc
        if "fk_contacts_customer_id_customers" in text:
            raise (missing or customer_not_found(customer_id)) from exc
        raise


async def _demote_primary(
    session: AsyncSession, access: Access, parent: Parent, *, keep: uuid.UUID | None,
    now: datetime,
) -> None:
    """Clear the customer's current primary contact (not ``keep``), audited as an update
    of that contact. The caller holds the customer's lock (``find_parent(for_primary)``)."""
    for demoted in await repo.demote_primary(session, parent.id, keep=keep, now=now):
        audit.record(
            session, access.principal, action="update", resource_type=RESOURCE,
            resource_id=demoted, changes={"is_primary": {"before": True, "after": False}},
            owner_id=parent.owner_id, org_unit_id=parent.org_unit_id,
        )


async def create_contact(
    session: AsyncSession, access: Access, customer_id: uuid.UUID, data: CustomerContactCreate
) -> dict[str, Any]:
    """Create a contact of ``customer_id``, which must be live and inside the caller's
    contacts scope: else 404 ``customer_not_found`` when it comes from the URL path, 422
    ``invalid_customer`` when ``data`` is a :class:`ContactCreate` (it names the customer
    in the body; its ``customer_id`` is the one passed here)."""
    reject_masked(data.model_dump(include=set(SENSITIVE)), SENSITIVE)
    missing = (
        invalid_customer() if isinstance(data, ContactCreate) else customer_not_found(customer_id)
    )
    parent = await repo.find_parent(session, access, customer_id, for_primary=data.is_primary)
    if parent is None:
        raise missing
    now = datetime.now(UTC)
    if data.is_primary:
        await _demote_primary(session, access, parent, keep=None, now=now)
    values = data.model_dump(exclude={"customer_id"})
    contact = Contact(
        id=uuid.uuid4(), customer_id=parent.id, created_at=now, updated_at=now,
        deleted_at=None, version=1, **values,
    )
    session.add(contact)
    await _flush(session, parent.id, missing)
    after = to_dict(contact, repo.COLUMNS)
    audit.record(
        session, access.principal, action="create", resource_type=RESOURCE,
        resource_id=contact.id, changes=audit.diff(None, after, SENSITIVE),
        owner_id=parent.owner_id, org_unit_id=parent.org_unit_id,
    )
    return await present_one(session, access, after, parent)


async def update_contact(
    session: AsyncSession,
    access: Access,
    contact_id: uuid.UUID,
    patch: ContactUpdate,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    """Change the fields sent. Nothing actually different: no write, no event, same
    version. ``is_primary: true`` demotes the customer's previous primary contact."""
    locked = await repo.lock(session, access, contact_id)
    if locked is None:
        raise not_found(contact_id)
    contact, parent = locked
    check_if_match(if_match, contact.version, required=require_if_match)
    sent = patch.model_dump(exclude_unset=True)
    nulled = sorted(k for k, v in sent.items() if v is None and k in NOT_NULLABLE)
    if nulled:
        raise UnprocessableEntity(
            "These fields cannot be null.", code="validation_error",
            errors=[
                {"field": f, "code": "null_not_allowed", "message": "may not be null"}
                for f in nulled
            ],
        )
    before = to_dict(contact, repo.COLUMNS)
    # the masking of a contact is its customer's: judged on the customer's owner and unit
    sent = await resolve_masked(
        session, access, sent, before, SENSITIVE,
        owner_id=parent.owner_id, org_unit_id=parent.org_unit_id,
    )
    changes = {k: v for k, v in sent.items() if before[k] != v}
    if not changes:
        return await present_one(session, access, before, parent)
    now = datetime.now(UTC)
    if changes.get("is_primary") is True:
        # Demote first, then flush this one: the partial unique index never sees two.
        if await repo.find_parent(session, access, parent.id, for_primary=True) is None:
            raise not_found(contact_id)  # the customer went away while we waited
        await _demote_primary(session, access, parent, keep=contact.id, now=now)
    for key, value in changes.items():
        setattr(contact, key, value)
    contact.updated_at = now
    await _flush(session, parent.id)
    after = to_dict(contact, repo.COLUMNS)
    audit.record(
        session, access.principal, action="update", resource_type=RESOURCE,
        resource_id=contact.id, changes=audit.diff(before, after, SENSITIVE),
        owner_id=parent.owner_id, org_unit_id=parent.org_unit_id,
    )
    return await present_one(session, access, after, parent)


async def delete_contact(
    session: AsyncSession, access: Access, contact_id: uuid.UUID, if_match: str | None,
    *, require_if_match: bool,
) -> None:
    """Soft delete. A primary contact keeps its flag in the trash (the customer simply
    has no primary until another is chosen or this one is restored)."""
    locked = await repo.lock(session, access, contact_id)
    if locked is None:
        raise not_found(contact_id)
    contact, parent = locked
    check_if_match(if_match, contact.version, required=require_if_match)
    now = datetime.now(UTC)
    contact.deleted_at = now
    contact.updated_at = now
    await session.flush()
    audit.record(
        session, access.principal, action="delete", resource_type=RESOURCE,
        resource_id=contact.id, changes={"deleted_at": {"before": None, "after": now.isoformat()}},
        owner_id=parent.owner_id, org_unit_id=parent.org_unit_id,
    )


async def restore_contact(
    session: AsyncSession, access: Access, contact_id: uuid.UUID
) -> dict[str, Any]:
    """Bring a deleted contact back. If it was primary and its customer has chosen another
    primary meanwhile, it comes back as a plain contact: restoring never silently
    demotes the contact somebody picked later."""
    locked = await repo.lock(session, access, contact_id, deleted=True)
    if locked is None:
        raise NotFound(f"No deleted contact {contact_id}.", code="contact_not_found")
    contact, parent = locked
    before = to_dict(contact, repo.COLUMNS)
    if contact.is_primary:
        if await repo.find_parent(session, access, parent.id, for_primary=True) is None:
            raise NotFound(f"No deleted contact {contact_id}.", code="contact_not_found")
        if await repo.has_primary(session, parent.id):
            contact.is_primary = False
    contact.deleted_at = None
    contact.updated_at = datetime.now(UTC)
    await _flush(session, parent.id)
    after = to_dict(contact, repo.COLUMNS)
    audit.record(
        session, access.principal, action="restore", resource_type=RESOURCE,
        resource_id=contact.id, changes=audit.diff(before, after, SENSITIVE),
        owner_id=parent.owner_id, org_unit_id=parent.org_unit_id,
    )
    return await present_one(session, access, after, parent)


async def purge_contact(session: AsyncSession, access: Access, contact_id: uuid.UUID) -> None:
    """Remove a soft-deleted contact for good. A live contact is a 404: delete it first,
    so nothing disappears in one careless call."""
    locked = await repo.lock(session, access, contact_id, deleted=True)
    if locked is None:
        raise NotFound(
            f"No deleted contact {contact_id}; delete it before purging.",
            code="contact_not_found",
        )
    contact, parent = locked
    before = to_dict(contact, repo.COLUMNS)
    await session.delete(contact)
    await session.flush()
    audit.record(
        session, access.principal, action="purge", resource_type=RESOURCE,
        resource_id=contact_id, changes=audit.diff(before, None, SENSITIVE),
        owner_id=parent.owner_id, org_unit_id=parent.org_unit_id,
    )
