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

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import service as audit
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
from crm_api.errors import NotFound, ProblemError, UnprocessableEntity
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.resource import Locked
from crm_api.resources import CONTACTS

R = CONTACTS
#: The customer went away between our check and our write.
_CUSTOMER_FK = "fk_contacts_customer_id_customers"


def customer_not_found(customer_id: uuid.UUID) -> NotFound:
    return NotFound(f"No customer {customer_id}.", code="customer_not_found")


def invalid_customer() -> UnprocessableEntity:
    """A ``customer_id`` in a request body that is missing, deleted or outside the caller's
    scope: a bad reference (422, like a customer's unknown ``owner_id``), worded the same
    whichever it is so it reveals nothing."""
    return UnprocessableEntity(
        "customer_id is not a customer within your scope.",
        code="invalid_customer",
        errors=[
            {
                "field": "customer_id",
                "code": "invalid_reference",
                "message": "no such customer in your scope",
            }
        ],
    )


# --- reads -------------------------------------------------------------------------------
async def list_contacts(conn: Reader, access: Access, query: ContactListQuery) -> dict[str, Any]:
    return await repo.list_page(conn, access, query)


async def list_customer_contacts(
    conn: Reader, access: Access, customer_id: uuid.UUID, query: CustomerContactListQuery
) -> dict[str, Any]:
    """One customer's contacts. A customer the caller cannot see is a 404, not an empty
    page, so a client can tell "no contacts" from "wrong customer"."""
    if await repo.find_parent(conn, access, customer_id) is None:
        raise customer_not_found(customer_id)
    return await repo.list_page(conn, access, query, customer_id)


async def get_contact(conn: Reader, access: Access, contact_id: uuid.UUID) -> dict[str, Any]:
    return await kit.read_or_404(conn, R, access, contact_id)


# --- writes ------------------------------------------------------------------------------
async def _demote_primary(
    session: AsyncSession,
    access: Access,
    parent: Parent,
    *,
    keep: uuid.UUID | None,
    now: datetime,
) -> None:
    """Clear the customer's current primary contact (not ``keep``), audited as an update
    of that contact. The caller holds the customer's lock (``find_parent(for_primary)``)."""
    for demoted in await repo.demote_primary(session, parent.id, keep=keep, now=now):
        audit.record(
            session,
            access.principal,
            action="update",
            resource_type=R.name,
            resource_id=demoted,
            changes={"is_primary": {"before": True, "after": False}},
            owner_id=parent.owner_id,
            org_unit_id=parent.org_unit_id,
        )


async def create_contact(
    session: AsyncSession, access: Access, customer_id: uuid.UUID, data: CustomerContactCreate
) -> dict[str, Any]:
    """Create a contact of ``customer_id``, which must be live and inside the caller's
    contacts scope: else 404 ``customer_not_found`` when it comes from the URL path, 422
    ``invalid_customer`` when ``data`` is a :class:`ContactCreate` (it names the customer
    in the body; its ``customer_id`` is the one passed here)."""
    values, _ = await lifecycle.prepare_create(
        session, R, access, None, data.model_dump(exclude={"customer_id"})
    )

    def missing() -> ProblemError:
        if isinstance(data, ContactCreate):
            return invalid_customer()
        return customer_not_found(customer_id)

    parent = await repo.find_parent(session, access, customer_id, for_primary=data.is_primary)
    if parent is None:
        raise missing()
    if data.is_primary:
        await _demote_primary(session, access, parent, keep=None, now=datetime.now(UTC))
    return await lifecycle.insert(
        session,
        R,
        access,
        {**values, "customer_id": parent.id, "deleted_at": None},
        parent.placement,
        overrides={_CUSTOMER_FK: missing},
    )


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
    locked = await lifecycle.lock_or_404(
        session, R, access, contact_id, if_match=if_match, require_if_match=require_if_match
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
    if changes.get("is_primary") is True:
        # Demote first, then flush this one: the partial unique index never sees two.
        parent = await repo.find_parent(session, access, locked.row.customer_id, for_primary=True)
        if parent is None:
            raise R.not_found(contact_id)  # the customer went away while we waited
        await _demote_primary(session, access, parent, keep=contact_id, now=datetime.now(UTC))
    return await lifecycle.save_changes(session, R, access, locked, before, changes)


async def delete_contact(
    session: AsyncSession,
    access: Access,
    contact_id: uuid.UUID,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> None:
    """Soft delete. A primary contact keeps its flag in the trash (the customer simply
    has no primary until another is chosen or this one is restored)."""
    await lifecycle.soft_delete(
        session, R, access, contact_id, if_match, require_if_match=require_if_match
    )


async def restore_contact(
    session: AsyncSession, access: Access, contact_id: uuid.UUID
) -> dict[str, Any]:
    """Bring a deleted contact back. If it was primary and its customer has chosen another
    primary meanwhile, it comes back as a plain contact: restoring never silently
    demotes the contact somebody picked later."""

    async def keep_one_primary(locked: Locked) -> None:
        contact = locked.row
        if not contact.is_primary:
            return
        customer_id = contact.customer_id
        if await repo.find_parent(session, access, customer_id, for_primary=True) is None:
            raise R.not_found(contact_id, detail=f"No deleted contact {contact_id}.")
        if await repo.has_primary(session, customer_id):
            contact.is_primary = False

    return await lifecycle.restore(session, R, access, contact_id, prepare=keep_one_primary)


async def purge_contact(session: AsyncSession, access: Access, contact_id: uuid.UUID) -> None:
    """Remove a soft-deleted contact for good. A live contact is a 404: delete it first,
    so nothing disappears in one careless call."""
    await lifecycle.purge(session, R, access, contact_id)
