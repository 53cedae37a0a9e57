"""All SQL of orders and their lines. Every read starts from :func:`scoped`."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Text,
    Uuid,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.scope import scope_clause
from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit import search, statements
from crm_api.kit.filtering import one_of, time_range
from crm_api.kit.resource import Executor, Placement, ScopedSelect
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


def _lines_column() -> ColumnElement[Any]:
    """``lines``: the order's lines as one JSON array, by position, read in the same
    statement as the order (a correlated subquery on ``uq_order_lines_position``: one
    index probe per order of the page, no second round trip)."""
    pairs: list[Any] = []
    for name in LINE_FIELDS:
        pairs += [literal(name), cast(ln[name], Text) if name in _NUMERIC else ln[name]]
    agg = func.jsonb_agg(
        aggregate_order_by(func.jsonb_build_object(*pairs), ln.position), type_=JSONB
    )
    return (
        select(func.coalesce(agg, literal_column("'[]'::jsonb", JSONB), type_=JSONB))
        .where(ln.order_id == o.id)
        .scalar_subquery()
        .label("lines")
    )


LINES = _lines_column()


def scoped(access: Access, *, deleted: bool = False) -> ScopedSelect:
    """Orders ``access`` covers, with their lines; live ones, or the trash with
    ``deleted``."""
    return kit.with_columns(kit.scoped(R, access, deleted=deleted), LINES)


def filtered(
    access: Access, query: CustomerOrderListQuery, customer_id: uuid.UUID | None = None
) -> ScopedSelect:
    ids = query.customer_id if isinstance(query, OrderListQuery) else None
    with_products: ColumnElement[bool] | None = None
    if query.product_id:
        with_products = o.id.in_(select(ln.order_id).where(ln.product_id.in_(query.product_id)))
    return kit.narrow(
        scoped(access, deleted=query.deleted),
        o.customer_id == customer_id if customer_id is not None else None,
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


async def list_page(
    executor: Executor,
    access: Access,
    query: CustomerOrderListQuery,
    customer_id: uuid.UUID | None = None,
    customers: Access | None = None,
) -> dict[str, Any]:
    """One page of the orders ``access`` covers; with ``q`` the kit's search
    (:mod:`crm_api.kit.search`: the number and external_ref through the orders' n-gram
    index, the customer's name through the customers', best first unless ``sort`` is
    given). ``customers``: the caller's customers ``read``; an order matches by its
    customer's name only when that customer is live and inside it (``None``: never)."""
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
    stmt = select(cu.id).where(
        cu.id == customer_id,
        cu.deleted_at.is_(None),
        scope_clause(customers, cu.owner_id, cu.org_unit_id, cu.created_by),
    )
    return (await executor.execute(stmt)).first() is not None


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


async def products_and_customer(
    executor: Executor,
    ids: Sequence[uuid.UUID],
    customers: Access | None,
    orders: Access,
    customer_id: uuid.UUID,
) -> tuple[dict[uuid.UUID, ProductFacts], Placement | None]:
    """:func:`products`, and the owner and unit of the live customer ``customer_id`` when
    ``customers`` (the caller's customers ``read``) covers it and an order of the caller
    placed like it would be inside ``orders`` (their orders ``create``; else ``None``) —
    in one round trip, as a new order needs both: the customer's row full-joined to the
    products' (one row per product, the customer's columns on each; the customer's alone
    when no product matched)."""
    if customers is None:
        return await products(executor, ids), None
    creator = literal(orders.principal.id, Uuid())
    c = (
        select(literal(True).label("found"), cu.owner_id, cu.org_unit_id)
        .where(
            cu.id == customer_id,
            cu.deleted_at.is_(None),
            scope_clause(customers, cu.owner_id, cu.org_unit_id, cu.created_by),
            scope_clause(orders, cu.owner_id, cu.org_unit_id, creator),
        )
        .subquery("c")
    )
    p = _products_of(ids).subquery("p")
    stmt = select(*p.c, c.c.found, c.c.owner_id, c.c.org_unit_id).select_from(
        c.join(p, true(), full=True)
    )
    found: dict[uuid.UUID, ProductFacts] = {}
    placement = None
    for r in (await executor.execute(stmt)).all():
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


async def next_number(session: AsyncSession) -> int:
    return int((await session.execute(select(NUMBER_SEQUENCE.next_value()))).scalar_one())


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
    stmt = select(LINES).select_from(Order.__table__).where(o.id == order_id)
    got = (await session.execute(stmt)).scalar_one()
    return list(got)
