"""Org-scoped pages built as a merge of per-unit index walks (kit/scoped_page.py) return
exactly the plain keyset page: every declared sort, both directions, ties, several pages,
filters, for a branch manager (merged), a rep and an administrator (plain), and never a
row outside the scope.

The expectation is computed by PostgreSQL with one plain ORDER BY over the rows the scope
covers (``org_unit_id`` in the manager's subtree, live), so the collation of names is the
database's, as in the app.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_api.authz.scope import UnitSet
from crm_api.kit import scoped_page
from crm_api.models.customer import Customer
from crm_api.resources import CUSTOMERS
from factories.identity import make_org_unit, make_user
from factories.orders import line, make_product

BASE = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
NAMES = ["同名公司", "Beta", "beta", "阿里巴巴", "Zeta", "Acme"]
STAGES = ["lead", "prospect", "customer", "churned"]

#: (sort, the same order in SQL)
SORTS = [
    ("-created_at", "created_at DESC, id DESC"),
    ("created_at", "created_at ASC, id ASC"),
    ("-updated_at", "updated_at DESC, id DESC"),
    ("updated_at", "updated_at ASC, id ASC"),
    ("name", "name ASC, id ASC"),
    ("-name", "name DESC, id DESC"),
    ("name,-created_at", "name ASC, created_at DESC, id DESC"),
    ("-name,created_at", "name DESC, created_at ASC, id ASC"),
]


@pytest.fixture
async def world(engine: AsyncEngine) -> dict[str, Any]:
    """A group with two branches; branch A has three teams. The manager leads branch A
    (its subtree: 4 units), the rep sells in team A1. Customers everywhere, with ties in
    every sort key, some deleted."""
    group = await make_org_unit(engine, "Group", kind="group")
    branch_a = await make_org_unit(engine, "Branch A", parent=group, kind="branch")
    branch_b = await make_org_unit(engine, "Branch B", parent=group, kind="branch")
    teams_a = [
        await make_org_unit(engine, f"Team A{i}", parent=branch_a, kind="team") for i in (1, 2, 3)
    ]
    team_b = await make_org_unit(engine, "Team B1", parent=branch_b, kind="team")
    # more units elsewhere, so a branch is a small part of the tree (as in a real one)
    for i in range(8):
        await make_org_unit(engine, f"Office {i}", parent=group, kind="office")
    manager = await make_user(engine, roles=("sales_manager",), org_unit=branch_a)
    rep = await make_user(engine, roles=("sales_rep",), org_unit=teams_a[0], manager=manager)
    other_rep = await make_user(engine, roles=("sales_rep",), org_unit=teams_a[1])
    outsider = await make_user(engine, roles=("sales_rep",), org_unit=team_b)
    placements = [
        (rep, teams_a[0]),
        (other_rep, teams_a[1]),
        (other_rep, teams_a[2]),
        (manager, branch_a),
        (outsider, team_b),
        (outsider, branch_b),
        (outsider, group),
    ]
    rows = []
    for i in range(140):
        # runs of consecutive rows in one unit (skewed, as real data is: one unit can hold
        # a whole page), then rows spread over every unit
        owner, unit = placements[(i // 12 if i < 84 else i) % len(placements)]
        rows.append(
            {
                "id": uuid.uuid4(),
                "name": NAMES[i % len(NAMES)],
                "type": "company",
                "lifecycle_stage": STAGES[i % len(STAGES)],
                "grade": "A" if i % 3 == 0 else None,
                "tags": [],
                "custom_fields": {},
                "owner_id": owner["id"],
                "org_unit_id": unit["id"],
                # ties: five rows share each created_at, eleven each updated_at
                "created_at": BASE + timedelta(seconds=i // 5),
                "updated_at": BASE + timedelta(minutes=i // 11),
                "deleted_at": BASE + timedelta(days=1) if i % 13 == 0 else None,
                "version": 1,
            }
        )
    async with engine.begin() as conn:
        await conn.execute(insert(Customer.__table__), rows)
    subtree = {branch_a["id"], *(t["id"] for t in teams_a)}
    return {
        "manager": manager,
        "rep": rep,
        "rows": rows,
        "subtree": subtree,
        "branch_a": branch_a,
    }


async def _expected(engine: AsyncEngine, order_by: str, where: str, **params: Any) -> list[str]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                f"SELECT id FROM customers WHERE deleted_at IS NULL AND {where} ORDER BY {order_by}"
            ),
            params,
        )
        return [str(i) for i in result.scalars()]


async def _walk(http: httpx.AsyncClient, params: dict[str, Any], limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await http.get("/v1/customers", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= limit
        ids.extend(str(r["id"]) for r in page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return ids
        assert len(page["data"]) == limit
        cursor = page["next_cursor"]
    raise AssertionError("pagination does not terminate")


@pytest.fixture
def merges(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, per page, whether the page builder merged per-unit walks (its decision,
    made per request; the merged statement itself is built once per shape)."""
    seen: list[bool] = []
    real = scoped_page.merges

    def spy(*args: Any, **kwargs: Any) -> Any:
        units = real(*args, **kwargs)
        seen.append(units is not None)
        return units

    monkeypatch.setattr("crm_api.kit.resource.merges", spy)
    return seen


def test_the_rule_merges_a_branch_and_walks_a_company_or_the_tree():
    ids = text("NULL")
    assert scoped_page.worth_merging(UnitSet(ids, 6, 125))  # a branch of 5 teams
    assert scoped_page.worth_merging(UnitSet(ids, 4, 14))  # the manager below
    assert not scoped_page.worth_merging(UnitSet(ids, 31, 125))  # a company
    assert not scoped_page.worth_merging(UnitSet(ids, 125, 125))  # the whole tree
    assert not scoped_page.worth_merging(UnitSet(ids, 1, 125))  # one unit: one index walk


def test_customers_walk_every_sort_per_unit():
    # the indexes migration 0010 adds (and 0001's created_at one) turn the walk on
    assert CUSTOMERS.unit_sorts == {"created_at", "updated_at", "name"}


@pytest.mark.parametrize(("sort", "order_by"), SORTS)
async def test_manager_pages_equal_the_plain_page(
    engine, client_for, world, merges, monkeypatch, sort, order_by
):
    manager = await client_for(world["manager"])
    want = await _expected(
        engine, order_by, "org_unit_id = ANY(:units)", units=list(world["subtree"])
    )
    assert len(want) > 40
    for limit in (1, 7, 200):
        merges.clear()
        got = await _walk(manager, {"sort": sort}, limit)
        assert got == want, (sort, limit)
        assert merges and all(merges), "the manager's pages were not merged"
    # the same walk with the merge switched off: the plain page, the same rows
    monkeypatch.setattr(scoped_page, "worth_merging", lambda units: False)
    merges.clear()
    assert await _walk(manager, {"sort": sort}, 7) == want
    assert merges and not any(merges)


@pytest.mark.parametrize(
    "filters",
    [
        {"lifecycle_stage": "customer"},
        {"lifecycle_stage": ["lead", "churned"], "sort": "name"},
        {"grade": "A", "sort": "-updated_at"},
        {"q": "beta", "sort": "created_at"},
    ],
)
async def test_manager_filtered_pages_equal_the_plain_page(
    engine, client_for, world, merges, monkeypatch, filters
):
    manager = await client_for(world["manager"])
    merged = await _walk(manager, filters, 3)
    assert merges and all(merges)
    monkeypatch.setattr(scoped_page, "worth_merging", lambda units: False)
    assert await _walk(manager, filters, 3) == merged
    assert merged  # every filter matches something in the subtree


async def test_no_row_outside_the_subtree_ever_appears(engine, client_for, world, merges):
    manager = await client_for(world["manager"])
    by_id = {str(r["id"]): r for r in world["rows"]}
    for sort, _ in SORTS:
        for row_id in await _walk(manager, {"sort": sort}, 5):
            row = by_id[row_id]
            assert row["org_unit_id"] in world["subtree"] and row["deleted_at"] is None
    assert all(merges)


async def test_the_trash_is_not_merged_and_still_right(engine, client_for, world, merges):
    manager = await client_for(world["manager"])
    got = await _walk(manager, {"deleted": "true", "sort": "-created_at"}, 2)
    async with engine.connect() as conn:
        want = [
            str(i)
            for i in (
                await conn.execute(
                    text(
                        "SELECT id FROM customers WHERE deleted_at IS NOT NULL"
                        " AND org_unit_id = ANY(:units) ORDER BY created_at DESC, id DESC"
                    ),
                    {"units": list(world["subtree"])},
                )
            ).scalars()
        ]
    assert got == want and want
    assert merges and not any(merges)


@pytest.mark.parametrize(("sort", "order_by"), SORTS[:4])
async def test_rep_and_admin_pages_are_plain_and_right(
    engine, client, client_for, world, merges, sort, order_by
):
    rep = await client_for(world["rep"])
    want = await _expected(engine, order_by, "owner_id = :owner", owner=world["rep"]["id"])
    assert await _walk(rep, {"sort": sort}, 4) == want and want
    want_all = await _expected(engine, order_by, "true")
    assert await _walk(client, {"sort": sort}, 25) == want_all
    assert merges and not any(merges)


async def test_a_tree_change_reaches_the_merge_at_once(engine, client_for, world, merges):
    """A unit added under the manager's branch (after the principal was cached) is in the
    merged pages: the units come from the statement, never from the cache."""
    manager = await client_for(world["manager"])
    await _walk(manager, {}, 50)
    team = await make_org_unit(engine, "Team A4", parent=world["branch_a"], kind="team")
    new_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(Customer.__table__),
            [
                {
                    "id": new_id,
                    "name": "新客户",
                    "type": "company",
                    "lifecycle_stage": "lead",
                    "tags": [],
                    "custom_fields": {},
                    "owner_id": world["manager"]["id"],
                    "org_unit_id": team["id"],
                    "version": 1,
                }
            ],
        )
    merges.clear()
    got = await _walk(manager, {}, 50)
    assert got[0] == str(new_id)
    assert merges and all(merges)


async def test_a_custom_unit_list_is_merged_too(engine, client_for, world, merges, monkeypatch):
    """A ``custom`` grant (an explicit list of units) is "unit ∈ list" as well: merged, the
    same rows as the plain page, nothing from other units."""
    units = sorted(world["subtree"])[:2]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO roles (id, name, description, builtin, version)"
                " VALUES (gen_random_uuid(), 'two_teams', 'two units', false, 1)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO authz_rules (id, ptype, v0, v1, v2, v3, v4, v5) VALUES"
                " (gen_random_uuid(), 'p', 'two_teams', 'customers', 'read', 'custom', :units,"
                " '')"
            ),
            {"units": "|".join(str(u) for u in units)},
        )
    reader = await make_user(engine, roles=("two_teams",), org_unit=world["branch_a"])
    http = await client_for(reader)
    want = await _expected(
        engine, "name DESC, id DESC", "org_unit_id = ANY(:units)", units=list(units)
    )
    assert await _walk(http, {"sort": "-name"}, 4) == want and want
    assert merges and all(merges)
    monkeypatch.setattr(scoped_page, "worth_merging", lambda units: False)
    assert await _walk(http, {"sort": "-name"}, 4) == want


@pytest.mark.parametrize("term", ["beta", "阿里"])
async def test_relevance_ranks_take_the_plain_page_and_a_merge_would_keep_their_rank(
    engine, client_for, world, merges, monkeypatch, term
):
    """A manager's ``q`` in relevance order reads each rank through the plain keyset page
    (kit/search.py asks for it: a per-unit walk read every unit's rows whole for a collected
    rank, and bitmap-scanned them for a walked one), with the same rows as all ranks
    collected in one statement. Were a rank merged, the rank it selects would survive the
    merge (it was dropped: a KeyError, a 500, at 1,000,000 customers)."""
    from crm_api.kit import search

    def force(limit: float) -> None:
        for name in ("COLLECT_MAX", "COLLECT_MAX_SCOPED", "COLLECT_MAX_OWN"):
            monkeypatch.setattr(search, name, limit)

    manager = await client_for(world["manager"])
    force(float("inf"))
    collected = await _walk(manager, {"q": term}, 3)
    assert collected  # the term matches something in the subtree
    force(-1)
    merges.clear()
    assert await _walk(manager, {"q": term}, 3) == collected
    assert merges and not any(merges)
    # the plain-page request ignored: the ranks are merged, and keep their rank
    monkeypatch.setattr(scoped_page, "PLAIN_OPTION", "ignored")
    merges.clear()
    assert await _walk(manager, {"q": term}, 3) == collected
    assert merges and all(merges)


async def test_a_managers_orders_merge_per_unit_walks_with_their_lines(
    engine,
    client,
    client_for,
    world,
    merges,
    monkeypatch,
):
    """Orders, a resource with a derived column (lines), take part in the per-unit walks
    of an org-scoped page (kit/scoped_page.py): the merged pages equal the plain ones,
    lines included."""

    product = await make_product(engine)
    live = [r for r in world["rows"] if r["deleted_at"] is None]
    for i, row in enumerate(live[::3]):
        body = {"customer_id": str(row["id"]), "lines": [line(product, str(1 + i % 4))]}
        assert (await client.post("/v1/orders", json=body)).status_code == 201
    manager = await client_for(world["manager"])

    async def walk(limit: int) -> list[dict]:
        got: list[dict] = []
        cursor = None
        while True:
            query = f"/v1/orders?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = (await manager.get(query)).json()
            got += page["data"]
            if not page["has_more"]:
                return got
            cursor = page["next_cursor"]

    merges.clear()
    merged = await walk(4)
    assert merges and all(merges), "the manager's order pages were not merged"
    assert merged and all(
        o["lines"] and o["org_unit_id"] in {str(u) for u in world["subtree"]} for o in merged
    )
    monkeypatch.setattr(scoped_page, "worth_merging", lambda units: False)
    merges.clear()
    plain = await walk(4)
    assert merges and not any(merges)
    assert merged == plain
    expected = sum(1 for r in live[::3] if r["org_unit_id"] in world["subtree"])
    assert len(plain) == expected
