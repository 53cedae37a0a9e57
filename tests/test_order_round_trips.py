"""An order create is lean (issue 10's speed targets): two statements — the products and
the customer read and locked together with the Idempotency-Key's claim, then the order,
its lines, its audit event and its number in one INSERT — plus the stored response when
a key is sent. The claim folded into the first statement keeps the key's semantics: a
live key replays whatever the order would be answered now, and a different body under
it is refused, also when that body is bad in itself.

Counted at the SQLAlchemy engine, as test_create_round_trips.py does.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text

from conftest import count_rows, problem
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user
from factories.orders import line, make_product
from test_create_round_trips import counted


async def _rep(engine, client, client_for):
    unit = await make_org_unit(engine)
    rep = await make_user(engine, org_unit=unit, roles=("sales_rep",))
    customer = await create_customer(client, rep)
    return rep, customer, await client_for(rep)


async def test_an_order_is_two_statements_and_a_key_adds_one(app, engine, client, client_for):
    _rep_user, customer, caller = await _rep(engine, client, client_for)
    a, b = await make_product(engine), await make_product(engine, price="9.99")
    await app.state.policy.refresh_if_changed(engine)
    assert (await caller.get("/v1/orders?limit=1")).status_code == 200  # warm principal
    body = {"customer_id": customer["id"], "lines": [line(a, "2"), line(b, "1")]}
    with counted(app) as plain:
        first = await caller.post("/v1/orders", json=body)
    assert first.status_code == 201, first.text
    assert len(plain) == 2, plain
    assert plain[0].startswith("SELECT") and "FOR KEY SHARE" in plain[0]
    insert = plain[1]
    for table in ("orders", "order_lines", "audit_events"):
        assert f"INSERT INTO {table}" in insert, insert
    assert "nextval" in insert

    with counted(app) as keyed:
        second = await caller.post(
            "/v1/orders", json=body, headers={"Idempotency-Key": f"k-{uuid.uuid4()}"}
        )
    assert second.status_code == 201, second.text
    assert len(keyed) == 3, keyed
    assert "INSERT INTO idempotency_keys" in keyed[0] and "FOR KEY SHARE" in keyed[0]
    assert keyed[2].startswith("UPDATE idempotency_keys"), keyed

    # numbers follow each other; the order, its lines and its event are as a read shows
    n1, n2 = (int(r.json()["number"].split("-")[-1]) for r in (first, second))
    assert n2 == n1 + 1
    created = second.json()
    assert (await caller.get(f"/v1/orders/{created['id']}")).json() == created
    async with engine.connect() as conn:
        changes = await conn.scalar(
            text("SELECT changes FROM audit_events WHERE resource_id = :id AND action = 'create'"),
            {"id": uuid.UUID(created["id"])},
        )
    assert changes["number"] == {"before": None, "after": created["number"]}
    assert changes["lines"]["after"] == created["lines"]
    assert changes["total"] == {"before": None, "after": created["total"]}
    assert "status" in changes and "customer_id" in changes


async def test_a_live_key_replays_even_when_the_order_would_now_be_refused(
    engine, client, client_for
):
    """The claim sits in the first statement, beside the product check: a retry of an
    order whose product was deactivated since still gets the first 201, not a 422."""
    _rep_user, customer, caller = await _rep(engine, client, client_for)
    product = await make_product(engine)
    headers = {"Idempotency-Key": "replay-after-deactivation"}
    body = {"customer_id": customer["id"], "lines": [line(product)]}
    first = await caller.post("/v1/orders", json=body, headers=headers)
    assert first.status_code == 201, first.text
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE products SET active = false WHERE id = :id"), {"id": product["id"]}
        )
    again = await caller.post("/v1/orders", json=body, headers=headers)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    # without the key the same body is refused now
    problem(await caller.post("/v1/orders", json=body), 422, "inactive_product")


async def test_a_different_body_under_a_live_key_is_refused_even_when_bad_in_itself(
    engine, client, client_for
):
    """A body the service refuses before its first statement (customer_id and a customer
    block) under a key already used: 422 idempotency_key_reused, as with the claim first;
    a refused request leaves no key behind."""
    _rep_user, customer, caller = await _rep(engine, client, client_for)
    product = await make_product(engine)
    headers = {"Idempotency-Key": "reused-with-bad-body"}
    good = {"customer_id": customer["id"], "lines": [line(product)]}
    assert (await caller.post("/v1/orders", json=good, headers=headers)).status_code == 201
    bad = {**good, "customer": {"external_ref": "x-1", "name": "X"}}
    problem(
        await caller.post("/v1/orders", json=bad, headers=headers), 422, "idempotency_key_reused"
    )
    keys = await count_rows(engine, "idempotency_keys")
    fresh = {"Idempotency-Key": "fresh-with-bad-body"}
    problem(await caller.post("/v1/orders", json=bad, headers=fresh), 422, "invalid_customer")
    assert await count_rows(engine, "idempotency_keys") == keys
    # an unknown product, refused after the folded claim: the claim is rolled back too
    unknown = {
        "customer_id": customer["id"],
        "lines": [{**line(product), "product_id": str(uuid.uuid4())}],
    }
    problem(await caller.post("/v1/orders", json=unknown, headers=fresh), 422, "invalid_product")
    assert await count_rows(engine, "idempotency_keys") == keys
    # and the key is free for a good order afterwards
    assert (await caller.post("/v1/orders", json=good, headers=fresh)).status_code == 201


class _ReadStatements:
    def __init__(self, monkeypatch) -> None:
        from crm_api.db.reader import ReadPool

        self.sql: list[str] = []
        original = ReadPool.fetch

        async def fetch(pool, sql, args):
            self.sql.append(sql)
            return await original(pool, sql, args)

        monkeypatch.setattr(ReadPool, "fetch", fetch)


async def test_a_customers_orders_are_one_statement_and_its_check_holds(
    engine, client, client_for, monkeypatch
):
    """``GET /v1/customers/{id}/orders``: the customer's check (customers ``read``) is
    part of the list statement. A page with orders is one statement; an empty page asks
    again, so a customer the caller cannot see is a 404 even where their orders scope
    covers its orders, and a visible customer without orders an empty page."""
    role = (await client.post("/v1/roles", json={"name": "orders_everywhere"})).json()
    for resource, scope in (("orders", "all"), ("customers", "own")):
        granted = await client.post(
            f"/v1/roles/{role['id']}/grants",
            json={"resource": resource, "action": "read", "scope": scope},
        )
        assert granted.status_code == 201, granted.text
    unit = await make_org_unit(engine)
    reader = await make_user(engine, org_unit=unit, roles=("orders_everywhere",))
    other = await make_user(engine, org_unit=unit, roles=("sales_rep",))
    theirs = await create_customer(client, other)
    mine = await create_customer(client, reader)
    empty = await create_customer(client, reader)
    product = await make_product(engine)
    for customer in (theirs, mine, mine):
        body = {"customer_id": customer["id"], "lines": [line(product)]}
        assert (await client.post("/v1/orders", json=body)).status_code == 201
    as_reader = await client_for(reader)
    # the orders of both are in the reader's orders scope
    assert len((await as_reader.get("/v1/orders")).json()["data"]) == 3
    reads = _ReadStatements(monkeypatch)
    page = await as_reader.get(f"/v1/customers/{mine['id']}/orders?limit=1")
    assert page.status_code == 200, page.text
    assert len(page.json()["data"]) == 1 and page.json()["has_more"] is True
    assert len(reads.sql) == 1, reads.sql
    assert "EXISTS" in reads.sql[0] and "FROM customers" in reads.sql[0]
    rest = await as_reader.get(
        f"/v1/customers/{mine['id']}/orders?limit=1&cursor={page.json()['next_cursor']}"
    )
    assert len(rest.json()["data"]) == 1 and rest.json()["has_more"] is False
    before = len(reads.sql)
    problem(await as_reader.get(f"/v1/customers/{theirs['id']}/orders"), 404, "customer_not_found")
    # the same statement for every customer (the id is a parameter), then the check
    assert reads.sql[before] == reads.sql[0]
    assert len(reads.sql) == before + 2
    problem(await as_reader.get(f"/v1/customers/{uuid.uuid4()}/orders"), 404, "customer_not_found")
    nothing = await as_reader.get(f"/v1/customers/{empty['id']}/orders?include_total=true")
    assert nothing.status_code == 200 and nothing.json()["data"] == []
    assert nothing.json()["total"] == 0
    counted_page = (
        await as_reader.get(f"/v1/customers/{mine['id']}/orders?include_total=true")
    ).json()
    assert counted_page["total"] == 2 and len(counted_page["data"]) == 2
