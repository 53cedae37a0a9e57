"""All SQL of contacts.

Contacts have no owner of their own: a contact is visible exactly when its customer is
(live, and inside the caller's scope on the ``contacts`` resource). The registry declares
that (``CONTACTS``: ``ParentScoped(CUSTOMERS, "customer_id")``) and the kit builds the
predicate for every read and lock (:mod:`crm_api.kit.resource`); :func:`customer_in_scope`
is the same rule for the statements here that find the customer itself, so they cannot
disagree, and nothing is filtered in Python. The two helpers that
take no ``Access`` (:func:`demote_primary`, :func:`has_primary`) only run once the
customer has been found that way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.scope import scope_clause
from crm_api.authz.types import Access
from crm_api.contact.schemas import ContactListQuery, ContactSort, CustomerContactListQuery
from crm_api.kit import resource as kit
from crm_api.kit import search, statements
from crm_api.kit.filtering import (
    one_of,
    time_range,
)
from crm_api.kit.resource import Executor, Placement, ScopedSelect
from crm_api.models.contact import Contact
from crm_api.models.customer import Customer
from crm_api.resources import CONTACTS

R = CONTACTS
#: Table columns (typed ``ColumnElement``, which the kit and authz helpers take).
c = Contact.__table__.c
cu = Customer.__table__.c


@dataclass(frozen=True, slots=True)
class Parent:
    """The customer a contact belongs to, as far as contacts need it: its id, and the
    owner and org unit its contacts' audit events are filed under."""

    id: uuid.UUID
    owner_id: uuid.UUID
    org_unit_id: uuid.UUID | None

    @property
    def placement(self) -> Placement:
        return Placement(self.owner_id, self.org_unit_id)


def customer_in_scope(access: Access) -> ColumnElement[bool]:
    """Live customers ``access`` covers (a predicate on ``customers``)."""
    return and_(
        cu.deleted_at.is_(None),
        scope_clause(access, cu.owner_id, cu.org_unit_id, cu.created_by),
    )


def scoped(access: Access, *, deleted: bool = False) -> ScopedSelect:
    """Contacts ``access`` covers (their customer is live and covered); live ones, or only
    the trash with ``deleted``."""
    return kit.scoped(R, access, deleted=deleted)


def _primary(wanted: bool | None) -> ColumnElement[bool] | None:
    # A bare column (not ``= :param``) so the planner can match the partial
    # ``uq_contacts_one_primary`` index.
    if wanted is None:
        return None
    return c.is_primary if wanted else ~c.is_primary


def filtered(
    access: Access,
    query: CustomerContactListQuery,
    customer_id: uuid.UUID | None = None,
) -> ScopedSelect:
    """The scoped statement narrowed by the query's filters (and to one customer when
    listing under ``/customers/{id}/contacts``)."""
    ids = query.customer_id if isinstance(query, ContactListQuery) else None
    return kit.narrow(
        scoped(access, deleted=query.deleted),
        Contact.customer_id == customer_id if customer_id is not None else None,
        one_of(c.customer_id, ids),
        Contact.email == query.email if query.email else None,
        _primary(query.is_primary),
        *time_range(c.created_at, query.created_after, query.created_before),
        *time_range(c.updated_at, query.updated_after, query.updated_before),
    )


async def list_page(
    executor: Executor,
    access: Access,
    query: CustomerContactListQuery,
    customer_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """One page of the contacts ``access`` covers, masked (the kit's read path); with ``q``
    the kit's search (:mod:`crm_api.kit.search`: best first unless ``sort`` is given)."""
    stmt = statements.memo(
        ("contacts.list", access, statements.query_key(query), customer_id),
        lambda: filtered(access, query, customer_id),
    )
    return await search.page(
        executor,
        R,
        access,
        stmt,
        query.page(ContactSort),
        query.q,
        relevance="sort" not in query.model_fields_set,
        deleted=query.deleted,
    )


async def find_parent(
    executor: Executor, access: Access, customer_id: uuid.UUID, *, for_primary: bool = False
) -> Parent | None:
    """The live customer ``customer_id`` if ``access`` covers it.

    With ``for_primary`` the customer row is locked ``FOR NO KEY UPDATE``: whoever changes
    which contact is primary holds it until commit, so two such changes for one customer
    run one after the other instead of racing into the one-primary unique index. (That
    lock does not conflict with the ``KEY SHARE`` lock plain contact inserts take.)"""
    stmt = select(Customer.id, Customer.owner_id, Customer.org_unit_id).where(
        Customer.id == customer_id, customer_in_scope(access)
    )
    if for_primary:
        stmt = stmt.with_for_update(key_share=True)
    row = (await executor.execute(stmt)).first()
    return Parent(row.id, row.owner_id, row.org_unit_id) if row is not None else None


async def demote_primary(
    session: AsyncSession, customer_id: uuid.UUID, *, keep: uuid.UUID | None, now: datetime
) -> list[uuid.UUID]:
    """Clear ``is_primary`` on the customer's live primary contact (other than ``keep``),
    moving its ``version`` like any other change. Returns the ids demoted (at most one).

    Run it before the new primary is flushed, with the customer locked by
    :func:`find_parent` (``for_primary``)."""
    conditions = [
        Contact.customer_id == customer_id,
        Contact.is_primary,
        Contact.deleted_at.is_(None),
    ]
    if keep is not None:
        conditions.append(Contact.id != keep)
    stmt = (
        update(Contact)
        .where(*conditions)
        .values(is_primary=False, version=Contact.version + 1, updated_at=now)
        .returning(Contact.id)
        .execution_options(synchronize_session=False)
    )
    return list((await session.execute(stmt)).scalars())


async def has_primary(session: AsyncSession, customer_id: uuid.UUID) -> bool:
    stmt = select(
        exists().where(
            Contact.customer_id == customer_id,
            Contact.is_primary,
            Contact.deleted_at.is_(None),
        )
    )
    return bool((await session.execute(stmt)).scalar())
