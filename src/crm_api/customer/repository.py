"""All SQL of customers. Every statement starts from :func:`scoped`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.scope import scope_clause, sensitive_clause
from crm_api.authz.types import Access
from crm_api.customer.schemas import CustomerListQuery, CustomerSort
from crm_api.kit import resource as kit
from crm_api.kit import search, statements
from crm_api.kit.filtering import (
    one_of,
    time_range,
)
from crm_api.kit.resource import Executor, ScopedSelect
from crm_api.kit.transfer import Moved, Owned, audit_moves, reassign
from crm_api.models.contact import Contact
from crm_api.models.customer import KEYED_BY_EMAIL, KEYED_BY_PHONE, Customer
from crm_api.resources import CUSTOMERS

R = CUSTOMERS
#: The sort keys' columns (the benchmark compiles the same statement).
SORT_COLUMNS = R.sort_columns


def scope_of(access: Access) -> ColumnElement[bool]:
    return scope_clause(access, Customer.owner_id, Customer.org_unit_id, Customer.created_by)


def scoped(access: Access, *, deleted: bool = False) -> ScopedSelect:
    """Customers ``access`` covers; live ones, or only the trash with ``deleted``."""
    return kit.scoped(R, access, deleted=deleted)


def filtered(access: Access, query: CustomerListQuery) -> ScopedSelect:
    """The scoped statement narrowed by the query's filters (``q`` is the kit's:
    :func:`list_page`)."""
    return kit.narrow(
        scoped(access, deleted=query.deleted),
        one_of(Customer.type, query.type),
        one_of(Customer.lifecycle_stage, query.lifecycle_stage),
        one_of(Customer.grade, query.grade),
        one_of(Customer.region, query.region),
        one_of(Customer.industry, query.industry),
        one_of(Customer.source, query.source),
        one_of(Customer.owner_id, query.owner_id),
        one_of(Customer.org_unit_id, query.org_unit_id),
        Customer.external_ref == query.external_ref if query.external_ref else None,
        Customer.tags.contains(query.tag) if query.tag else None,
        *time_range(Customer.created_at, query.created_after, query.created_before),
        *time_range(Customer.updated_at, query.updated_after, query.updated_before),
    )


async def list_page(executor: Executor, access: Access, query: CustomerListQuery) -> dict[str, Any]:
    """One page of the customers ``access`` covers, masked (the kit's read path); with
    ``q`` the kit's search (:mod:`crm_api.kit.search`: best first unless ``sort`` is given)."""
    stmt = statements.list_base(R, access, query, lambda: filtered(access, query))
    return await search.page(
        executor,
        R,
        access,
        stmt,
        query.page(CustomerSort),
        query.q,
        relevance="sort" not in query.model_fields_set,
        deleted=query.deleted,
    )


#: The unique indexes that keep a customer's keys unique, and the field each keeps: a write
#: that violates one is a 409 ``customer_duplicate`` naming the field (the service's).
UNIQUE_FIELDS = {
    "uq_customers_external_ref": "external_ref",
    "uq_customers_tax_number_live": "tax_number",
    "uq_customers_email_key_live": "email",
    "uq_customers_phone_key_live": "phone",
}


async def find_holder(
    session: AsyncSession, field: str, value: str, *, exclude_id: uuid.UUID | None = None
) -> uuid.UUID | None:
    """The customer holding ``value`` in the unique index of ``field`` (one of
    :data:`UNIQUE_FIELDS`' fields): any customer with the ``external_ref``, the live one
    with the tax number, the live one keyed by the e-mail or phone (compared as keys).
    Not scoped, like :func:`find_by_key`: the keys are unique across every scope.

    No lock and no check before a write: the write itself fails on the index, and this
    look-up after it (a new snapshot, READ COMMITTED) sees the holder that won."""
    if field == "tax_number":
        clause = and_(Customer.tax_number == value, Customer.deleted_at.is_(None))
    else:
        clause = _key_clause(NaturalKey(field, value))
    stmt = select(Customer.id).where(clause)
    if exclude_id is not None:
        stmt = stmt.where(Customer.id != exclude_id)
    return (await session.execute(stmt.limit(1))).scalar_one_or_none()


async def is_visible(
    session: AsyncSession, access: Access, customer_id: uuid.UUID, *, unmasked: bool = False
) -> bool:
    """Whether ``access`` reaches the customer; with ``unmasked``, also sees its sensitive
    fields in full (its ``read_sensitive`` scope covers it)."""
    stmt = select(Customer.id).where(Customer.id == customer_id, scope_of(access))
    if unmasked:
        stmt = stmt.where(
            sensitive_clause(access, Customer.owner_id, Customer.org_unit_id, Customer.created_by)
        )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


# --- transfer ----------------------------------------------------------------------------
OWNED = Owned.of(Customer, "customers")


async def transfer(
    session: AsyncSession,
    access: Access,
    *,
    to_owner: uuid.UUID,
    to_org_unit: uuid.UUID | None,
    from_owner: uuid.UUID | None = None,
    ids: list[uuid.UUID] | None = None,
) -> list[Moved]:
    """Move the live customers ``access`` covers to ``to_owner`` in one statement, with one
    audit event per customer."""
    moved = await reassign(
        session,
        access,
        OWNED,
        to_owner=to_owner,
        to_org_unit=to_org_unit,
        from_owner=from_owner,
        ids=ids,
    )
    await audit_moves(session, access, OWNED, moved, to_owner=to_owner, to_org_unit=to_org_unit)
    return moved


async def count_contacts(session: AsyncSession, customer_ids: list[uuid.UUID]) -> int:
    if not customer_ids:
        return 0
    stmt = select(func.count()).where(
        Contact.customer_id.in_(customer_ids), Contact.deleted_at.is_(None)
    )
    return int((await session.execute(stmt)).scalar_one())


# --- natural keys ----------------------------------------------------------------------------
#: The fields a customer can be upserted by, in the order the key is chosen.
KEY_FIELDS = ("external_ref", "email", "phone")


@dataclass(frozen=True, slots=True)
class NaturalKey:
    """The key an upsert finds its customer by: ``field`` (one of :data:`KEY_FIELDS`) and
    the value sent (normalised in SQL, by the same expression as the generated column)."""

    field: str
    value: str


def _email_key(value: str) -> ColumnElement[Any]:
    """:data:`crm_api.models.customer.EMAIL_KEY` applied to ``value``."""
    return func.nullif(func.lower(func.btrim(literal(value, Text()))), "")


def _phone_key(value: str) -> ColumnElement[Any]:
    """:data:`crm_api.models.customer.PHONE_KEY` applied to ``value``."""
    digits = func.regexp_replace(
        func.split_part(func.lower(literal(value, Text())), "x", 1), "[^0-9]", "", "g"
    )
    return func.nullif(func.regexp_replace(digits, "^00", ""), "")


def _key_clause(key: NaturalKey) -> ColumnElement[bool]:
    """The customers holding ``key``: any with the ``external_ref`` (its index is over
    every row, the trash too), or the live customer keyed by that e-mail or phone."""
    t = Customer.__table__.c
    if key.field == "external_ref":
        return Customer.external_ref == key.value
    if key.field == "email":
        return and_(t.email_key == _email_key(key.value), KEYED_BY_EMAIL)
    return and_(t.phone_key == _phone_key(key.value), KEYED_BY_PHONE)


async def find_by_key(session: AsyncSession, key: NaturalKey) -> tuple[uuid.UUID, bool] | None:
    """``(id, deleted)`` of the customer holding ``key``, whoever may see it (the caller
    decides what to say about one outside the scope); ``None``: none does. Not scoped on
    purpose: the keys are unique across every scope."""
    stmt = select(Customer.id, Customer.deleted_at.is_not(None)).where(_key_clause(key)).limit(1)
    row = (await session.execute(stmt)).first()
    return None if row is None else (row[0], bool(row[1]))
