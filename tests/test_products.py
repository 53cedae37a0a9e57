"""Products (the catalog): SKUs unique ignoring case (also under concurrency), filters,
sorts and ``q`` in Chinese and English, money as decimal strings, the default currency from
the system settings, bad input, who may read and write, and the ``product_in_use`` rule
(a product order lines name can be deactivated but not deleted or purged).

The generic rules (reference data readers, pagination, ETag, idempotency, audit) come from
tests/test_conformance.py, where products are registered."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, MetaData, Table, text
from sqlalchemy.dialects.postgresql import UUID

from conftest import count_rows, problem
from crm_api.kit.resource import Reference
from crm_api.resources import PRODUCTS, product_in_use
from factories.identity import make_org_unit, make_user
from factories.products import create_product, product_body


async def _events(engine: Any, product_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT action, changes FROM audit_events WHERE resource_type = 'products'"
                " AND resource_id = :id ORDER BY occurred_at, id"
            ),
            {"id": product_id},
        )
        return [dict(r) for r in rows.mappings()]


# --- SKU uniqueness -------------------------------------------------------------------------
async def test_sku_is_unique_ignoring_case_among_live_products(client, engine):
    first = await create_product(client, sku="HP-M404dn")
    body = problem(
        await client.post("/v1/products", json=product_body(sku="hp-m404DN")),
        409,
        "product_duplicate",
    )
    assert body["field"] == "sku" and body["existing_id"] == first["id"]
    other = await create_product(client, sku="HP-M405")
    problem(
        await client.patch(f"/v1/products/{other['id']}", json={"sku": "HP-M404DN"}),
        409,
        "product_duplicate",
    )
    # its own SKU in another case is not a clash
    renamed = await client.patch(f"/v1/products/{first['id']}", json={"sku": "HP-M404DN"})
    assert renamed.status_code == 200 and renamed.json()["sku"] == "HP-M404DN"
    # deleted: the SKU is free again; the deleted one cannot come back while it is taken
    assert (await client.delete(f"/v1/products/{first['id']}")).status_code == 204
    taker = await create_product(client, sku="hp-m404dn")
    problem(await client.post(f"/v1/products/{first['id']}/restore"), 409, "product_duplicate")
    assert (await client.delete(f"/v1/products/{taker['id']}")).status_code == 204
    restored = await client.post(f"/v1/products/{first['id']}/restore")
    assert restored.status_code == 200 and restored.json()["deleted_at"] is None
    assert await count_rows(engine, "products", "lower(sku) = 'hp-m404dn'") == 2


async def test_concurrent_creates_of_one_sku_make_one_product(client, engine):
    """Ten requests at once for one SKU in different letter cases: one 201, nine 409s that
    name the winner (the advisory lock queues them; the unique index is the safety net)."""
    skus = ["SKU-Race-X".upper() if i % 2 else "sku-race-x" for i in range(10)]
    responses = await asyncio.gather(
        *(client.post("/v1/products", json=product_body(sku=s)) for s in skus)
    )
    created = [r for r in responses if r.status_code == 201]
    assert len(created) == 1, [r.status_code for r in responses]
    winner = created[0].json()["id"]
    for r in responses:
        if r.status_code != 201:
            assert problem(r, 409, "product_duplicate")["existing_id"] == winner
    assert await count_rows(engine, "products") == 1


# --- reads ------------------------------------------------------------------------------------
async def _catalog(client) -> dict[str, dict[str, Any]]:
    return {
        "printer": await create_product(
            client,
            sku="HP-LJ-M404DN",
            name="惠普 LaserJet Pro M404dn 黑白激光打印机",
            brand="HP",
            series="LaserJet Pro",
            category="打印机",
            list_price="2599.00",
        ),
        "laptop": await create_product(
            client,
            sku="LNV-X1C-G11",
            name="ThinkPad X1 Carbon Gen 11 Laptop",
            brand="Lenovo",
            series="ThinkPad X1",
            category="笔记本电脑",
            list_price="12999.00",
        ),
        "toner": await create_product(
            client,
            sku="HP-CF259A",
            name="惠普 59A 原装硒鼓 100%_原装",
            brand="HP",
            series="LaserJet 耗材",
            category="耗材",
            list_price="699.50",
            active=False,
        ),
    }


async def _ids(client, **params: Any) -> list[str]:
    response = await client.get("/v1/products", params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["data"]]


async def test_filters_sorts_and_search(client):
    c = await _catalog(client)
    ids = {k: v["id"] for k, v in c.items()}
    assert set(await _ids(client, brand="HP")) == {ids["printer"], ids["toner"]}
    assert set(await _ids(client, brand=["HP", "Lenovo"])) == set(ids.values())
    assert await _ids(client, series="ThinkPad X1") == [ids["laptop"]]
    assert await _ids(client, category="耗材") == [ids["toner"]]
    assert await _ids(client, active="false") == [ids["toner"]]
    assert set(await _ids(client, active="true")) == {ids["printer"], ids["laptop"]}
    assert set(await _ids(client, min_price="699.50", max_price="2599")) == {
        ids["printer"],
        ids["toner"],
    }
    assert await _ids(client, min_price="2599.0001") == [ids["laptop"]]
    assert await _ids(client, sku="hp-cf259a") == [ids["toner"]]
    # sorts: by price both ways, by name, by SKU
    assert await _ids(client, sort="list_price") == [ids["toner"], ids["printer"], ids["laptop"]]
    assert await _ids(client, sort="-list_price") == [ids["laptop"], ids["printer"], ids["toner"]]
    assert await _ids(client, sort="sku") == [ids["toner"], ids["printer"], ids["laptop"]]
    # q: Chinese and English, any case, over SKU, name, brand and series
    assert set(await _ids(client, q="激光打印机")) == {ids["printer"]}
    assert set(await _ids(client, q="惠普")) == {ids["printer"], ids["toner"]}
    assert set(await _ids(client, q="laserjet")) == {ids["printer"], ids["toner"]}
    assert set(await _ids(client, q="耗材")) == {ids["toner"]}  # series only
    assert set(await _ids(client, q="x1c")) == {ids["laptop"]}  # SKU
    assert set(await _ids(client, q="LENOVO")) == {ids["laptop"]}  # brand
    assert await _ids(client, q="carbon gen") == [ids["laptop"]]
    # wildcards are literal
    assert await _ids(client, q="100%_") == [ids["toner"]]
    assert await _ids(client, q="%") == [ids["toner"]]
    assert await _ids(client, q="M404_N") == []
    # a term holding the fields' separator matches field by field, not across fields
    assert await _ids(client, q="hp\x1flaserjet") == []
    # combined with a filter
    assert await _ids(client, q="惠普", active="true") == [ids["printer"]]


async def test_price_page_walks_with_a_decimal_cursor(client):
    prices = ["0.0001", "1.10", "1.1", "99999999999999.9999", "5", "5.00", "12.3456"]
    for p in prices:
        await create_product(client, list_price=p)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "sort": "-list_price"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/products", params=params)).json()
        seen += [r["list_price"] for r in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert [Decimal(p) for p in seen] == sorted((Decimal(p) for p in prices), reverse=True)
    assert all(isinstance(p, str) for p in seen)


async def test_money_is_decimal_and_currency_defaults_from_the_settings(client):
    made = await create_product(client, list_price="1234.5", tax_rate="0.06", currency=None)
    assert made["list_price"] == "1234.5000" and made["tax_rate"] == "0.0600"
    assert made["currency"] == "CNY"  # the default setting
    changed = await client.patch("/v1/settings", json={"default_currency": "USD"})
    assert changed.status_code == 200, changed.text
    usd = await create_product(client, currency=None)
    assert usd["currency"] == "USD"
    eur = await create_product(client, currency="EUR")
    assert eur["currency"] == "EUR"
    got = await client.get(f"/v1/products/{made['id']}")
    assert got.json()["list_price"] == "1234.5000"
    assert got.headers["etag"] == '"1"'


async def test_writes_are_audited_with_decimal_strings(client, engine):
    made = await create_product(client, list_price="100.00")
    url = f"/v1/products/{made['id']}"
    assert (
        await client.patch(url, json={"list_price": "90.5", "active": False})
    ).status_code == 200
    # nothing really changed: no event, same version
    same = await client.patch(url, json={"list_price": "90.50"})
    assert same.status_code == 200 and same.json()["version"] == 2
    events = await _events(engine, made["id"])
    assert [e["action"] for e in events] == ["create", "update"]
    assert events[1]["changes"]["list_price"] == {"before": "100.0000", "after": "90.5000"}
    assert events[1]["changes"]["active"] == {"before": True, "after": False}


# --- bad input --------------------------------------------------------------------------------
BAD_CREATES = [
    ({"list_price": "-1"}, "list_price"),
    ({"list_price": "1.00001"}, "list_price"),
    ({"list_price": "100000000000000"}, "list_price"),
    ({"list_price": "NaN"}, "list_price"),
    ({"list_price": "abc"}, "list_price"),
    ({"tax_rate": "1.5"}, "tax_rate"),
    ({"tax_rate": "-0.1"}, "tax_rate"),
    ({"currency": "XYZ"}, "currency"),
    ({"currency": "cny"}, "currency"),
    ({"sku": "has space"}, "sku"),
    ({"sku": ""}, "sku"),
    ({"sku": "x" * 65}, "sku"),
    ({"name": ""}, "name"),
    ({"active": "yes"}, "active"),
    ({"parameters": {"nested": {"a": 1}}}, "parameters"),
    ({"parameters": {f"k{i}": i for i in range(51)}}, "parameters"),
    ({"parameters": {"k": "x" * 501}}, "parameters"),
    ({"parameters": {f"k{i}": "x" * 400 for i in range(30)}}, "parameters"),
    ({"parameters": {"k": list(range(51))}}, "parameters"),
    ({"parameters": {"": 1}}, "parameters"),
    ({"version": 3}, "version"),
    ({"search_text": "x"}, "search_text"),
]


@pytest.mark.parametrize(("change", "field"), BAD_CREATES, ids=[f for _, f in BAD_CREATES])
async def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(
    client, engine, change, field
):
    before = [await count_rows(engine, t) for t in ("products", "audit_events")]
    body = problem(await client.post("/v1/products", json=product_body(**change)), 422)
    assert any(e["field"].split(".")[0] == field for e in body["errors"]), body
    assert [await count_rows(engine, t) for t in ("products", "audit_events")] == before


async def test_bad_patch_and_list_queries(client, engine):
    made = await create_product(client)
    url = f"/v1/products/{made['id']}"
    for patch in ({"sku": None}, {"list_price": None}, {"active": None}, {"currency": "usd"}):
        problem(await client.patch(url, json=patch), 422, "validation_error")
    for params in (
        {"min_price": "-1"},
        {"min_price": "abc"},
        {"active": "maybe"},
        {"currency": "XYZ"},
        {"sort": "price"},
        {"q": ""},
    ):
        problem(await client.get("/v1/products", params=params), 422)
    assert (await client.get(url)).json() == made
    # parameters of every allowed type round-trip exactly
    params = {
        "速度": 38,
        "重量(kg)": 8.6,
        "双面": True,
        "接口": ["USB", "Ethernet"],
        "型号": "M404",
    }
    changed = await client.patch(url, json={"parameters": params})
    assert changed.status_code == 200 and changed.json()["parameters"] == params


# --- who may do what --------------------------------------------------------------------------
async def test_sellers_read_admin_writes_and_writes_are_grantable(client, client_for, engine):
    unit = await make_org_unit(engine)
    made = await create_product(client)
    rep = await client_for(await make_user(engine, roles=("sales_rep",), org_unit=unit))
    assert (await rep.get(f"/v1/products/{made['id']}")).status_code == 200
    problem(await rep.post("/v1/products", json=product_body()), 403)
    problem(await rep.patch(f"/v1/products/{made['id']}", json={"active": False}), 403)
    staff = await client_for(await make_user(engine, roles=("staff",), org_unit=unit))
    problem(await staff.get("/v1/products"), 403)
    # a catalog manager role: products writable through a grant, nothing else
    role = (await client.post("/v1/roles", json={"name": "catalog_manager"})).json()
    for action in ("read", "create", "update"):
        granted = await client.post(
            f"/v1/roles/{role['id']}/grants",
            json={"resource": "products", "action": action, "scope": "all"},
        )
        assert granted.status_code == 201, granted.text
    manager = await make_user(engine, roles=("catalog_manager",), org_unit=unit)
    editor = await client_for(manager)
    created = await editor.post("/v1/products", json=product_body())
    assert created.status_code == 201, created.text
    changed = await editor.patch(f"/v1/products/{made['id']}", json={"active": False})
    assert changed.status_code == 200, changed.text
    problem(await editor.delete(f"/v1/products/{made['id']}"), 403)
    problem(await editor.get("/v1/customers"), 403)


# --- in use: deactivate, never delete -----------------------------------------------------------
@pytest.fixture
async def order_lines(engine, monkeypatch) -> Any:
    """A stand-in for the orders issue's ``order_lines``: a table (only the tests create)
    whose ``product_id`` references products ON DELETE RESTRICT, declared on PRODUCTS as
    the real one is (by name, from the models' metadata, once orders land)."""
    table = Table(
        "scratch_order_lines",
        MetaData(),
        Column("id", UUID(as_uuid=True), primary_key=True),
        Column(
            "product_id",
            UUID(as_uuid=True),
            ForeignKey(
                "products.id", ondelete="RESTRICT", name="fk_order_lines_product_id_products"
            ),
        ),
    )
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS scratch_order_lines"))
        await conn.execute(
            text(
                "CREATE TABLE scratch_order_lines (id uuid PRIMARY KEY, product_id uuid"
                " CONSTRAINT fk_order_lines_product_id_products REFERENCES products (id)"
                " ON DELETE RESTRICT)"
            )
        )
    monkeypatch.setattr(
        PRODUCTS, "referenced_by", (Reference(table, "product_id", product_in_use),)
    )
    yield table
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE scratch_order_lines"))


async def _order(engine, product_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO scratch_order_lines VALUES (:id, :product)"),
            {"id": uuid.uuid4(), "product": uuid.UUID(product_id)},
        )


async def test_a_product_on_order_lines_can_be_deactivated_not_deleted(client, engine, order_lines):
    ordered = await create_product(client)
    spare = await create_product(client)
    await _order(engine, ordered["id"])
    url = f"/v1/products/{ordered['id']}"
    body = problem(await client.delete(url), 409, "product_in_use")
    assert body["reason"] == "order_lines" and "deactivate" in body["detail"]
    off = await client.patch(url, json={"active": False})
    assert off.status_code == 200 and off.json()["active"] is False
    assert (await client.get(url)).status_code == 200
    # a product nobody ordered goes to the trash and can be purged
    assert (await client.delete(f"/v1/products/{spare['id']}")).status_code == 204
    assert (await client.post(f"/v1/products/{spare['id']}/purge")).status_code == 204
    events = [e["action"] for e in await _events(engine, ordered["id"])]
    assert events == ["create", "update"]  # the refused delete left no trace


async def test_purge_of_a_product_ordered_while_in_the_trash_is_refused(
    client, engine, order_lines, monkeypatch
):
    """An order line written after the product went to the trash (a race the orders service
    closes by refusing deleted products) still keeps it: the explicit check, and behind it
    the foreign key, mapped to the same 409."""
    made = await create_product(client)
    url = f"/v1/products/{made['id']}"
    assert (await client.delete(url)).status_code == 204
    await _order(engine, made["id"])
    problem(await client.post(f"{url}/purge"), 409, "product_in_use")
    monkeypatch.setattr(PRODUCTS, "referenced_by", ())  # only the foreign key left
    problem(await client.post(f"{url}/purge"), 409, "product_in_use")
    assert await count_rows(engine, "products") == 1


async def test_an_undeclared_reference_table_is_skipped(client, monkeypatch):
    """``order_lines`` named before the orders issue creates it: nothing to check yet."""
    monkeypatch.setattr(
        PRODUCTS,
        "referenced_by",
        (Reference("no_such_table_yet", "product_id", product_in_use),),
    )
    made = await create_product(client)
    assert (await client.delete(f"/v1/products/{made['id']}")).status_code == 204


async def test_the_reference_data_check_fails_when_readers_see_nothing(app, engine, monkeypatch):
    """The test of the conformance check products get: reference data read as if it were
    somebody's records (no reader sees what the administrator wrote) fails it."""
    from sqlalchemy import false

    from crm_api.kit import resource as kit
    from test_conformance import Subject, check_reference_data

    real = kit.scope_of

    def owned_by_nobody(resource: Any, access: Any) -> Any:
        return false() if resource is PRODUCTS else real(resource, access)

    monkeypatch.setattr(kit, "scope_of", owned_by_nobody)
    with pytest.raises(AssertionError, match=r"assert '[0-9a-f-]{36}' in set\(\)"):
        await check_reference_data(Subject(app, engine, PRODUCTS))
