"""All SQL of orders and their lines. Every read starts from :func:`scoped`."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    JSON,
    Boolean,
    ColumnElement,
    Insert,
    Select,
    Text,
    Uuid,
    any_,
    bindparam,
    cast,
    column,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import TypeDecorator

from crm_api.authz.scope import scope_clause
from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit import search, statements
from crm_api.kit.filtering import one_of, time_range
from crm_api.kit.idempotency import Claim
from crm_api.kit.resource import Executor, Placement, ScopedSelect
from crm_api.kit.responses import dumps
from crm_api.kit.transfer import cast_table
from crm_api.models.customer import Customer
from crm_api.models.order import NUMBER_SEQUENCE, Order, OrderLine
from crm_api.models.product import Product
from crm_api.order.schemas import CustomerOrderListQuery, OrderListQuery, OrderSort
from crm_api.resources import CUSTOMERS, ORDERS

R = ORDERS
o = Order.__table__.c
ln = OrderLine.__table__.c
cu = Customer.__table__.c
pr = Product.__table__.c

#: A line's public fields, in the schema's order. Money and quantities go out as decimal
#: strings (``numeric::text``), exactly as a response renders a ``Decimal``.
LINE_FIELDS = (
    "id",
    "position",
    "product_id",
    "sku",
    "name",
    "quantity",
    "unit_price",
    "discount",
    "tax_rate",
    "subtotal",
    "tax",
    "total",
)
_NUMERIC = frozenset({"quantity", "unit_price", "discount", "tax_rate", "subtotal", "tax", "total"})


class _SentAsIs(TypeDecorator[Any]):
    """JSON text read as an ``orjson.Fragment``: rendered into the response as it came
    from PostgreSQL, never parsed into Python objects and serialized again."""

    impl = Text
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else orjson.Fragment(value)


def _lines_column(*, parsed: bool = False) -> ColumnElement[Any]:
    """``lines``: the order's lines as one JSON array, by position, read in the same
    statement as the order (a correlated subquery on ``uq_order_lines_position``: one
    index probe per order of the page, no second round trip). Sent on as it comes
    (:class:`_SentAsIs`) unless ``parsed`` (a list, for audit diffs)."""
    pairs: list[Any] = []
    for name in LINE_FIELDS:
        # the keys as SQL literals: no parameters to bind per request
        pairs += [
            literal_column(f"'{name}'"),
            cast(ln[name], Text) if name in _NUMERIC else ln[name],
        ]
    # json, not jsonb: the array is only ever sent on, so PostgreSQL need not build (and
    # then print) a binary document per order; the keys stay in the schema's order
    agg = func.json_agg(aggregate_order_by(func.json_build_object(*pairs), ln.position), type_=JSON)
    array = func.coalesce(agg, literal_column("'[]'::json", JSON), type_=JSON)
    return (
        select(array if parsed else cast(array, _SentAsIs()))
        .where(ln.order_id == o.id)
        .scalar_subquery()
        .label("lines")
    )


LINES = _lines_column()
_PARSED_LINES = _lines_column(parsed=True)


def scoped(access: Access, *, deleted: bool = False) -> ScopedSelect:
    """Orders ``access`` covers, with their lines; live ones, or the trash with
    ``deleted``."""
    return kit.with_columns(kit.scoped(R, access, deleted=deleted), LINES)


#: The customer of ``GET /v1/customers/{id}/orders``: a named parameter, so one statement
#: serves every customer (kit/statements.py).
CUSTOMER_ID = bindparam("customer_id", type_=Uuid())


def filtered(
    access: Access, query: CustomerOrderListQuery, customer_id: uuid.UUID | None = None
) -> ScopedSelect:
    return _narrowed(
        access, query, o.customer_id == customer_id if customer_id is not None else None
    )


def _narrowed(
    access: Access, query: CustomerOrderListQuery, customer: ColumnElement[bool] | None
) -> ScopedSelect:
    ids = query.customer_id if isinstance(query, OrderListQuery) else None
    with_products: ColumnElement[bool] | None = None
    if query.product_id:
        with_products = o.id.in_(select(ln.order_id).where(ln.product_id.in_(query.product_id)))
    return kit.narrow(
        scoped(access, deleted=query.deleted),
        customer,
        one_of(o.customer_id, ids),
        one_of(o.status, query.status),
        one_of(o.channel, query.channel),
        one_of(o.owner_id, query.owner_id),
        one_of(o.org_unit_id, query.org_unit_id),
        with_products,
        o.external_ref == query.external_ref if query.external_ref else None,
        o.number == query.number if query.number else None,
        o.total >= query.total_min if query.total_min is not None else None,
        o.total <= query.total_max if query.total_max is not None else None,
        *time_range(o.created_at, query.created_after, query.created_before),
    )


def _visible_customer(customers: Access) -> ColumnElement[bool]:
    """The live customer :data:`CUSTOMER_ID` is inside ``customers``."""
    return exists(
        select(cu.id).where(
            cu.id == CUSTOMER_ID,
            cu.deleted_at.is_(None),
            scope_clause(customers, cu.owner_id, cu.org_unit_id, cu.created_by),
        )
    )


def customer_filtered(
    access: Access, customers: Access, query: CustomerOrderListQuery
) -> ScopedSelect:
    """The orders of the customer :data:`CUSTOMER_ID` that ``access`` covers, filtered,
    while that customer is one ``customers`` (the caller's customers ``read``) sees: the
    customer's check is part of the list statement (a one-time filter, not a round trip
    of its own)."""
    return kit.narrow(
        _narrowed(access, query, o.customer_id == CUSTOMER_ID), _visible_customer(customers)
    )


async def list_page(
    executor: Executor,
    access: Access,
    query: CustomerOrderListQuery,
    customer_id: uuid.UUID | None = None,
    customers: Access | None = None,
) -> dict[str, Any]:
    """One page of the orders ``access`` covers (the statement built once per access and
    filter values); with ``q`` the kit's search (:mod:`crm_api.kit.search`: the number
    and external_ref through the orders' n-gram index, the customer's name through the
    customers', best first unless ``sort`` is given). ``customers``: the caller's
    customers ``read``; an order matches by its customer's name only when that customer
    is live and inside it (``None``: never)."""
    stmt = statements.memo(
        ("orders.list", access, statements.query_key(query), customer_id),
        lambda: filtered(access, query, customer_id),
    )
    return await search.page(
        executor,
        R,
        access,
        stmt,
        query.page(OrderSort),
        query.q,
        relevance="sort" not in query.model_fields_set,
        deleted=query.deleted,
        referenced={CUSTOMERS.name: customers},
    )


async def customer_page(
    executor: Executor,
    access: Access,
    customers: Access,
    customer_id: uuid.UUID,
    query: CustomerOrderListQuery,
) -> dict[str, Any] | None:
    """One page of the orders of ``customer_id``, or ``None`` when ``customers`` does not
    see that customer. Without ``q``, one statement for every customer (the customer's
    check inside it; a second statement only when the page is empty: a customer with
    orders on the page is one the list statement found visible). With ``q``, the check
    first, then the kit's search (:func:`list_page`)."""
    if query.q:
        if not await customer_visible(executor, customers, customer_id):
            return None
        return await list_page(executor, access, query, customer_id, customers)
    stmt = statements.memo(
        ("customer-orders", access, customers, statements.query_key(query)),
        lambda: customer_filtered(access, customers, query),
    )
    page = await kit.fetch_page(
        executor, R, access, stmt, query.page(OrderSort), {"customer_id": customer_id}
    )
    if not page["data"] and not await customer_visible(executor, customers, customer_id):
        return None
    return page


async def get_row(executor: Executor, access: Access, order_id: uuid.UUID) -> dict[str, Any] | None:
    return await kit.get_row(executor, R, access, scoped(access), order_id)


# --- what a new order refers to ----------------------------------------------------------------
async def placement_in_scope(
    executor: Executor, orders: Access, placement: Placement, creator: uuid.UUID
) -> bool:
    """Whether an order placed at ``placement``, created by ``creator``, is inside
    ``orders`` (a customer just upserted: the order must still be one the caller may
    create)."""
    clause = scope_clause(
        orders,
        literal(placement.owner_id, Uuid()),
        literal(placement.org_unit_id, Uuid()),
        literal(creator, Uuid()),
    )
    return bool((await executor.execute(select(clause))).scalar())


async def customer_visible(
    executor: Executor, customers: Access | None, customer_id: uuid.UUID
) -> bool:
    """Whether the live customer ``customer_id`` is inside ``customers`` (the caller's
    customers ``read``; ``None``: none is)."""
    if customers is None:
        return False
    stmt = statements.memo(
        ("customer-visible", customers), lambda: select(_visible_customer(customers))
    )
    return bool((await executor.execute(stmt, {"customer_id": customer_id})).scalar())


@dataclass(frozen=True, slots=True)
class ProductFacts:
    id: uuid.UUID
    sku: str
    name: str
    list_price: Decimal
    currency: str
    tax_rate: Decimal
    active: bool


def _products_of(ids: Sequence[uuid.UUID]) -> Any:
    # FOR KEY SHARE: a concurrent delete or purge of a product (which locks it FOR UPDATE
    # and then looks for order lines naming it) waits for this order, then sees its lines
    return (
        select(pr.id, pr.sku, pr.name, pr.list_price, pr.currency, pr.tax_rate, pr.active)
        .where(pr.id.in_(list(set(ids))), pr.deleted_at.is_(None))
        .with_for_update(read=True, key_share=True)
    )


def _refs_statement(customers: Access | None, orders: Access, claim: bool) -> Select[Any]:
    """What a new order refers to, in one statement with named parameters
    (``product_ids``, an array; ``customer_id``, ``None`` for a ``customer`` block): the
    live products among ``product_ids`` (locked ``FOR KEY SHARE``), and the live customer
    when ``customers`` covers it and an order of the caller placed like it is inside
    ``orders`` — the customer's row full-joined to the products' (one row per product,
    the customer's columns on each), left-joined to one row so that the statement always
    returns a row (the Idempotency-Key's ``claimed`` column, with ``claim``)."""
    product_ids = bindparam("product_ids", type_=ARRAY(Uuid()))
    p = (
        select(pr.id, pr.sku, pr.name, pr.list_price, pr.currency, pr.tax_rate, pr.active)
        .where(pr.id == any_(product_ids), pr.deleted_at.is_(None))
        .with_for_update(read=True, key_share=True)
        .subquery("p")
    )
    one = select(literal(1).label("one")).subquery("one")
    if customers is None:
        stmt = select(*p.c, literal(None, Boolean()).label("found"))
        stmt = stmt.add_columns(literal(None, Uuid()).label("owner_id"))
        stmt = stmt.add_columns(literal(None, Uuid()).label("org_unit_id"))
        stmt = stmt.select_from(one.outerjoin(p, true()))
    else:
        creator = literal(orders.principal.id, Uuid())
        c = (
            select(literal(True).label("found"), cu.owner_id, cu.org_unit_id)
            .where(
                cu.id == bindparam("customer_id", type_=Uuid()),
                cu.deleted_at.is_(None),
                scope_clause(customers, cu.owner_id, cu.org_unit_id, cu.created_by),
                scope_clause(orders, cu.owner_id, cu.org_unit_id, creator),
            )
            .subquery("c")
        )
        stmt = select(*p.c, c.c.found, c.c.owner_id, c.c.org_unit_id).select_from(
            one.outerjoin(c.join(p, true(), full=True), true())
        )
    return Claim.attach(stmt) if claim else stmt


async def order_refs(
    executor: Executor,
    ids: Sequence[uuid.UUID],
    customers: Access | None,
    orders: Access,
    customer_id: uuid.UUID | None,
    claim: Claim | None = None,
) -> tuple[dict[uuid.UUID, ProductFacts], Placement | None]:
    """The live products among ``ids`` (active or not) by id, and — for a
    ``customer_id`` — the owner and unit of that live customer when ``customers`` (the
    caller's customers ``read``) covers it and an order of the caller placed like it
    would be inside ``orders`` (their orders ``create``; else ``None``): one round trip,
    with the ``Idempotency-Key``'s ``claim`` in it (settled before anything else is
    looked at, so a live key replays). The statement is built once per (accesses,
    claim or not)."""
    with_customer = customers if customer_id is not None else None
    stmt = statements.memo(
        ("order-refs", with_customer, orders, claim is not None),
        lambda: _refs_statement(with_customer, orders, claim is not None),
    )
    values: dict[str, Any] = {"product_ids": list(dict.fromkeys(ids))}
    if with_customer is not None:
        values["customer_id"] = customer_id
    if claim is not None:
        values.update(claim.values())
    rows = (await executor.execute(stmt, values)).all()
    if claim is not None:
        claim.settle(bool(rows[0].claimed))
    found: dict[uuid.UUID, ProductFacts] = {}
    placement = None
    for r in rows:
        if r.id is not None:
            found[r.id] = ProductFacts(
                r.id, r.sku, r.name, r.list_price, r.currency, r.tax_rate, r.active
            )
        if r.found:
            placement = Placement(r.owner_id, r.org_unit_id)
    return found, placement


async def products(executor: Executor, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, ProductFacts]:
    """The live products among ``ids`` (active or not), by id."""
    rows = (await executor.execute(_products_of(ids))).all()
    return {r.id: ProductFacts(*r) for r in rows}


def number_expression() -> ColumnElement[str]:
    """An order's number as the INSERT draws it: ``:number_prefix`` and the next value of
    the sequence, zero-padded to 8 digits (``SO-00000042``)."""
    return cast(bindparam("number_prefix", type_=Text()), Text) + func.lpad(
        cast(NUMBER_SEQUENCE.next_value(), Text), 8, literal_column("'0'")
    )


_NUMBER = number_expression()

#: A line's columns as the JSON of :func:`lines_values` carries them.
_LINE_COLUMNS = ("id", "position", "product_id", *LINE_FIELDS[3:])


def insert_lines_of_new() -> Insert:
    """``INSERT INTO order_lines … SELECT :r_id, x.* FROM jsonb_to_recordset(:lines) AS
    x(<typed columns>)``: every line of a new order (``:r_id``, the order's id as the
    kit's insert binds it) from one JSON parameter, so one statement serves any number
    of lines; run inside the order's INSERT (``lifecycle.Beside``)."""
    table = cast_table(OrderLine)
    source = (
        func.jsonb_to_recordset(cast(bindparam("lines", type_=Text()), JSONB))
        .table_valued(*(column(k, table.c[k].type) for k in _LINE_COLUMNS))
        .render_derived(name="x", with_types=True)
    )
    return insert(table).from_select(
        ["order_id", *_LINE_COLUMNS],
        select(bindparam("r_id", type_=Uuid()), *(source.c[k] for k in _LINE_COLUMNS)),
    )


def lines_values(lines: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The parameters of :func:`insert_lines_of_new` for these line rows (Decimals as
    strings: exact)."""
    return {"lines": dumps([{k: line[k] for k in _LINE_COLUMNS} for line in lines]).decode()}


async def next_number(session: AsyncSession) -> ColumnElement[str]:
    """The number of the order about to be inserted, as the INSERT draws it
    (:func:`number_expression`; no round trip here): called once the order is known to be
    good, the seam between its checks and its write."""
    return _NUMBER


async def find_by_external_ref(
    session: AsyncSession, created_by: uuid.UUID, external_ref: str
) -> uuid.UUID | None:
    stmt = select(o.id).where(o.created_by == created_by, o.external_ref == external_ref)
    found: uuid.UUID | None = (await session.execute(stmt)).scalar_one_or_none()
    return found


async def is_visible(executor: Executor, access: Access, order_id: uuid.UUID) -> bool:
    stmt = select(o.id).where(o.id == order_id, scope_clause(access, o.owner_id, o.org_unit_id))
    return (await executor.execute(stmt)).scalar_one_or_none() is not None


# --- lines ----------------------------------------------------------------------------------
#: One compiled statement for every line insert: executed with a list of rows (asyncpg's
#: executemany, one round trip), where ``.values(rows)`` built and compiled a new statement
#: for each order (~1 ms of Python per order in the benchmark).
_INSERT_LINE = insert(cast_table(OrderLine))


async def insert_lines(session: AsyncSession, lines: Sequence[Mapping[str, Any]]) -> None:
    if lines:
        await session.execute(_INSERT_LINE, list(lines))


async def delete_lines(session: AsyncSession, order_id: uuid.UUID) -> None:
    await session.execute(delete(OrderLine).where(ln.order_id == order_id))


async def lines_of(session: AsyncSession, order_id: uuid.UUID) -> list[dict[str, Any]]:
    """An order's lines as a response shows them (for audit diffs of a line change)."""
    stmt = select(_PARSED_LINES).select_from(Order.__table__).where(o.id == order_id)
    got = (await session.execute(stmt)).scalar_one()
    return list(got)
