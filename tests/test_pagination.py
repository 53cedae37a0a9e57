"""Cursor pagination, sorting and filtering of customers over a data set full of ties.

The data set is inserted in one statement (these tests are about reading it back); every
expectation is computed in Python from the rows as inserted, except the collation order of
names, which is PostgreSQL's to define and is read back with one plain ORDER BY.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import problem
from crm_api.models.customer import Customer
from factories.contacts import create_contact
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user

BASE = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
NAMES = ["同名公司", "Beta", "beta", "阿里巴巴", "Zeta 100% pure_x"]
GRADES = ["A", "B", "C", "D", None]
STAGES = ["lead", "prospect", "customer", "churned"]
REGIONS = ["华东", "华北", None]
INDUSTRIES = ["制造业", "retail"]
TAGS = [["vip"], ["vip", "华东"], [], ["华东"], ["vip", "new", "华东"]]
LIVE, DELETED = 57, 6


async def _dataset(engine: AsyncEngine) -> dict[str, Any]:
    unit_a, unit_b = await make_org_unit(engine, "A"), await make_org_unit(engine, "B")
    owners = [await make_user(engine, org_unit=unit_a), await make_user(engine, org_unit=unit_b)]
    rows = []
    for i in range(LIVE + DELETED):
        owner = owners[i % 2]
        rows.append(
            {
                "id": uuid.uuid4(),
                "name": NAMES[i % len(NAMES)],
                "type": "individual" if i % 7 == 0 else "company",
                "lifecycle_stage": STAGES[i % len(STAGES)],
                "grade": GRADES[i % len(GRADES)],
                "region": REGIONS[i % len(REGIONS)],
                "industry": INDUSTRIES[i % len(INDUSTRIES)],
                "email": f"c{i}@shop{i % 3}.example.cn" if i % 2 else None,
                "phone": f"+86 21 5555 {i:04d}" if i % 3 == 0 else None,
                "tags": TAGS[i % len(TAGS)],
                "custom_fields": {},
                "owner_id": owner["id"],
                "org_unit_id": owner["org_unit_id"],
                # ties: four customers share each created_at, ten each updated_at
                "created_at": BASE + timedelta(seconds=i // 4),
                "updated_at": BASE + timedelta(minutes=i // 10),
                "deleted_at": BASE + timedelta(days=1) if i >= LIVE else None,
                "version": 1,
            }
        )
    async with engine.begin() as conn:
        await conn.execute(insert(Customer.__table__), rows)
    return {
        "owners": owners,
        "units": (unit_a, unit_b),
        "live": [r for r in rows if r["deleted_at"] is None],
        "deleted": [r for r in rows if r["deleted_at"] is not None],
    }


@pytest.fixture
async def data(client: httpx.AsyncClient, engine: AsyncEngine) -> dict[str, Any]:
    return await _dataset(engine)


async def walk(
    client: httpx.AsyncClient, params: dict[str, Any], limit: int = 7
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every page of a list; returns the rows in order and the page envelopes."""
    rows: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/customers", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page)
        rows.extend(page["data"])
        assert len(page["data"]) <= limit
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return rows, pages
        assert len(page["data"]) == limit and page["next_cursor"]
        cursor = page["next_cursor"]
        assert len(pages) < 100, "pagination does not terminate"


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [str(r["id"]) for r in rows]


async def _db_order(engine: AsyncEngine, order_by: str, deleted: bool = False) -> list[str]:
    where = "deleted_at IS NOT NULL" if deleted else "deleted_at IS NULL"
    async with engine.connect() as conn:
        result = await conn.execute(
            text(f"SELECT id FROM customers WHERE {where} ORDER BY {order_by}")
        )
        return [str(i) for i in result.scalars()]


async def test_walk_every_sort_without_gaps_or_duplicates(client, engine, data):
    live_ids = sorted(str(r["id"]) for r in data["live"])
    by_id = {str(r["id"]): r for r in data["live"]}
    # (sort, the same order in SQL, page size): page sizes that cut through tie groups
    sorts = [
        ("-created_at", "created_at DESC, id DESC", 8),
        ("created_at", "created_at ASC, id ASC", 8),
        ("name", "name ASC, id ASC", 8),
        ("-name", "name DESC, id DESC", 8),
        ("-name,created_at", "name DESC, created_at ASC, id ASC", 3),
        ("name,-created_at", "name ASC, created_at DESC, id DESC", 8),
        ("updated_at", "updated_at ASC, id ASC", 7),
        ("-updated_at,name", "updated_at DESC, name ASC, id ASC", 8),
        ("created_at,-updated_at,-name", "created_at ASC, updated_at DESC, name DESC, id DESC", 8),
    ]
    for sort, order_by, limit in sorts:
        rows, pages = await walk(client, {"sort": sort}, limit)
        got = ids(rows)
        assert len(got) == len(set(got)), f"{sort}: duplicates"
        assert sorted(got) == live_ids, f"{sort}: gaps"
        assert got == await _db_order(engine, order_by), f"{sort}: order"
        assert all(p["total"] is None for p in pages)
        # the order really follows the keys (not just "some" stable order)
        for a, b in pairwise(got):
            ra, rb = by_id[a], by_id[b]
            for key in sort.split(","):
                field = key.lstrip("-")
                if ra[field] == rb[field]:
                    continue
                if field != "name":  # names follow the database collation
                    assert (ra[field] > rb[field]) == key.startswith("-"), (sort, a, b)
                break
    # the same walk twice gives the same pages (deterministic)
    first, _ = await walk(client, {"sort": "-updated_at,name"}, 8)
    again, _ = await walk(client, {"sort": "-updated_at,name"}, 8)
    assert ids(again) == ids(first)


async def test_default_and_maximum_page_size(client, data):
    page = (await client.get("/v1/customers")).json()
    assert len(page["data"]) == 50 and page["has_more"] is True
    rest = (await client.get("/v1/customers", params={"cursor": page["next_cursor"]})).json()
    assert len(rest["data"]) == LIVE - 50 and rest["has_more"] is False
    page = (await client.get("/v1/customers", params={"limit": 200})).json()
    assert len(page["data"]) == LIVE and page["has_more"] is False
    page = (await client.get("/v1/customers", params={"limit": LIVE})).json()
    assert len(page["data"]) == LIVE and page["has_more"] is False
    assert page["next_cursor"] is None
    # the default sort is newest first
    got = ids(page["data"])
    created = [r["created_at"] for r in page["data"]]
    assert created == sorted(created, reverse=True)
    assert len(got) == len(set(got))


async def test_rows_inserted_during_a_walk_do_not_shift_pages(client, engine, data):
    first = (await client.get("/v1/customers", params={"limit": 10})).json()
    # a new newest customer and a deleted one that was on a later page
    await create_customer(client, data["owners"][0], name="newcomer")
    seen = ids(first["data"])
    rest, _ = await walk(client, {"cursor": first["next_cursor"]}, limit=10)
    got = seen + ids(rest)
    assert len(got) == len(set(got)) == LIVE
    assert "newcomer" not in {r["name"] for r in rest}


def _expect(data: dict[str, Any], pred: Any) -> list[str]:
    return sorted(str(r["id"]) for r in data["live"] if pred(r))


async def test_filters(client, engine, data):
    owner_a, owner_b = data["owners"]
    unit_a, _ = data["units"]
    with_contact = data["live"][10]
    await create_contact(client, {"id": with_contact["id"]}, name="王小明")

    def q(term: str) -> Any:
        t = term.lower()
        return lambda r: any(t in (r[f] or "").lower() for f in ("name", "email", "phone"))

    cases: list[tuple[dict[str, Any], Any]] = [
        ({"lifecycle_stage": "prospect"}, lambda r: r["lifecycle_stage"] == "prospect"),
        (
            {"lifecycle_stage": ["lead", "churned"]},
            lambda r: r["lifecycle_stage"] in ("lead", "churned"),
        ),
        ({"grade": "A"}, lambda r: r["grade"] == "A"),
        ({"grade": ["B", "D"]}, lambda r: r["grade"] in ("B", "D")),
        ({"type": "individual"}, lambda r: r["type"] == "individual"),
        ({"region": "华东"}, lambda r: r["region"] == "华东"),
        ({"region": ["华东", "华北"]}, lambda r: r["region"] is not None),
        ({"industry": "制造业"}, lambda r: r["industry"] == "制造业"),
        ({"owner_id": str(owner_a["id"])}, lambda r: r["owner_id"] == owner_a["id"]),
        ({"owner_id": [str(owner_a["id"]), str(owner_b["id"])]}, lambda r: True),
        ({"owner_id": str(uuid.uuid4())}, lambda r: False),
        ({"org_unit_id": str(unit_a["id"])}, lambda r: r["org_unit_id"] == unit_a["id"]),
        ({"tag": "vip"}, lambda r: "vip" in r["tags"]),
        ({"tag": ["vip", "华东"]}, lambda r: {"vip", "华东"} <= set(r["tags"])),
        ({"tag": "nobody"}, lambda r: False),
        (
            {"created_after": (BASE + timedelta(seconds=5)).isoformat()},
            lambda r: r["created_at"] >= BASE + timedelta(seconds=5),
        ),
        (
            {"created_before": (BASE + timedelta(seconds=5)).isoformat()},
            lambda r: r["created_at"] < BASE + timedelta(seconds=5),
        ),
        (
            {
                "created_after": (BASE + timedelta(seconds=3)).isoformat(),
                "created_before": "2025-03-01T16:00:09+08:00",
            },  # another offset: 08:00:09 UTC
            lambda r: BASE + timedelta(seconds=3) <= r["created_at"] < BASE + timedelta(seconds=9),
        ),
        (
            {"updated_after": (BASE + timedelta(minutes=3)).isoformat()},
            lambda r: r["updated_at"] >= BASE + timedelta(minutes=3),
        ),
        ({"q": "同名"}, q("同名")),
        ({"q": "阿里"}, q("阿里")),
        ({"q": "BETA"}, q("beta")),
        ({"q": "shop1.example"}, q("shop1.example")),
        ({"q": "5555 001"}, q("5555 001")),
        ({"q": "100%"}, q("100%")),  # LIKE wildcards are literal
        ({"q": "%"}, q("%")),
        ({"q": "_"}, q("_")),
        ({"q": "e_x"}, q("e_x")),
        ({"q": "小明"}, lambda r: r["id"] == with_contact["id"]),
        (
            {"q": "beta", "grade": "B", "region": "华东"},
            lambda r: q("beta")(r) and r["grade"] == "B" and r["region"] == "华东",
        ),
        ({"q": "nothing matches this"}, lambda r: False),
    ]
    for params, pred in cases:
        want = _expect(data, pred)
        rows, pages = await walk(client, {**params, "include_total": "true"}, limit=20)
        assert sorted(ids(rows)) == want, params
        assert all(p["total"] == len(want) for p in pages), (params, pages[0]["total"])


async def test_soft_deleted_never_listed_counted_or_found(client, engine, data):
    deleted_ids = {str(r["id"]) for r in data["deleted"]}
    live_total = (await client.get("/v1/customers", params={"include_total": True})).json()
    assert live_total["total"] == LIVE
    rows, _ = await walk(client, {"sort": "name"}, limit=50)
    assert not deleted_ids & set(ids(rows))
    for term in NAMES:
        page = (
            await client.get(
                "/v1/customers", params={"q": term, "include_total": True, "limit": 200}
            )
        ).json()
        assert not deleted_ids & set(ids(page["data"])), term
        assert (
            page["total"]
            == len(page["data"])
            == sum(1 for r in data["live"] if term.lower() in r["name"].lower())
        )
    for row in data["deleted"]:
        problem(await client.get(f"/v1/customers/{row['id']}"), 404, "customer_not_found")
    # the trash lists exactly the deleted ones, with the same sorts, filters and cursors
    trash, pages = await walk(client, {"deleted": True, "include_total": True}, limit=4)
    assert sorted(ids(trash)) == sorted(deleted_ids)
    assert pages[0]["total"] == DELETED
    assert ids(trash) == await _db_order(engine, "created_at DESC, id DESC", deleted=True)
    trash_a, _ = await walk(client, {"deleted": True, "grade": "A"}, limit=4)
    assert sorted(ids(trash_a)) == sorted(
        str(r["id"]) for r in data["deleted"] if r["grade"] == "A"
    )
    # deleting moves a customer from the list to the trash; restoring moves it back
    victim = data["live"][0]
    assert (await client.delete(f"/v1/customers/{victim['id']}")).status_code == 204
    page = (await client.get("/v1/customers", params={"include_total": True})).json()
    assert page["total"] == LIVE - 1
    trash_page = (
        await client.get("/v1/customers", params={"deleted": True, "include_total": True})
    ).json()
    assert trash_page["total"] == DELETED + 1
    assert str(victim["id"]) in ids(trash_page["data"])
    assert (await client.post(f"/v1/customers/{victim['id']}/restore")).status_code == 200
    page = (await client.get("/v1/customers", params={"include_total": True})).json()
    assert page["total"] == LIVE


async def test_a_cursor_is_bound_to_its_sort(client, data):
    page = (await client.get("/v1/customers", params={"sort": "name", "limit": 5})).json()
    problem(
        await client.get("/v1/customers", params={"sort": "-name", "cursor": page["next_cursor"]}),
        400,
        "invalid_cursor",
    )
    problem(
        await client.get("/v1/customers", params={"cursor": page["next_cursor"]}),
        400,
        "invalid_cursor",
    )
    # the same sort spelled with a '+' or spaces is the same sort
    ok = await client.get(
        "/v1/customers", params={"sort": " +name", "cursor": page["next_cursor"], "limit": 5}
    )
    assert ok.status_code == 200, ok.text
