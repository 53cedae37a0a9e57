"""Orders (issue #10 §3): totals computed by the server, the status machine, numbers under
concurrency, idempotent POSTs, and bad input that writes nothing."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user
from factories.orders import create_order, line, make_product, post_order

TABLES = ("orders", "order_lines", "customers", "audit_events", "idempotency_keys")


async def counts(engine) -> list[int]:
    return [await count_rows(engine, t) for t in TABLES]


@pytest.fixture
async def world(engine, client, client_for):
    """A team with a rep, and a rep of a sibling team; a customer of the first rep."""
    root = await make_org_unit(engine, "Root", kind="group")
    team = await make_org_unit(engine, "Team", parent=root)
    other = await make_org_unit(engine, "Other", parent=root)
    rep = await make_user(engine, roles=("sales_rep",), org_unit=team)
    outsider = await make_user(engine, roles=("sales_rep",), org_unit=other)
    customer = await create_customer(client, rep)
    return {
        "rep": rep,
        "outsider": outsider,
        "customer": customer,
        "rep_client": await client_for(rep),
        "outsider_client": await client_for(outsider),
        "team": team,
    }


# --- totals ---------------------------------------------------------------------------------
async def test_totals_are_computed_half_up_per_line(client, engine, world):
    printer = await make_product(engine, price="33.335", tax_rate="0.13")
    paper = await make_product(engine, price="0.05", tax_rate="0.10")
    order = await create_order(
        client,
        world["customer"],
        line(printer, "3", discount="10"),
        line(paper, "1"),
        line(paper, "1"),
    )
    # 3 x 33.335 = 100.005 → 100.01, -10 → 90.01, tax 11.7013 → 11.70, total 101.71
    # 0.05, tax 0.005 → 0.01 (per line, twice)
    assert [(x["subtotal"], x["discount"], x["tax"], x["total"]) for x in order["lines"]] == [
        ("100.01", "10.00", "11.70", "101.71"),
        ("0.05", "0.00", "0.01", "0.06"),
        ("0.05", "0.00", "0.01", "0.06"),
    ]
    assert (order["subtotal"], order["discount"], order["tax"], order["total"]) == (
        "100.11",
        "10.00",
        "11.72",
        "101.83",
    )
    assert order["lines"][0]["unit_price"] == "33.335"  # the list price snapshot, unrounded
    assert order["lines"][0]["tax_rate"] == "0.13"
    assert order["lines"][0]["sku"] == printer["sku"]
    assert order["currency"] == "CNY" and order["status"] == "pending"
    assert order["number"].startswith("SO-")
    # a read shows exactly what the create answered
    got = await client.get(f"/v1/orders/{order['id']}")
    assert got.json() == order
    assert got.headers["etag"] == '"1"'


async def test_unit_price_and_many_lines_and_large_quantities(client, engine, world):
    product = await make_product(engine, price="99999.9999", tax_rate="0.06")
    lines = [line(product, "1", unit_price="0.01") for _ in range(100)]
    order = await create_order(client, world["customer"], *lines)
    assert order["subtotal"] == "1.00" and order["tax"] == "0.00" and len(order["lines"]) == 100
    big = await create_order(client, world["customer"], line(product, "99999999.999"))
    expected = (Decimal("99999999.999") * Decimal("99999.9999")).quantize(Decimal("0.01"))
    assert Decimal(big["subtotal"]) == expected
    assert Decimal(big["total"]) == expected + Decimal(big["tax"])


async def test_decimal_places_follow_the_settings(client, engine, world, app):
    product = await make_product(engine, price="10.5", tax_rate="0")
    store = app.state.system_settings
    saved = store.current
    store.current = saved.model_copy(update={"amount_decimal_places": 0})
    try:
        order = await create_order(client, world["customer"], line(product, "1"))
    finally:
        store.current = saved
    assert order["total"] == "11"  # 10.5 → 11, half-up


# --- placement and scope -----------------------------------------------------------------------
async def test_owner_and_unit_default_to_the_customers(client, engine, world):
    product = await make_product(engine)
    order = await create_order(client, world["customer"], line(product))
    assert order["owner_id"] == str(world["rep"]["id"])
    assert order["org_unit_id"] == str(world["team"]["id"])
    rep = world["rep_client"]
    listed = (await rep.get("/v1/orders")).json()["data"]
    assert [o["id"] for o in listed] == [order["id"]]
    mine = (await rep.get(f"/v1/customers/{world['customer']['id']}/orders")).json()["data"]
    assert [o["id"] for o in mine] == [order["id"]]
    outsider = world["outsider_client"]
    assert (await outsider.get("/v1/orders")).json()["data"] == []
    problem(await outsider.get(f"/v1/orders/{order['id']}"), 404, "order_not_found")
    problem(
        await outsider.get(f"/v1/customers/{world['customer']['id']}/orders"),
        404,
        "customer_not_found",
    )


async def test_a_customer_out_of_scope_writes_nothing(engine, world):
    product = await make_product(engine)
    before = await counts(engine)
    body = problem(
        await post_order(world["outsider_client"], world["customer"], line(product)),
        422,
        "invalid_customer",
    )
    assert body["errors"][0]["field"] == "customer_id"
    assert await counts(engine) == before


async def test_a_rep_orders_for_their_own_customer(engine, world):
    product = await make_product(engine)
    order = await create_order(world["rep_client"], world["customer"], line(product, "2"))
    assert order["created_by"] == str(world["rep"]["id"])
    problem(
        await post_order(
            world["rep_client"],
            world["customer"],
            line(product),
            owner_id=str(world["outsider"]["id"]),
        ),
        403,
        "assign_not_allowed",
    )


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "status", "code", "field"),
    [
        ("unknown_product", 422, "invalid_product", "lines.1.product_id"),
        ("inactive_product", 422, "inactive_product", "lines.1.product_id"),
        ("zero_quantity", 422, "validation_error", "lines.0.quantity"),
        ("negative_quantity", 422, "validation_error", "lines.0.quantity"),
        ("mixed_currencies", 422, "mixed_currencies", "lines.1.product_id"),
        ("discount_above_line", 422, "invalid_line", "lines.0.discount"),
        ("discount_too_precise", 422, "invalid_line", "lines.0.discount"),
        ("client_total", 422, "validation_error", "total"),
        ("client_number", 422, "validation_error", "number"),
        ("client_status", 422, "validation_error", "status"),
        ("client_line_total", 422, "validation_error", "lines.0.total"),
        ("too_many_lines", 422, "validation_error", "lines"),
        ("no_lines", 422, "validation_error", "lines"),
        ("no_customer", 422, "invalid_customer", "customer_id"),
        ("unknown_customer", 422, "invalid_customer", "customer_id"),
        ("unknown_currency", 422, "validation_error", "currency"),
        ("float_quantity_garbage", 422, "validation_error", "lines.0.quantity"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(
    client, engine, world, case, status, code, field
):
    good = await make_product(engine, price="10.00")
    inactive = await make_product(engine, active=False)
    dollars = await make_product(engine, currency="USD")
    ok = line(good, "1")
    body: dict[str, Any] = {"customer_id": world["customer"]["id"], "lines": [ok, ok]}
    match case:
        case "unknown_product":
            body["lines"][1] = {"product_id": str(uuid.uuid4()), "quantity": "1"}
        case "inactive_product":
            body["lines"][1] = line(inactive)
        case "zero_quantity":
            body["lines"][0] = line(good, "0")
        case "negative_quantity":
            body["lines"][0] = line(good, "-2")
        case "mixed_currencies":
            body["lines"][1] = line(dollars)
        case "discount_above_line":
            body["lines"][0] = line(good, "1", discount="10.01")
        case "discount_too_precise":
            body["lines"][0] = line(good, "1", discount="1.001")
        case "client_total":
            body["total"] = "1.00"
        case "client_number":
            body["number"] = "SO-1"
        case "client_status":
            body["status"] = "confirmed"
        case "client_line_total":
            body["lines"][0] = {**ok, "total": "1.00"}
        case "too_many_lines":
            body["lines"] = [ok] * 101
        case "no_lines":
            body["lines"] = []
        case "no_customer":
            del body["customer_id"]
        case "unknown_customer":
            body["customer_id"] = str(uuid.uuid4())
        case "unknown_currency":
            body["currency"] = "XYZ"
        case "float_quantity_garbage":
            body["lines"][0] = line(good, "NaN")
    before = await counts(engine)
    seq = await _sequence_value(engine)
    response = await client.post(
        "/v1/orders", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    got = problem(response, status, code)
    assert field in [e["field"] for e in got.get("errors") or []], got
    assert await counts(engine) == before
    # rejected before a number is drawn: no gap in the numbering
    assert await _sequence_value(engine) == seq


async def _sequence_value(engine) -> tuple[int, bool]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT last_value, is_called FROM orders_number_seq"))
        ).one()
    return int(row[0]), bool(row[1])


async def test_external_ref_is_unique_per_poster(client, engine, world):
    product = await make_product(engine)
    first = await create_order(client, world["customer"], line(product), external_ref="shop-1")
    before = await counts(engine)
    got = problem(
        await post_order(client, world["customer"], line(product), external_ref="shop-1"),
        409,
        "order_duplicate",
    )
    assert got["existing_id"] == first["id"]
    assert await counts(engine) == before
    # another poster may use the same ref
    await create_order(world["rep_client"], world["customer"], line(product), external_ref="shop-1")


# --- the status machine ---------------------------------------------------------------------
PATH = ("confirm", "ship", "deliver", "complete")
ACTIONS = ("confirm", "ship", "deliver", "complete", "cancel")
#: status → the actions legal from it
LEGAL = {
    "pending": {"confirm", "cancel"},
    "confirmed": {"ship", "cancel"},
    "shipped": {"deliver"},
    "delivered": {"complete"},
    "completed": set(),
    "cancelled": set(),
}


async def _order_in(client, engine, customer, status: str) -> dict[str, Any]:
    product = await make_product(engine)
    order = await create_order(client, customer, line(product))
    reached = ("pending", "confirmed", "shipped", "delivered", "completed")
    steps = ["cancel"] if status == "cancelled" else list(PATH[: reached.index(status)])
    for step in steps:
        response = await client.post(f"/v1/orders/{order['id']}/{step}")
        assert response.status_code == 200, response.text
        order = response.json()
    assert order["status"] == status
    return order


@pytest.mark.parametrize("status", list(LEGAL))
async def test_every_action_from_every_status(client, engine, world, status):
    for action in ACTIONS:
        order = await _order_in(client, engine, world["customer"], status)
        url = f"/v1/orders/{order['id']}/{action}"
        if action in LEGAL[status]:
            response = await client.post(url, headers={"If-Match": f'"{order["version"]}"'})
            assert response.status_code == 200, response.text
            moved = response.json()
            stamp = {
                "confirm": "confirmed_at",
                "ship": "shipped_at",
                "deliver": "delivered_at",
                "complete": "completed_at",
                "cancel": "cancelled_at",
            }[action]
            assert moved[stamp] is not None and moved["version"] == order["version"] + 1
            assert response.headers["etag"] == f'"{moved["version"]}"'
        else:
            got = problem(await client.post(url), 409, "order_invalid_transition")
            assert got["current_status"] == status
            assert status in got["detail"]
            assert (await client.get(f"/v1/orders/{order['id']}")).json() == order


async def test_transitions_are_audited_with_their_time(client, engine, world):
    order = await _order_in(client, engine, world["customer"], "completed")
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT action, occurred_at, changes FROM audit_events "
                    "WHERE resource_type = 'orders' AND resource_id = :id ORDER BY occurred_at"
                ),
                {"id": uuid.UUID(order["id"])},
            )
        ).all()
    assert [r.action for r in rows] == ["create", *PATH]
    for r, stamp in zip(
        rows[1:], ("confirmed_at", "shipped_at", "delivered_at", "completed_at"), strict=True
    ):
        assert set(r.changes) == {"status", stamp}
        assert r.changes[stamp]["after"] == order[stamp] or r.changes[stamp]["after"].startswith(
            order[stamp][:19]
        )


async def test_stale_if_match_on_an_action_is_412(client, engine, world):
    order = await _order_in(client, engine, world["customer"], "pending")
    problem(
        await client.post(f"/v1/orders/{order['id']}/confirm", headers={"If-Match": '"9"'}),
        412,
        "version_mismatch",
    )
    assert (await client.get(f"/v1/orders/{order['id']}")).json()["status"] == "pending"


async def test_lines_change_only_while_pending(client, engine, world):
    product = await make_product(engine, price="10.00", tax_rate="0")
    order = await create_order(client, world["customer"], line(product, "1"))
    url = f"/v1/orders/{order['id']}"
    changed = await client.patch(url, json={"lines": [line(product, "3")]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["total"] == "30.00" and changed.json()["version"] == 2
    assert len(changed.json()["lines"]) == 1
    assert (await client.get(url)).json() == changed.json()
    await client.post(f"{url}/confirm")
    got = problem(
        await client.patch(url, json={"lines": [line(product, "5")]}), 409, "order_not_editable"
    )
    assert got["current_status"] == "confirmed" and "confirmed" in got["detail"]
    assert (await client.get(url)).json()["total"] == "30.00"
    # other fields stay editable
    noted = await client.patch(url, json={"notes": "请周末送货"})
    assert noted.status_code == 200 and noted.json()["notes"] == "请周末送货"


async def test_only_pending_or_cancelled_orders_are_deleted(client, engine, world):
    order = await _order_in(client, engine, world["customer"], "confirmed")
    problem(await client.delete(f"/v1/orders/{order['id']}"), 409, "order_not_deletable")
    await client.post(f"/v1/orders/{order['id']}/cancel")
    assert (await client.delete(f"/v1/orders/{order['id']}")).status_code == 204


# --- list filters ---------------------------------------------------------------------------
async def test_list_filters(client, engine, world):
    cheap = await make_product(engine, price="1.00", tax_rate="0")
    dear = await make_product(engine, price="500.00", tax_rate="0")
    a = await create_order(
        client, world["customer"], line(cheap), channel="web", external_ref="A-1"
    )
    b = await create_order(client, world["customer"], line(dear), channel="phone")
    await client.post(f"/v1/orders/{b['id']}/confirm")

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/v1/orders", params=params)
        assert response.status_code == 200, response.text
        return [o["id"] for o in response.json()["data"]]

    assert await ids(status="confirmed") == [b["id"]]
    assert await ids(channel="web") == [a["id"]]
    assert await ids(product_id=str(dear["id"])) == [b["id"]]
    assert await ids(total_min="100") == [b["id"]]
    assert await ids(total_max="100") == [a["id"]]
    assert await ids(sort="total") == [a["id"], b["id"]]
    assert await ids(sort="-total") == [b["id"], a["id"]]
    assert await ids(q="a-1") == [a["id"]]
    assert await ids(q=b["number"][-4:]) == [b["id"]]
    assert set(await ids(q="明远")) == {a["id"], b["id"]}  # the customer's name
    assert await ids(customer_id=str(uuid.uuid4())) == []
    page = (await client.get("/v1/orders", params={"sort": "total", "limit": 1})).json()
    nxt = await client.get(
        "/v1/orders", params={"sort": "total", "limit": 1, "cursor": page["next_cursor"]}
    )
    assert nxt.status_code == 200, nxt.text
    assert [o["id"] for o in nxt.json()["data"]] == [b["id"]]


# --- concurrency ------------------------------------------------------------------------------
async def test_numbers_are_unique_under_concurrency(client, engine, world):
    product = await make_product(engine)
    responses = await asyncio.gather(
        *(post_order(client, world["customer"], line(product)) for _ in range(40))
    )
    assert all(r.status_code == 201 for r in responses), [
        r.text for r in responses if r.status_code != 201
    ]
    numbers = [r.json()["number"] for r in responses]
    assert len(set(numbers)) == 40


async def test_one_key_in_flight_twice_makes_one_order(client, engine, world):
    product = await make_product(engine)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"customer_id": world["customer"]["id"], "lines": [line(product, "2")]}
    responses = await asyncio.gather(
        *(client.post("/v1/orders", json=body, headers=key) for _ in range(10))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert await count_rows(engine, "orders") == 1
    assert await count_rows(engine, "order_lines") == 1
    problem(
        await client.post("/v1/orders", json={**body, "notes": "x"}, headers=key),
        422,
        "idempotency_key_reused",
    )
    assert await count_rows(engine, "orders") == 1


async def test_ordered_products_and_customers_stay(client, engine, world):
    """A product some line names is not deleted (409 product_in_use: deactivate it); a
    customer with orders is not purged (409 customer_has_orders); the order is intact."""
    product = await make_product(engine)
    order = await create_order(client, world["customer"], line(product))
    problem(await client.delete(f"/v1/products/{product['id']}"), 409, "product_in_use")
    customer_url = f"/v1/customers/{world['customer']['id']}"
    assert (await client.delete(customer_url)).status_code == 204
    problem(await client.post(f"{customer_url}/purge"), 409, "customer_has_orders")
    assert (await client.get(f"/v1/orders/{order['id']}")).json() == order


async def test_a_product_deleted_while_an_order_is_written_is_never_left_on_its_lines(
    client, engine, world, monkeypatch
):
    """The race: an order has read its (live) products and is about to write its lines when
    an administrator deletes one of them. Either the delete waits for the order and is
    refused (409 product_in_use), or the order sees the product gone (422); never both
    succeed, leaving a line that names a product in the trash."""
    from crm_api.order import repository as order_repo

    product = await make_product(engine)
    real_next_number = order_repo.next_number
    deleting: dict[str, asyncio.Task[Any]] = {}

    async def _waiting_on_a_lock() -> bool:
        async with engine.connect() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        return bool(waiting)

    async def next_number_while_deleting(session: Any) -> int:
        number = await real_next_number(session)
        # the order's transaction has read its products: delete one from another now, and
        # go on once that delete has finished or is waiting on this transaction's locks
        task = asyncio.create_task(client.delete(f"/v1/products/{product['id']}"))
        deleting["task"] = task
        while not await _waiting_on_a_lock():
            finished, _ = await asyncio.wait({task}, timeout=0.01)
            if finished:
                break
        return number

    monkeypatch.setattr(order_repo, "next_number", next_number_while_deleting)
    ordered = await post_order(client, world["customer"], line(product))
    deleted = await deleting["task"]
    outcome = (ordered.status_code, deleted.status_code)
    assert outcome in ((201, 409), (422, 204)), (outcome, ordered.text, deleted.text)
    async with engine.connect() as conn:
        dangling = await conn.scalar(
            text(
                "SELECT count(*) FROM order_lines l JOIN products p ON p.id = l.product_id"
                " WHERE p.deleted_at IS NOT NULL"
            )
        )
    assert dangling == 0


async def test_a_new_orders_products_are_key_share_locked_until_it_commits(engine):
    """A product's delete (row lock, then a look for order lines naming it) cannot slip
    between a new order's product check and its commit: the check holds FOR KEY SHARE, so
    the delete's FOR UPDATE waits for the order and then sees its lines."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from crm_api.order.repository import products

    product = await make_product(engine)
    pid = uuid.UUID(str(product["id"]))
    async with AsyncSession(engine) as order_tx, engine.connect() as deleter, order_tx.begin():
        assert pid in await products(order_tx, [pid])
        async with deleter.begin():
            with pytest.raises(Exception) as refused:
                await deleter.execute(
                    text("SELECT 1 FROM products WHERE id = :id FOR UPDATE NOWAIT"),
                    {"id": pid},
                )
            assert "55P03" in repr(refused.value) or "lock" in str(refused.value).lower()
