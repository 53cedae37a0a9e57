"""The read path's statement cache (kit/statements.py): a statement is built once per
shape, and never shared between callers whose statements differ.

The cache is keyed on everything a statement is built from (the resource, the caller's
``Access`` by value, the filter values, the page shape); these tests pin that down from
both sides: what must be reused (same shape, other cursor values) and what must not be
(another caller, another scope, another NULL pattern).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from crm_api.authz.types import Access, Principal, PrincipalKind, Scope, ScopeKind
from crm_api.customer.schemas import CustomerListQuery, CustomerSort
from crm_api.kit import resource as kit
from crm_api.kit import statements
from crm_api.kit.pagination import encode_cursor
from crm_api.resources import CONTACTS, CUSTOMERS
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user


def _access(kind: ScopeKind, **principal: Any) -> Access:
    who = Principal(
        kind=PrincipalKind.user,
        id=principal.pop("id", uuid.uuid4()),
        name="someone",
        roles=frozenset({"sales_rep"}),
        **principal,
    )
    return Access(who, "customers", "read", Scope(frozenset({kind})))


def test_a_scoped_statement_is_built_once_per_equal_access() -> None:
    rep = _access(ScopeKind.own)
    same = replace(rep)  # another object, equal by value
    assert same is not rep and same == rep
    assert kit.scoped(CUSTOMERS, same) is kit.scoped(CUSTOMERS, rep)
    # anything the scope depends on gives another statement
    other_rep = _access(ScopeKind.own)
    assert kit.scoped(CUSTOMERS, other_rep) is not kit.scoped(CUSTOMERS, rep)
    assert str(kit.scoped(CUSTOMERS, other_rep)) == str(kit.scoped(CUSTOMERS, rep))
    wider = replace(rep, scope=Scope(frozenset({ScopeKind.org_subtree})))
    assert kit.scoped(CUSTOMERS, wider) is not kit.scoped(CUSTOMERS, rep)
    moved = replace(rep, principal=replace(rep.principal, org_path="/a/b/"))
    assert kit.scoped(CUSTOMERS, moved) is not kit.scoped(CUSTOMERS, rep)
    assert kit.scoped(CUSTOMERS, rep, deleted=True) is not kit.scoped(CUSTOMERS, rep)
    assert kit.scoped(CONTACTS, rep) is not kit.scoped(CUSTOMERS, rep)


def test_pages_of_one_shape_share_a_statement_and_bind_their_values() -> None:
    access = _access(ScopeKind.all)
    base = kit.scoped(CUSTOMERS, access)
    query = CustomerListQuery(sort="name,-created_at", limit=10)
    first_params = query.page(CustomerSort)

    def page(row: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        cursor = None if row is None else encode_cursor(first_params.sort, row)
        params = CustomerListQuery(sort="name,-created_at", limit=10, cursor=cursor)
        return statements.page(
            CUSTOMERS,
            access,
            base,
            params.page(CustomerSort),
            lambda: kit._with_flag(CUSTOMERS, access, base),
        )

    first, first_values = page(None)
    assert first_values == {"page_limit": 11}
    row_a = {"name": "Alpha", "created_at": datetime.now(UTC), "id": uuid.uuid4()}
    row_b = {"name": "Beta", "created_at": datetime.now(UTC), "id": uuid.uuid4()}
    after_a, values_a = page(row_a)
    after_b, values_b = page(row_b)
    assert after_a is after_b  # one statement for every page after a cursor
    assert after_a is not first
    assert values_a["page_after_0"] == "Alpha" and values_b["page_after_0"] == "Beta"
    assert values_b["page_after_2"] == row_b["id"]
    # no literal value of a cursor is baked into the statement
    assert "Alpha" not in str(after_a) and "Beta" not in str(after_a)


async def test_callers_sharing_the_cache_never_see_each_others_rows(client, client_for, engine):
    """Two reps (own) and their manager (org_subtree), listing and reading in turns, many
    times over (the second and later requests are served by cached statements)."""
    root = await make_org_unit(engine, "Root", kind="group")
    team_a = await make_org_unit(engine, "A", parent=root)
    team_b = await make_org_unit(engine, "B", parent=root)
    rep_a = await make_user(engine, org_unit=team_a)
    rep_b = await make_user(engine, org_unit=team_b)
    boss_a = await make_user(engine, org_unit=team_a, roles=("sales_manager",))
    mine = {
        "a": {(await create_customer(client, rep_a, name=f"A{i}"))["id"] for i in range(3)},
        "b": {(await create_customer(client, rep_b, name=f"B{i}"))["id"] for i in range(2)},
    }
    callers = {
        "a": await client_for(rep_a),
        "b": await client_for(rep_b),
        "boss": await client_for(boss_a),
    }
    expected = {"a": mine["a"], "b": mine["b"], "boss": mine["a"]}
    for _ in range(3):
        for who, http in callers.items():
            for params in ({}, {"sort": "name", "limit": 2}):
                seen: set[str] = set()
                cursor = None
                while True:
                    query = {**params, "cursor": cursor} if cursor else params
                    page = (await http.get("/v1/customers", params=query)).json()
                    seen |= {r["id"] for r in page["data"]}
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
                assert seen == expected[who], (who, params)
            for other in mine["b"] if who != "b" else mine["a"]:
                response = await http.get(f"/v1/customers/{other}")
                assert response.status_code == 404, (who, response.text)
            for own in expected[who]:
                assert (await http.get(f"/v1/customers/{own}")).status_code == 200


async def test_a_changed_scope_is_a_new_statement(client, client_for, engine):
    """A rep promoted to manager sees the team's records at once: the new grant makes a
    new Access, hence a new cache key."""
    unit = await make_org_unit(engine, "Team")
    rep = await make_user(engine, org_unit=unit)
    peer = await make_user(engine, org_unit=unit)
    own = await create_customer(client, rep, name="Own")
    theirs = await create_customer(client, peer, name="Theirs")
    as_rep = await client_for(rep)
    listed = (await as_rep.get("/v1/customers")).json()["data"]
    assert {r["id"] for r in listed} == {own["id"]}
    assert (await as_rep.get(f"/v1/customers/{theirs['id']}")).status_code == 404
    granted = await client.patch(f"/v1/users/{rep['id']}", json={"roles": ["sales_manager"]})
    assert granted.status_code == 200, granted.text
    as_manager = await client_for(rep)
    listed = (await as_manager.get("/v1/customers")).json()["data"]
    assert {r["id"] for r in listed} == {own["id"], theirs["id"]}
    assert (await as_manager.get(f"/v1/customers/{theirs['id']}")).status_code == 200


# --- q: search statements (kit/search.py) --------------------------------------------------
class _Recorder:
    """A reader over the engine that keeps every statement it runs (index statistics
    loads left out), and runs it with the values given, as the app's readers do."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.statements: list[Any] = []

    async def execute(self, stmt, values=None):
        from crm_api.db.reader import ReadResult

        if "pg_stats" not in _sql(stmt):
            self.statements.append(stmt)
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt, dict(values or {}))
            return ReadResult(tuple(result.keys()), [tuple(r) for r in result.all()])


def _sql(stmt: Any) -> str:
    from sqlalchemy.dialects import postgresql

    return str(stmt.compile(dialect=postgresql.dialect()))


async def _search(engine, access: Access, term: str, **query: Any) -> list[Any]:
    from crm_api.kit import search

    rec = _Recorder(engine)
    params = CustomerListQuery(**query).page(CustomerSort)
    await search.page(
        rec,  # type: ignore[arg-type]
        CUSTOMERS,
        access,
        kit.scoped(CUSTOMERS, access),
        params,
        term,
        relevance="sort" not in query,
    )
    return rec.statements


def _force_strategy(monkeypatch, strategy: str) -> None:
    from crm_api.kit import search

    limit = float("inf") if strategy == "collect" else -1
    for name in ("COLLECT_MAX", "COLLECT_MAX_SCOPED", "COLLECT_MAX_OWN"):
        monkeypatch.setattr(search, name, limit)


async def test_a_search_statement_is_built_once_per_shape_and_binds_the_term(engine, monkeypatch):
    """Two terms of one shape (plain, same strategies) run the very same statement
    objects, and neither term is in their SQL: the term, its patterns and its grams are
    parameters. A cased term (lower()ed by PostgreSQL) is another shape."""
    from crm_api.kit import search

    monkeypatch.setattr(search, "_STATS", {})
    access = _access(ScopeKind.all)
    for strategy in ("collect", "walk"):
        _force_strategy(monkeypatch, strategy)
        for query in ({}, {"sort": "-created_at"}):
            first = await _search(engine, access, "华信", **query)
            misses = statements.SEARCHES.misses
            second = await _search(engine, access, "科技有限", **query)
            assert statements.SEARCHES.misses == misses, (strategy, query)
            assert len(first) == len(second) and first, (strategy, query)
            for a, b in zip(first, second, strict=True):
                assert a is b, (strategy, query)
                sql = _sql(a)
                assert "华信" not in sql and "科技" not in sql, sql
            cased = await _search(engine, access, "Émile", **query)
            assert not any(s is f for s in cased for f in first), (strategy, query)


async def test_no_search_statement_is_shared_across_scopes(engine, monkeypatch):
    """The same term, shape and strategy for callers whose scopes differ (two reps, their
    manager, an administrator, a rep seeing the trash): no statement object is shared."""
    from crm_api.kit import search

    monkeypatch.setattr(search, "_STATS", {})
    rep_a = _access(ScopeKind.own)
    rep_b = _access(ScopeKind.own)
    manager = replace(
        _access(ScopeKind.org_subtree), principal=replace(rep_a.principal, org_path="/a/")
    )
    admin = _access(ScopeKind.all)
    for strategy in ("collect", "walk"):
        _force_strategy(monkeypatch, strategy)
        seen: dict[int, str] = {}
        for who, access in (("a", rep_a), ("b", rep_b), ("m", manager), ("admin", admin)):
            for _ in range(2):
                for stmt in await _search(engine, access, "华信"):
                    assert seen.setdefault(id(stmt), who) == who, (strategy, who)


async def test_no_orders_search_statement_is_shared_across_customers_scopes(engine, monkeypatch):
    """An order matches by its customer's name only inside the caller's customers scope
    (``Referenced``): that scope is inside the statements, so callers with the same orders
    access but different customers accesses (two reps' own, everything, none) share no
    statement object, whichever way the customer-name part runs (collected, walked,
    hashed)."""
    from crm_api.kit import search
    from crm_api.order.schemas import OrderListQuery, OrderSort
    from crm_api.resources import ORDERS

    monkeypatch.setattr(search, "_STATS", {})
    orders = replace(_access(ScopeKind.all), resource="orders")
    rep_a, rep_b = _access(ScopeKind.own), _access(ScopeKind.own)
    customers: dict[str, Access | None] = {
        "a": rep_a,
        "b": rep_b,
        "all": _access(ScopeKind.all),
        "none": None,
    }

    async def run(referenced: Access | None, **query: Any) -> list[Any]:
        rec = _Recorder(engine)
        await search.page(
            rec,  # type: ignore[arg-type]
            ORDERS,
            orders,
            kit.scoped(ORDERS, orders),
            OrderListQuery(**query).page(OrderSort),
            "华信",
            relevance="sort" not in query,
            referenced={CUSTOMERS.name: referenced},
        )
        return rec.statements

    for strategy in ("collect", "walk", "hashed"):
        if strategy == "hashed":
            for name in ("COLLECT_MAX", "COLLECT_MAX_SCOPED", "COLLECT_MAX_OWN"):
                monkeypatch.setattr(search, name, 1e9)
            monkeypatch.setattr(search, "_fanned", lambda s, own: search.IndexStats({}, 1.0, 1e15))
        else:
            _force_strategy(monkeypatch, strategy)
        for query in ({}, {"sort": "-created_at"}):
            seen: dict[int, str] = {}
            for who, referenced in customers.items():
                for _ in range(2):
                    for stmt in await run(referenced, **query):
                        assert seen.setdefault(id(stmt), who) == who, (strategy, query, who)


async def test_searching_callers_never_see_each_others_rows(client, client_for, engine):
    """Two reps and their manager search one term in turns, many times over (from the
    second request on, through cached statements): each gets exactly their own matches."""
    root = await make_org_unit(engine, "Root", kind="group")
    team_a = await make_org_unit(engine, "A", parent=root)
    team_b = await make_org_unit(engine, "B", parent=root)
    rep_a = await make_user(engine, org_unit=team_a)
    rep_b = await make_user(engine, org_unit=team_b)
    boss_a = await make_user(engine, org_unit=team_a, roles=("sales_manager",))
    names = {"a": ["华信甲", "苏州华信", "无关"], "b": ["华信乙", "华信科技"]}
    made = {
        who: {(await create_customer(client, user, name=n))["id"]: n for n in names[who]}
        for who, user in (("a", rep_a), ("b", rep_b))
    }
    matching = {w: {i for i, n in rows.items() if "华信" in n} for w, rows in made.items()}
    callers = {
        "a": await client_for(rep_a),
        "b": await client_for(rep_b),
        "boss": await client_for(boss_a),
    }
    expected = {"a": matching["a"], "b": matching["b"], "boss": matching["a"]}
    for _ in range(3):
        for who, http in callers.items():
            for params in ({"q": "华信"}, {"q": "华信", "sort": "name", "limit": 1}):
                seen: set[str] = set()
                cursor = None
                while True:
                    query = {**params, "cursor": cursor} if cursor else params
                    page = (await http.get("/v1/customers", params=query)).json()
                    seen |= {r["id"] for r in page["data"]}
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
                assert seen == expected[who], (who, params)
