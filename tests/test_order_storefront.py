"""Storefronts post orders in one call, one transaction (issue #10 §4): a ``customer``
block upserted by natural key with the order, the storefront role's limits on orders, and
bad input that leaves no customer behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from conftest import count_rows, problem
from crm_api.authz.state import settle
from factories.orders import line, make_product
from test_storefront_role import _storefront

BUYER = {"email": "Li.Wei@Example.cn", "name": "李伟", "type": "individual"}


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def test_a_storefront_posts_an_order_for_a_new_buyer(app, client, engine):
    product = await make_product(engine, price="59.90")
    _, shop = await _storefront(app, client, engine)
    async with shop:
        me = (await shop.get("/v1/me")).json()
        posted = await shop.post(
            "/v1/orders",
            json={"customer": BUYER, "channel": "storefront", "lines": [line(product, "2")]},
            headers={"Idempotency-Key": "web-1"},
        )
        assert posted.status_code == 201, posted.text
        order = posted.json()
        assert order["created_by"] == order["owner_id"] == me["id"]
        assert order["total"] == "135.37"  # 119.80 + tax 15.574 → 15.57
        customer = (await shop.get(f"/v1/customers/{order['customer_id']}")).json()
        assert (
            customer["email"].lower() == BUYER["email"].lower()
            and customer["created_by"] == me["id"]
        )
        # the same buyer again (another case of the e-mail): the same customer
        again = await shop.post(
            "/v1/orders",
            json={
                "customer": {**BUYER, "email": "li.wei@example.CN"},
                "lines": [line(product)],
            },
        )
        assert again.status_code == 201 and again.json()["customer_id"] == customer["id"]
        listed = (await shop.get("/v1/orders")).json()["data"]
        assert {o["id"] for o in listed} == {order["id"], again.json()["id"]}
        assert (await shop.get(f"/v1/orders/{order['id']}")).status_code == 200
        # it reads only what it posted, and may not change orders
        theirs = (
            await client.post(
                "/v1/orders",
                json={"customer_id": customer["id"], "lines": [line(product)]},
            )
        ).json()
        problem(await shop.get(f"/v1/orders/{theirs['id']}"), 404, "order_not_found")
        problem(await shop.post(f"/v1/orders/{order['id']}/confirm"), 403, "permission_denied")
        problem(await shop.patch(f"/v1/orders/{order['id']}", json={"notes": "x"}), 403)
        problem(await shop.delete(f"/v1/orders/{order['id']}"), 403)


async def test_twenty_concurrent_orders_of_one_new_buyer_make_one_customer(app, client, engine):
    product = await make_product(engine)
    _, shop = await _storefront(app, client, engine)
    async with shop:
        responses = await asyncio.gather(
            *(
                shop.post(
                    "/v1/orders",
                    json={
                        "customer": {**BUYER, "phone": "+86 138 0013 8000"},
                        "lines": [line(product)],
                    },
                )
                for _ in range(20)
            )
        )
    assert [r.status_code for r in responses] == [201] * 20, [r.text for r in responses]
    assert len({r.json()["customer_id"] for r in responses}) == 1
    assert await count_rows(engine, "customers") == 1
    assert await count_rows(engine, "orders") == 20
    assert len({r.json()["number"] for r in responses}) == 20


@pytest.mark.parametrize("case", ["inactive_product", "bad_discount", "both_customers"])
async def test_a_rejected_order_leaves_no_customer(app, client, engine, case):
    good = await make_product(engine, price="10.00")
    inactive = await make_product(engine, active=False)
    _, shop = await _storefront(app, client, engine)
    body: dict = {"customer": {**BUYER, "external_ref": "buyer-9"}, "lines": [line(good)]}
    code = {"inactive_product": "inactive_product", "bad_discount": "invalid_line"}.get(
        case, "invalid_customer"
    )
    if case == "inactive_product":
        body["lines"].append(line(inactive))
    elif case == "bad_discount":
        body["lines"] = [line(good, "1", discount="10.01")]
    else:
        body["customer_id"] = str(uuid.uuid4())
    tables = ("customers", "orders", "order_lines", "audit_events", "idempotency_keys")
    before = [await count_rows(engine, t) for t in tables]
    async with shop:
        problem(
            await shop.post("/v1/orders", json=body, headers={"Idempotency-Key": "k-1"}), 422, code
        )
    assert [await count_rows(engine, t) for t in tables] == before


async def test_a_customer_block_needs_customers_create(client, client_for, engine):
    """A rep may upsert (their role creates customers); a marketer reads orders only."""
    from factories.identity import make_org_unit, make_user

    product = await make_product(engine)
    unit = await make_org_unit(engine)
    rep = await make_user(engine, roles=("sales_rep",), org_unit=unit)
    as_rep = await client_for(rep)
    made = await as_rep.post(
        "/v1/orders", json={"customer": {**BUYER, "external_ref": "r-1"}, "lines": [line(product)]}
    )
    assert made.status_code == 201, made.text
    assert made.json()["owner_id"] == str(rep["id"])
