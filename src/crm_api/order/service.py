"""Orders: business rules. No HTTP here, and no commit (the request owns the transaction).

A new order is checked whole before anything is written — customer in scope, every
product live, active and priced in the order's currency, every line's figures — so a bad
request writes nothing: no order, no line, no number taken (numbers are drawn only once
the order is known to be good; see :func:`create_order`).

Raises: ``NotFound`` (``order_not_found``, also for orders outside the caller's scope;
``customer_not_found`` under ``/customers/{id}/orders``), ``Conflict``
(``order_invalid_transition``, ``order_not_editable``, ``order_not_deletable``,
``order_duplicate``), ``UnprocessableEntity`` (``invalid_customer``, ``invalid_product``,
``inactive_product``, ``mixed_currencies``, ``invalid_line``), ``Forbidden``
(``assign_not_allowed``), ``PreconditionFailed`` / ``PreconditionRequired`` (If-Match).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.types import Access
from crm_api.customer import service as customers
from crm_api.db.reader import Reader
from crm_api.errors import Conflict, NotFound, UnprocessableEntity
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.idempotency import Claim
from crm_api.kit.resource import Executor, Placement
from crm_api.order import repository as repo
from crm_api.order.pricing import (
    MAX_AMOUNT,
    LineError,
    LineInput,
    OrderAmounts,
    places_of,
    price_order,
    quantum,
)
from crm_api.order.schemas import (
    NOT_NULLABLE,
    CustomerOrderListQuery,
    OrderCreate,
    OrderLineCreate,
    OrderListQuery,
    OrderUpdate,
)
from crm_api.order.states import DELETABLE, EDITABLE, OrderAction, OrderStatus, transition
from crm_api.resources import ORDERS
from crm_api.user import service as users

R = ORDERS
#: The order's own constraints a concurrent writer can still hit after our checks.
_EXTERNAL_REF = "uq_orders_external_ref"


@dataclass(frozen=True, slots=True)
class Rules:
    """The system settings an order is computed with (``CurrentSystemSettings``)."""

    places: int
    number_prefix: str
    default_currency: str


def _field_error(
    status_code: str, detail: str, field: str, code: str, message: str
) -> UnprocessableEntity:
    return UnprocessableEntity(
        detail, code=status_code, errors=[{"field": field, "code": code, "message": message}]
    )


def invalid_customer() -> UnprocessableEntity:
    """Missing, deleted or outside the caller's scope: worded the same whichever it is."""
    return _field_error(
        "invalid_customer",
        "customer_id is not a customer within your scope.",
        "customer_id",
        "invalid_reference",
        "no such customer in your scope",
    )


def customer_not_found(customer_id: uuid.UUID) -> NotFound:
    return NotFound(f"No customer {customer_id}.", code="customer_not_found")


def _plain(value: Decimal, places: int) -> Decimal:
    """``value`` with ``places`` decimal places, or more when it needs them; never in
    exponent form (``1E+2`` → ``100``), so it renders as PostgreSQL's ``numeric::text``."""
    return value.quantize(quantum(max(places, places_of(value))))


# --- reads -----------------------------------------------------------------------------------
async def list_orders(
    conn: Reader, access: Access, query: OrderListQuery, customers: Access | None = None
) -> dict[str, Any]:
    """Orders ``access`` covers. ``q`` finds an order by its customer's name only when
    ``customers`` (the caller's customers ``read``) covers that customer."""
    return await repo.list_page(conn, access, query, customers=customers)


async def list_customer_orders(
    conn: Reader,
    access: Access,
    customers: Access | None,
    customer_id: uuid.UUID,
    query: CustomerOrderListQuery,
) -> dict[str, Any]:
    """One customer's orders (those ``access`` covers). A customer the caller cannot see
    (``customers``: their customers ``read``) is a 404, so a client can tell "no orders"
    from "wrong customer"."""
    page = None
    if customers is not None:
        page = await repo.customer_page(conn, access, customers, customer_id, query)
    if page is None:
        raise customer_not_found(customer_id)
    return page


async def get_order(conn: Executor, access: Access, order_id: uuid.UUID) -> dict[str, Any]:
    row = await repo.get_row(conn, access, order_id)
    if row is None:
        raise R.not_found(order_id)
    return row


# --- pricing a set of lines ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Priced:
    currency: str
    amounts: OrderAmounts
    #: The line rows to insert (without ``order_id``).
    rows: list[dict[str, Any]]


async def _price(
    session: AsyncSession,
    lines: Sequence[OrderLineCreate],
    currency: str,
    rules: Rules,
) -> Priced:
    """Every line's product checked (live, active, priced in ``currency``) and the lines
    priced; a problem naming the first line at fault otherwise. Reads only."""
    found = await repo.products(session, [line.product_id for line in lines])
    return _priced(found, lines, currency, rules)


def _priced(
    found: dict[uuid.UUID, repo.ProductFacts],
    lines: Sequence[OrderLineCreate],
    currency: str,
    rules: Rules,
) -> Priced:
    """:func:`_price` on products already read."""
    inputs: list[LineInput] = []
    for i, line in enumerate(lines):
        product = found.get(line.product_id)
        field = f"lines.{i}.product_id"
        if product is None:
            raise _field_error(
                "invalid_product",
                f"lines[{i}]: no such product.",
                field,
                "invalid_reference",
                "no such product",
            )
        if not product.active:
            raise _field_error(
                "inactive_product",
                f"lines[{i}]: product {product.sku} is inactive and cannot be ordered.",
                field,
                "inactive",
                "product is inactive",
            )
        if product.currency != currency:
            raise _field_error(
                "mixed_currencies",
                f"lines[{i}]: product {product.sku} is priced in {product.currency}, the "
                f"order in {currency}; one order has one currency.",
                field,
                "currency_mismatch",
                f"priced in {product.currency}, not {currency}",
            )
        price = line.unit_price if line.unit_price is not None else product.list_price
        inputs.append(LineInput(line.quantity, price, line.discount, product.tax_rate))
    try:
        amounts = price_order(inputs, rules.places)
    except LineError as exc:
        raise _field_error(
            "invalid_line", f"{exc.field}: {exc.message}.", exc.field, exc.code, exc.message
        ) from None
    if amounts.total > MAX_AMOUNT or any(p.subtotal > MAX_AMOUNT for p in amounts.lines):
        raise _field_error(
            "invalid_line",
            f"The order's amounts exceed {MAX_AMOUNT}.",
            "lines",
            "amount_too_large",
            f"amounts may not exceed {MAX_AMOUNT}",
        )
    rows = []
    for i, (line, given, priced) in enumerate(zip(lines, inputs, amounts.lines, strict=True)):
        product = found[line.product_id]
        rows.append(
            {
                "id": uuid.uuid4(),
                "position": i,
                "product_id": line.product_id,
                "sku": product.sku,
                "name": product.name,
                "quantity": _plain(given.quantity, 0),
                "unit_price": _plain(given.unit_price, rules.places),
                "discount": priced.discount,
                "tax_rate": _plain(given.tax_rate, 0),
                "subtotal": priced.subtotal,
                "tax": priced.tax,
                "total": priced.total,
            }
        )
    return Priced(currency, amounts, rows)


def _totals(amounts: OrderAmounts) -> dict[str, Decimal]:
    return {
        "subtotal": amounts.subtotal,
        "discount": amounts.discount,
        "tax": amounts.tax,
        "total": amounts.total,
    }


def _shown(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Line rows as a read shows them (``repository.LINES``): ids and figures as strings."""
    return [
        {k: (v if k == "position" else str(v)) for k, v in row.items() if k in repo.LINE_FIELDS}
        for row in rows
    ]


# --- create ----------------------------------------------------------------------------------
def _duplicate(existing: uuid.UUID | None) -> Conflict:
    return Conflict(
        "You already posted an order with this external_ref.",
        code="order_duplicate",
        field="external_ref",
        existing_id=str(existing) if existing else None,
    )


@dataclass(frozen=True, slots=True)
class CustomerRights:
    """What an order POST may do with customers, besides its own orders ``create``:
    ``read`` (a ``customer_id`` must be one the caller sees) and, for a ``customer``
    block, the upsert's rights. Built by the endpoint from the policy."""

    read: Access | None
    upsert: customers.UpsertAccess | None = None


async def _customer(
    session: AsyncSession,
    access: Access,
    rights: CustomerRights,
    data: OrderCreate,
    checked: Placement | None,
) -> tuple[uuid.UUID, Placement]:
    """The order's customer and its placement: ``customer_id`` checked (live, seen by the
    caller's customers ``read``, and an order placed like it inside their orders
    ``create``), or the ``customer`` block upserted (created or updated: written in this
    transaction, so a rejected order leaves no customer behind)."""
    if data.customer_id is not None and data.customer is not None:
        raise _field_error(
            "invalid_customer",
            "Send customer_id or customer, not both.",
            "customer",
            "conflicting",
            "send customer_id or customer, not both",
        )
    if data.customer is not None:
        assert rights.upsert is not None, "the endpoint resolves the upsert's rights"
        upserted = await customers.upsert_customer_by_natural_key(
            session, rights.upsert, data.customer
        )
        row = upserted.customer
        placement = Placement(row["owner_id"], row["org_unit_id"])
        if not await repo.placement_in_scope(session, access, placement, access.principal.id):
            raise _field_error(
                "invalid_customer",
                "An order of this customer would be outside your orders scope.",
                "customer",
                "out_of_scope",
                "the customer's orders are outside your scope",
            )
        return upserted.id, placement
    if data.customer_id is None:
        raise _field_error(
            "invalid_customer",
            "Send customer_id, or a customer block.",
            "customer_id",
            "missing",
            "required",
        )
    # ``checked``: read with the products (repository.order_refs)
    if checked is None:
        raise invalid_customer()
    return data.customer_id, checked


async def create_order(
    session: AsyncSession,
    access: Access,
    assign: Access | None,
    rights: CustomerRights,
    data: OrderCreate,
    rules: Rules,
    claim: Claim | None = None,
) -> dict[str, Any]:
    """A new pending order of ``data``. Placed like its customer (owner and org unit)
    unless ``owner_id``/``org_unit_id`` say otherwise (needs ``assign``; the placement
    rule of :func:`crm_api.kit.transfer.check_placement`). ``claim``: the request's
    ``Idempotency-Key``, claimed in the first statement (a live key replays).

    Two statements: the products and the customer (with the key's claim) are read and
    checked first, then the order, its lines, its audit event and its number go in one
    INSERT — the number is drawn there, after every check, so a rejected request leaves
    no gap in the numbering. A request that fails in that INSERT (a concurrent order of
    yours with the same external_ref, a database fault) does: a sequence value is never
    handed out twice. An ``external_ref`` adds a look-up for your earlier order, and a
    ``customer`` block its upsert."""
    currency = data.currency or rules.default_currency
    product_ids = [line.product_id for line in data.lines]
    by_id = data.customer_id if data.customer is None else None
    found, checked = await repo.order_refs(session, product_ids, rights.read, access, by_id, claim)
    priced = _priced(found, data.lines, currency, rules)
    customer_id, default = await _customer(session, access, rights, data, checked)
    values = data.model_dump(exclude={"lines", "customer"})
    values["customer_id"] = customer_id
    values, placement = await lifecycle.prepare_create(
        session, R, access, assign, values, users, default=default
    )
    assert placement is not None
    actor = access.principal.id
    if data.external_ref is not None:
        existing = await repo.find_by_external_ref(session, actor, data.external_ref)
        if existing is not None:
            raise _duplicate(existing if await repo.is_visible(session, access, existing) else None)
    values.update(
        currency=currency,
        status=OrderStatus.pending.value,
        created_by=actor,
        deleted_at=None,
        **_totals(priced.amounts),
    )
    shown_lines = _shown(priced.rows)
    order_id = uuid.uuid4()
    number = await repo.next_number(session)
    row = await lifecycle.insert(
        session,
        R,
        access,
        values,
        placement,
        overrides={_EXTERNAL_REF: lambda: _duplicate(None)},
        children={"lines": shown_lines},
        record_id=order_id,
        drawn={"number": lambda: number},
        beside=lifecycle.Beside(
            "order_lines",
            repo.insert_lines_of_new,
            {"number_prefix": rules.number_prefix, **repo.lines_values(priced.rows)},
        ),
    )
    row["lines"] = shown_lines
    return row


# --- update ----------------------------------------------------------------------------------
async def update_order(
    session: AsyncSession,
    access: Access,
    assign: Access | None,
    order_id: uuid.UUID,
    patch: OrderUpdate,
    rules: Rules,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    """Change the fields sent; ``lines`` replaces every line and recomputes the totals,
    only while the order is pending (409 ``order_not_editable``)."""
    locked = await lifecycle.lock_or_404(
        session, R, access, order_id, if_match=if_match, require_if_match=require_if_match
    )
    sent = patch.model_dump(exclude_unset=True)
    new_lines = sent.pop("lines", None)
    before, changes = await lifecycle.prepare_update(
        session, R, access, assign, locked, sent, not_nullable=NOT_NULLABLE, users=users
    )
    children = None
    if new_lines is not None:
        status = OrderStatus(locked.row.status)
        if status not in EDITABLE:
            raise Conflict(
                f"Lines can change only while the order is pending; it is {status.value}.",
                code="order_not_editable",
                current_status=status.value,
            )
        priced = await _price(session, patch.lines, locked.row.currency, rules)  # type: ignore[arg-type]
        old_lines = await repo.lines_of(session, order_id)
        await repo.delete_lines(session, order_id)
        await repo.insert_lines(session, [{**r, "order_id": order_id} for r in priced.rows])
        new_shown = _shown(priced.rows)
        children = {"lines": (old_lines, new_shown)}
        changes.update({k: v for k, v in _totals(priced.amounts).items() if before.get(k) != v})
        # the lines changed even when no total did: a new version either way
        changes["updated_at"] = datetime.now(UTC)
    await lifecycle.save_changes(session, R, access, locked, before, changes, children=children)
    return await get_order(session, access, order_id)


# --- status ----------------------------------------------------------------------------------
async def act(
    session: AsyncSession,
    access: Access,
    order_id: uuid.UUID,
    action: OrderAction,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    """Move the order along :mod:`crm_api.order.states`, stamping the transition's time
    column, audited as ``action``; an illegal move is a 409 naming the current status."""
    locked = await lifecycle.lock_or_404(
        session, R, access, order_id, if_match=if_match, require_if_match=require_if_match
    )
    current = OrderStatus(locked.row.status)
    step = transition(action, current)
    if step is None:
        raise Conflict(
            f"Cannot {action.value} an order that is {current.value}.",
            code="order_invalid_transition",
            current_status=current.value,
            action=action.value,
        )
    before = kit.to_dict(R, locked.row)
    changes = {"status": step.target.value, step.stamp: datetime.now(UTC)}
    await lifecycle.save_changes(session, R, access, locked, before, changes, action=action.value)
    return await get_order(session, access, order_id)


# --- delete, restore, purge ------------------------------------------------------------------
async def delete_order(
    session: AsyncSession,
    access: Access,
    order_id: uuid.UUID,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> None:
    """To the trash (restorable) — only a pending or cancelled order: one that moved on has
    shipped goods or money attached (409 ``order_not_deletable``; cancel it first)."""
    locked = await lifecycle.lock_or_404(
        session, R, access, order_id, if_match=if_match, require_if_match=require_if_match
    )
    status = OrderStatus(locked.row.status)
    if status not in DELETABLE:
        raise Conflict(
            f"Only pending or cancelled orders can be deleted; this one is {status.value}.",
            code="order_not_deletable",
            current_status=status.value,
        )
    await lifecycle.soft_delete(
        session, R, access, order_id, if_match, require_if_match=require_if_match
    )


async def restore_order(
    session: AsyncSession, access: Access, order_id: uuid.UUID
) -> dict[str, Any]:
    await lifecycle.restore(session, R, access, order_id)
    return await get_order(session, access, order_id)


async def purge_order(session: AsyncSession, access: Access, order_id: uuid.UUID) -> None:
    """Remove a deleted order and its lines for good."""
    await lifecycle.purge(session, R, access, order_id)
