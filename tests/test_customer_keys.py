"""Customers' natural keys (e-mail, phone) are kept by every write path, so an upsert — a
storefront's order with a ``customer`` block, ``PUT /v1/customers/by-external-ref`` —
finds a customer however it was written: ``POST``, ``PATCH``, restore, an upsert.

The e-mail and the phone are unique among live customers, compared as keys (``A@x.cn ``
is ``a@x.cn``; ``+86 138-0013-8000`` is ``0086 13800138000``), like the tax number: a
second one is a 409 ``customer_duplicate`` naming the field (and the customer, to a caller
who may see it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from crm_api.authz.state import settle
from factories.identity import make_user
from factories.orders import line, make_product
from test_storefront_role import _storefront


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def _post(client, **fields) -> dict:
    response = await client.post("/v1/customers", json={"name": "Existing", **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def _order_for(client, product, **buyer):
    return await client.post(
        "/v1/orders",
        json={"customer": {"name": "Buyer", **buyer}, "lines": [line(product)]},
    )


# --- outsider first -----------------------------------------------------------------------
async def test_a_storefront_order_for_a_crm_customers_email_is_a_409_naming_nothing(
    app, client, engine
):
    """The CRM's customer is outside the storefront's ``created_by_self`` scope: the
    existing rule, a 409 that names nothing, and no duplicate and no order."""
    product = await make_product(engine)
    existing = await _post(client, email="li.wei@example.cn", phone="+86 138 0013 8000")
    _, shop = await _storefront(app, client, engine)
    async with shop:
        for buyer in (
            {"email": " LI.WEI@example.cn"},
            {"phone": "0086 138-0013-8000"},
            {"email": "new@example.cn", "phone": "8613800138000"},
        ):
            body = problem(await _order_for(shop, product, **buyer), 409, "customer_duplicate")
            assert body["existing_id"] is None, buyer
    assert await count_rows(engine, "customers") == 1
    assert await count_rows(engine, "orders") == 0
    got = (await client.get(f"/v1/customers/{existing['id']}")).json()
    assert got["version"] == existing["version"]


# --- every write path keeps the keys ----------------------------------------------------------
async def test_an_order_finds_a_customer_made_by_post(client, engine):
    product = await make_product(engine)
    existing = await _post(client, email="Li.Wei@Example.cn")
    posted = await _order_for(client, product, email="li.wei@example.cn ", grade="A")
    assert posted.status_code == 201, posted.text
    assert posted.json()["customer_id"] == existing["id"]
    assert (await client.get(f"/v1/customers/{existing['id']}")).json()["grade"] == "A"
    assert await count_rows(engine, "customers") == 1


async def test_an_order_finds_a_customer_given_its_keys_by_patch(client, engine):
    product = await make_product(engine)
    existing = await _post(client)
    url = f"/v1/customers/{existing['id']}"
    patched = await client.patch(url, json={"email": "a@example.cn", "phone": "+86 21 5555 0000"})
    assert patched.status_code == 200, patched.text
    for buyer in ({"email": "A@example.cn"}, {"phone": "862155550000"}):
        posted = await _order_for(client, product, **buyer)
        assert posted.status_code == 201, posted.text
        assert posted.json()["customer_id"] == existing["id"], buyer
    # a changed e-mail moves the key: the old one is free, the new one finds it
    etag = (await client.get(url)).headers["ETag"]
    moved = await client.patch(url, json={"email": "b@example.cn"}, headers={"If-Match": etag})
    assert moved.status_code == 200, moved.text
    assert (await _order_for(client, product, email="b@example.cn")).json()[
        "customer_id"
    ] == existing["id"]
    other = await _order_for(client, product, email="a@example.cn")
    assert other.status_code == 201 and other.json()["customer_id"] != existing["id"]
    assert await count_rows(engine, "customers") == 2


async def test_put_by_external_ref_adopts_a_customer_found_by_email(client, engine):
    existing = await _post(client, email="erp@example.cn")
    put = await client.put(
        "/v1/customers/by-external-ref/shop-7", json={"name": "X", "email": "ERP@example.cn"}
    )
    assert put.status_code == 200, put.text
    assert put.json()["id"] == existing["id"] and put.json()["external_ref"] == "shop-7"
    # another ref for the same e-mail: another system's record, not a takeover
    body = problem(
        await client.put(
            "/v1/customers/by-external-ref/shop-8", json={"name": "X", "email": "erp@example.cn"}
        ),
        409,
        "customer_duplicate",
    )
    assert body["field"] == "email" and body["existing_id"] == existing["id"]
    assert await count_rows(engine, "customers") == 1


@pytest.mark.parametrize(
    ("first", "second", "field"),
    [
        ({"email": "dup@example.cn"}, {"email": " DUP@Example.CN"}, "email"),
        ({"phone": "+86 138 0013 8000"}, {"phone": "0086 (138) 0013-8000 x9"}, "phone"),
    ],
)
async def test_post_and_patch_refuse_a_second_customer_with_a_key(
    client, client_for, engine, first, second, field
):
    existing = await _post(client, **first)
    body = problem(await client.post("/v1/customers", json={"name": "B", **second}), 409)
    assert body["code"] == "customer_duplicate" and body["field"] == field
    assert body["existing_id"] == existing["id"]
    other = await _post(client, name="Other")
    body = problem(await client.patch(f"/v1/customers/{other['id']}", json=second), 409)
    assert body["code"] == "customer_duplicate" and body["field"] == field
    # a rep who cannot see the existing one: told it exists, not which
    rep = await client_for(await make_user(engine, roles=("sales_rep",)))
    body = problem(await rep.post("/v1/customers", json={"name": "C", **second}), 409)
    assert body["field"] == field and body["existing_id"] is None
    assert await count_rows(engine, "customers") == 2
    # its own key, respelt, is no clash
    mine = await client.patch(f"/v1/customers/{existing['id']}", json=second)
    assert mine.status_code == 200, mine.text


async def test_the_trash_frees_a_key_and_restore_checks_it(client, engine):
    gone = await _post(client, email="t@example.cn")
    assert (await client.delete(f"/v1/customers/{gone['id']}")).status_code == 204
    taker = await _post(client, email="T@example.cn")
    body = problem(await client.post(f"/v1/customers/{gone['id']}/restore"), 409)
    assert body["code"] == "customer_duplicate" and body["field"] == "email"
    assert body["existing_id"] == taker["id"]
    assert (await client.delete(f"/v1/customers/{taker['id']}")).status_code == 204
    restored = await client.post(f"/v1/customers/{gone['id']}/restore")
    assert restored.status_code == 200, restored.text


async def test_a_duplicate_left_by_migration_0012_takes_a_new_key_on_patch(client, engine):
    """Customers written before the keys were unique keep their data; the younger of two
    sharing an e-mail does not hold it (``email_held`` false) until it gets a new one."""
    older = await _post(client, email="same@example.cn")
    younger = await _post(client, email="other@example.cn")
    async with engine.begin() as conn:  # what the migration leaves: same e-mail, not held
        await conn.execute(
            text(
                "UPDATE customers SET email = 'SAME@example.cn', email_held = false WHERE id = :id"
            ),
            {"id": younger["id"]},
        )
    product = await make_product(engine)
    found = await _order_for(client, product, email="same@example.cn")
    assert found.json()["customer_id"] == older["id"]
    url = f"/v1/customers/{younger['id']}"
    # other fields change freely; the kept duplicate e-mail is not re-checked
    assert (await client.patch(url, json={"notes": "to merge"})).status_code == 200
    etag = (await client.get(url)).headers["ETag"]
    renamed = await client.patch(url, json={"email": "own@example.cn"}, headers={"If-Match": etag})
    assert renamed.status_code == 200, renamed.text
    async with engine.connect() as conn:
        held = (
            await conn.execute(
                text("SELECT email_held FROM customers WHERE id = :id"), {"id": younger["id"]}
            )
        ).scalar_one()
    assert held is True
    found = await _order_for(client, product, email="own@example.cn")
    assert found.json()["customer_id"] == younger["id"]
