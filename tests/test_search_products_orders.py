"""``q`` on products and orders through the kit's n-gram index (kit/search.py, migration
0012_sdecl) against a brute-force oracle, as tests/test_search_index.py does for customers
and contacts: on a generated corpus (Chinese, Latin, mixed, punctuation, ``%``/``_``/``\\``)
and every term shape (1 and 2 characters, any case, absent), each caller gets exactly the
rows plain substring matching gives, under every strategy (all collected from the index,
all walked, mixed by the index statistics); relevance order and its cursor pagination lose
and repeat nothing; an explicit ``sort`` wins.

Orders also match by the name of their customer (``Referenced``), and only by a customer
the caller may read: live and inside their customers scope. A rep's own order of a
customer someone else owns is not found by that customer's name (the search would tell
the rep the name of a customer they cannot read), nor is any order by a trashed
customer's name, nor by any customer's name for a caller without customers ``read``."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, text

from crm_api.kit import search
from crm_api.models.customer import Customer
from crm_api.models.order import Order
from crm_api.models.product import Product
from factories.identity import make_org_unit, make_user

CITIES = ["上海", "北京", "苏州", "华信", "深圳"]
WORDS = ["华信", "科技", "有限公司", "贸易", "信息", "东方", "华", "信"]
LATIN = ["Northwind", "Trading", "Café", "ÉCOLE", "Müller", "Acme", "northwind", "Ltd."]
ODD = ["100%", "a_b", "C:\\Temp", "(R&D)", "50% off_deals", "x%y", "___", "华信%"]

TERMS = [
    # 1 and 2 characters, Chinese and Latin, any case
    "华", "信", "a", "A", "é", "É", "%", "_", "\\", "-", "华信", "有限", "ab", "AC", "1%",
    # longer, mixed, punctuation
    "华信科技", "northwind", "NORTHWIND TR", "café", "école", "müller", "c:\\t", "(r&d)",
    "50% off", "x%y", "__", "信%",
    # nothing
    "不存在的词", "zzzz",
]  # fmt: skip
PRODUCT_TERMS = [*TERMS, "hp-lj", "laserjet", "sku-1", "-1", "pro", "打印", "激光打印机"]
ORDER_TERMS = [*TERMS, "so-", "so-00007", "00012", "po_", "shop-1", "ext_", "100%-", "订单"]


def _name(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return "".join(rng.choice(CITIES + WORDS) for _ in range(rng.randint(1, 4)))
    if kind < 0.65:
        return " ".join(rng.choice(LATIN) for _ in range(rng.randint(1, 3)))
    if kind < 0.85:
        return rng.choice(ODD) + rng.choice(["", " ", "华信", " Ltd."]) + rng.choice(WORDS)
    return rng.choice(CITIES) + " " + rng.choice(LATIN)  # mixed scripts


def _rank(name: str, term: str) -> int:
    t, name = term.lower(), name.lower()
    if name == t:
        return 0
    if name.startswith(t):
        return 1
    return 2 if t in name else 3


@dataclass
class Item:
    """A product or an order as the oracle sees it."""

    id: uuid.UUID
    name: str  # the field relevance ranks on: a product's name, an order's number
    others: list[str]
    created_at: datetime
    deleted: bool = False
    owner: uuid.UUID | None = None
    customer: Item | None = None

    def own_match(self, term: str) -> bool:
        t = term.lower()
        return any(t in f.lower() for f in [self.name, *self.others])


def _relevance_order(rows: list[Item], term: str) -> list[str]:
    ordered = sorted(
        rows, key=lambda r: (_rank(r.name, term), -r.created_at.timestamp(), -r.id.int)
    )
    return [str(r.id) for r in ordered]


def _recent_order(rows: list[Item]) -> list[str]:
    return [str(r.id) for r in sorted(rows, key=lambda r: (-r.created_at.timestamp(), -r.id.int))]


async def _all_pages(client, path: str, **params: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(300):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [r["id"] for r in body["data"]]
        cursor = body["next_cursor"]
        if not body["has_more"]:
            assert cursor is None
            assert len(ids) == len(set(ids)), "a row came twice"
            return ids
    raise AssertionError("more than 300 pages")


@pytest.fixture
def fresh_stats(monkeypatch):
    """No index statistics cached from an earlier test (they are per process)."""
    monkeypatch.setattr(search, "_STATS", {})


STRATEGIES = ("collect", "walk", "mixed")


async def _force(monkeypatch, engine, strategy: str) -> None:
    if strategy == "collect":
        limit: float = float("inf")
    elif strategy == "walk":
        limit = -1
    else:
        # real statistics of this corpus; a threshold that splits its grams
        async with engine.connect() as conn:
            for table in ("customers", "products", "orders"):
                await conn.execute(text(f"ANALYZE {table}"))
            await conn.commit()
        limit = 8
    for name in ("COLLECT_MAX", "COLLECT_MAX_SCOPED", "COLLECT_MAX_OWN"):
        monkeypatch.setattr(search, name, limit)


# --- products ----------------------------------------------------------------------------------
async def _products(engine) -> list[Item]:
    rng = random.Random(12)
    now = datetime.now(UTC)
    items: list[Item] = []
    rows: list[dict[str, Any]] = []
    for i in range(160):
        name = _name(rng)
        sku = f"{rng.choice(['HP-LJ', 'a_b', 'X%Y', '华信', 'SKU', 'Pro'])}-{i}"
        brand = rng.choice([None, "HP", "华为", "Müller", "Acme", "100%"])
        series = rng.choice([None, "LaserJet Pro", "信息系列", "ÉCOLE", "a_b", "激光打印机"])
        created = now - timedelta(minutes=rng.randint(0, 40))  # ties: the id breaks them
        item = Item(
            uuid.uuid4(), name, [sku, brand or "", series or ""], created, rng.random() < 0.06
        )
        items.append(item)
        rows.append(
            {
                "id": item.id,
                "sku": sku,
                "name": name,
                "brand": brand,
                "series": series,
                "list_price": Decimal("10.00"),
                "currency": "CNY",
                "created_at": created,
                "updated_at": created,
                "deleted_at": now if item.deleted else None,
            }
        )
    async with engine.begin() as conn:
        await conn.execute(insert(Product), rows)
    return items


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_products_same_as_substring_matching(
    client, client_for, engine, monkeypatch, fresh_stats, strategy
):
    items = await _products(engine)
    await _force(monkeypatch, engine, strategy)
    unit = await make_org_unit(engine)
    rep = await client_for(await make_user(engine, roles=("sales_rep",), org_unit=unit))
    staff = await client_for(await make_user(engine, roles=("staff",), org_unit=unit))
    for who, http in (("admin", client), ("rep", rep)):  # reference data: both read it all
        for term in PRODUCT_TERMS:
            expected = [p for p in items if not p.deleted and p.own_match(term)]
            got = await _all_pages(http, "/v1/products", q=term, limit=9)
            assert got == _relevance_order(expected, term), (who, term)
            got = await _all_pages(http, "/v1/products", q=term, sort="-created_at", limit=50)
            assert got == _recent_order(expected), (who, term)
    for term in ("华", "a", "%", "hp"):  # the trash, by the same rule
        expected = [p for p in items if p.deleted and p.own_match(term)]
        got = await _all_pages(client, "/v1/products", q=term, deleted="true", limit=4)
        assert sorted(got) == sorted(str(p.id) for p in expected), term
    # no products read: 403, whatever the term
    assert (await staff.get("/v1/products", params={"q": "华"})).status_code == 403


async def test_products_relevance_on_the_name(client, engine, fresh_stats):
    """Best first by the product's name; a SKU, brand or series match comes last (rank 3)."""
    base = datetime.now(UTC) - timedelta(hours=1)
    specs = [
        ("打印机", "P-1", None, None, 1),  # exact name (0)
        ("打印机 Pro", "P-2", None, None, 2),  # prefix (1)
        ("激光打印机", "P-3", None, None, 3),  # in the name (2)
        ("墨盒", "A-打印机", None, None, 4),  # SKU only (3)
        ("硒鼓", "P-5", "打印机厂", None, 5),  # brand only (3)
        ("纸张", "P-6", None, None, 6),  # nothing
    ]
    ids = []
    async with engine.begin() as conn:
        for name, sku, brand, series, minutes in specs:
            pid = uuid.uuid4()
            ids.append(str(pid))
            await conn.execute(
                insert(Product).values(
                    id=pid,
                    name=name,
                    sku=sku,
                    brand=brand,
                    series=series,
                    list_price=Decimal("1.00"),
                    currency="CNY",
                    created_at=base + timedelta(minutes=minutes),
                    updated_at=base,
                )
            )
    for limit in (1, 2, 5, 50):
        assert await _all_pages(client, "/v1/products", q="打印机", limit=limit) == [
            ids[0],
            ids[1],
            ids[2],
            ids[4],
            ids[3],
        ], limit
    # an explicit sort wins
    got = await _all_pages(client, "/v1/products", q="打印机", sort="sku", limit=2)
    assert got == [ids[3], ids[0], ids[1], ids[2], ids[4]]


# --- orders ------------------------------------------------------------------------------------
@dataclass
class OrderWorld:
    admin: dict[str, Any]
    manager: dict[str, Any]
    rep: dict[str, Any]
    desk: dict[str, Any]
    customers: list[Item]
    orders: list[Item]
    #: caller → owners whose orders / customers they read
    order_scope: dict[str, set[uuid.UUID] | None]
    customer_scope: dict[str, set[uuid.UUID] | None]


async def _order_world(engine, client) -> OrderWorld:
    rng = random.Random(10)
    root = await make_org_unit(engine, "Group", kind="group")
    branch = await make_org_unit(engine, "Branch", parent=root, kind="branch")
    team_a = await make_org_unit(engine, "Team A", parent=branch)
    team_b = await make_org_unit(engine, "Team B", parent=branch)
    elsewhere = await make_org_unit(engine, "Elsewhere", parent=root, kind="branch")
    admin = await make_user(engine, roles=("admin",), org_unit=root)
    manager = await make_user(engine, roles=("sales_manager",), org_unit=branch)
    rep = await make_user(engine, org_unit=team_a)
    peer = await make_user(engine, org_unit=team_b)
    outsider = await make_user(engine, org_unit=elsewhere)
    # orders read (all), customers nothing: a desk that looks orders up by number
    role = (await client.post("/v1/roles", json={"name": "order_desk"})).json()
    granted = await client.post(
        f"/v1/roles/{role['id']}/grants",
        json={"resource": "orders", "action": "read", "scope": "all"},
    )
    assert granted.status_code == 201, granted.text
    desk = await make_user(engine, roles=("order_desk",), org_unit=root)
    owners = [(rep, team_a), (peer, team_b), (outsider, elsewhere), (manager, branch)]

    now = datetime.now(UTC)
    customers: list[Item] = []
    customer_rows: list[dict[str, Any]] = []
    for _ in range(70):
        owner, unit = rng.choice(owners)
        created = now - timedelta(minutes=rng.randint(0, 60))
        row = Item(uuid.uuid4(), _name(rng), [], created, rng.random() < 0.08, owner["id"])
        customers.append(row)
        customer_rows.append(
            {
                "id": row.id,
                "name": row.name,
                "type": "company",
                # never an order's match (orders match their customer's name only); one
                # e-mail per live customer, as migration 0012_fixes keeps them
                "email": f"{rng.choice(['so', 'po', 'shop'])}{len(customers)}@example.cn",
                "owner_id": owner["id"],
                "org_unit_id": unit["id"],
                "created_at": created,
                "updated_at": created,
                "deleted_at": now if row.deleted else None,
            }
        )
    orders: list[Item] = []
    order_rows: list[dict[str, Any]] = []
    for i in range(260):
        # placed independently of the customer: a rep's order of someone else's customer
        owner, unit = rng.choice(owners)
        customer = rng.choice(customers)
        number = f"{rng.choice(['SO-', '华信-', 'PO_', '100%-', 'so-a_', 'Café'])}{i:05d}"
        ref = rng.choice([None, f"shop-{i}", f"华信订单{i}", f"EXT_{i}%", f"Müller-{i}", "a\\b"])
        if ref == "a\\b":
            ref = f"a\\b{i}"
        created = now - timedelta(minutes=rng.randint(0, 60))
        order = Item(
            uuid.uuid4(),
            number,
            [ref or ""],
            created,
            rng.random() < 0.05,
            owner["id"],
            customer,
        )
        orders.append(order)
        order_rows.append(
            {
                "id": order.id,
                "number": number,
                "customer_id": customer.id,
                "channel": "web",
                "external_ref": ref,
                "created_by": admin["id"],
                "currency": "CNY",
                "subtotal": Decimal("0"),
                "discount": Decimal("0"),
                "tax": Decimal("0"),
                "total": Decimal("0"),
                "owner_id": owner["id"],
                "org_unit_id": unit["id"],
                "created_at": created,
                "updated_at": created,
                "deleted_at": now if order.deleted else None,
            }
        )
    async with engine.begin() as conn:
        await conn.execute(insert(Customer), customer_rows)
        await conn.execute(insert(Order), order_rows)
    everyone = {o["id"] for o, _ in owners}
    branch_owners = {rep["id"], peer["id"], manager["id"]}
    return OrderWorld(
        admin,
        manager,
        rep,
        desk,
        customers,
        orders,
        {"admin": everyone, "manager": branch_owners, "rep": {rep["id"]}, "desk": everyone},
        {"admin": everyone, "manager": branch_owners, "rep": {rep["id"]}, "desk": None},
    )


def _order_matches(world: OrderWorld, who: str, order: Item, term: str) -> bool:
    if order.own_match(term):
        return True
    customer = order.customer
    readable = world.customer_scope[who]
    return (
        customer is not None
        and readable is not None
        and not customer.deleted
        and customer.owner in readable
        and term.lower() in customer.name.lower()
    )


def _expected_orders(world: OrderWorld, who: str, term: str, deleted: bool = False) -> list[Item]:
    scope = world.order_scope[who]
    assert scope is not None
    return [
        o
        for o in world.orders
        if o.owner in scope and o.deleted == deleted and _order_matches(world, who, o, term)
    ]


@pytest.mark.parametrize("strategy", [*STRATEGIES, "hashed"])
async def test_orders_same_as_substring_matching_per_scope(
    client, client_for, engine, monkeypatch, fresh_stats, strategy
):
    world = await _order_world(engine, client)
    if strategy == "hashed":
        # the customer-name part with too many orders to collect, its customers few: the
        # set of customers hashed and checked per order walked; every other part collected
        for name in ("COLLECT_MAX", "COLLECT_MAX_SCOPED", "COLLECT_MAX_OWN"):
            monkeypatch.setattr(search, name, 1e9)
        monkeypatch.setattr(search, "_fanned", lambda s, own: search.IndexStats({}, 1.0, 1e15))
    else:
        await _force(monkeypatch, engine, strategy)
    decided: set[tuple[str, str]] = set()
    decide = search.Plan.decide

    async def recording(self, executor, key, *args, **kwargs):
        got = await decide(self, executor, key, *args, **kwargs)
        decided.add((key, got))
        return got

    monkeypatch.setattr(search.Plan, "decide", recording)
    callers = {
        "admin": await client_for(world.admin),
        "manager": await client_for(world.manager),
        "rep": await client_for(world.rep),
        "desk": await client_for(world.desk),
    }
    # the world has the cases the scope rule is about
    rep_scope = world.customer_scope["rep"] or set()
    assert any(
        o.owner == world.rep["id"] and o.customer.owner not in rep_scope for o in world.orders
    )  # type: ignore[union-attr]
    assert any(o.customer.deleted for o in world.orders if not o.deleted)  # type: ignore[union-attr]
    for who, http in callers.items():
        for term in ORDER_TERMS:
            expected = _expected_orders(world, who, term)
            got = await _all_pages(http, "/v1/orders", q=term, limit=9)
            assert got == _relevance_order(expected, term), (who, term)
            got = await _all_pages(http, "/v1/orders", q=term, sort="-created_at", limit=50)
            assert got == _recent_order(expected), (who, term)
        for term in ("华", "a", "%", "so-"):  # the trash, by the same rule
            expected = _expected_orders(world, who, term, deleted=True)
            got = await _all_pages(http, "/v1/orders", q=term, deleted="true", limit=7)
            assert sorted(got) == sorted(str(o.id) for o in expected), (who, term)
    # the customer-name part ran the way the strategy says
    wanted = {
        "collect": {("referenced0", "collect")},
        "walk": {("referenced0", "walk"), ("referenced0.set", "walk")},
        "hashed": {("referenced0", "walk"), ("referenced0.set", "collect")},
        "mixed": set(),
    }[strategy]
    assert wanted <= decided, decided


async def test_orders_found_by_a_readable_customer_name_only(
    client, client_for, engine, fresh_stats
):
    """The rule on its own: the same order, the same term, three callers."""
    unit = await make_org_unit(engine)
    rep = await make_user(engine, org_unit=unit)
    other = await make_user(engine, org_unit=unit)
    body = {"name": "欧阳明远贸易", "owner_id": str(other["id"])}
    customer = (await client.post("/v1/customers", json=body)).json()
    product = (
        await client.post(
            "/v1/products",
            json={"sku": "T-1", "name": "测试", "list_price": "1.00", "currency": "CNY"},
        )
    ).json()
    order_body = {
        "customer_id": customer["id"],
        "owner_id": str(rep["id"]),
        "channel": "web",
        "lines": [{"product_id": product["id"], "quantity": "1"}],
    }
    made = await client.post("/v1/orders", json=order_body)
    assert made.status_code == 201, made.text
    order_id = made.json()["id"]
    rep_http = await client_for(rep)
    # the rep reads the order (theirs), not its customer (someone else's)
    assert (await rep_http.get(f"/v1/orders/{order_id}")).status_code == 200
    assert (await rep_http.get(f"/v1/customers/{customer['id']}")).status_code == 404
    assert await _all_pages(rep_http, "/v1/orders", q="明远") == []
    assert await _all_pages(client, "/v1/orders", q="明远") == [order_id]
    assert await _all_pages(client, f"/v1/customers/{customer['id']}/orders", q="明远") == [
        order_id
    ]
    # the order's own fields still find it for the rep
    number = made.json()["number"]
    assert await _all_pages(rep_http, "/v1/orders", q=number) == [order_id]
    # handed to the rep, the customer's name finds it; in the trash, nobody's search does
    moved = await client.patch(f"/v1/customers/{customer['id']}", json={"owner_id": str(rep["id"])})
    assert moved.status_code == 200, moved.text
    assert await _all_pages(rep_http, "/v1/orders", q="明远") == [order_id]
    assert await _all_pages(rep_http, "/v1/orders", q="明远", sort="-created_at") == [order_id]
    async with engine.begin() as conn:  # a customer with orders can be trashed, not purged
        await conn.execute(
            text("UPDATE customers SET deleted_at = now() WHERE id = :id"), {"id": customer["id"]}
        )
    assert await _all_pages(client, "/v1/orders", q="明远") == []
    assert await _all_pages(rep_http, "/v1/orders", q="明远") == []


@pytest.mark.parametrize("path", ["/v1/products", "/v1/orders"])
async def test_bad_q_is_a_422_naming_it_like_customers(client, path):
    """Too long, empty: 422 naming ``query.q``, as for customers; a NUL (PostgreSQL text
    cannot hold one) is refused before any route, for every parameter, as a 400
    ``invalid_query`` (the middleware: tests/test_attack_round2.py); other control
    characters are searched for like any character."""
    for q in ("", "x" * 201):
        for where in (path, "/v1/customers"):
            response = await client.get(where, params={"q": q})
            assert response.status_code == 422, (where, q, response.text)
            body = response.json()
            assert body["code"] == "validation_error", body
            assert [e["field"] for e in body["errors"]] == ["query.q"], body
    for where in (path, "/v1/customers"):
        response = await client.get(where, params={"q": "a\x00b"})
        assert response.status_code == 400, (where, response.text)
        assert response.json()["code"] == "invalid_query", response.text
    for q in ("\x01", "a\tb", "\x1f", "x" * 200, "华\x1f信"):
        response = await client.get(path, params={"q": q})
        assert response.status_code == 200, (q, response.text)
        assert response.json()["data"] == []


@pytest.mark.parametrize("strategy", ["walk", "collect"])
async def test_org_scoped_search_through_merged_unit_pages(
    client, client_for, engine, monkeypatch, fresh_stats, strategy
):
    """A manager's search read rank by rank, each rank's page merged from per-unit walks
    (kit/scoped_page.py, what a branch of a large tree gets): the merge re-selects the
    resource's own columns, so the rank each row came with must not depend on the
    statement's extra column (it was a KeyError, a 500, for every walked search of a
    manager whose subtree was small enough to merge)."""
    from crm_api.kit import scoped_page

    monkeypatch.setattr(scoped_page, "worth_merging", lambda units: True)
    await _force(monkeypatch, engine, strategy)
    root = await make_org_unit(engine, "Group", kind="group")
    branch = await make_org_unit(engine, "Branch", parent=root, kind="branch")
    teams = [await make_org_unit(engine, f"Team {i}", parent=branch) for i in range(2)]
    manager = await make_user(engine, roles=("sales_manager",), org_unit=branch)
    reps = [await make_user(engine, org_unit=t) for t in teams]
    base = datetime.now(UTC) - timedelta(hours=1)
    names = ["华信", "华信科技", "苏州华信", "东方", "华信", "深圳华信贸易", "无关"]
    rows = []
    async with engine.begin() as conn:
        for i, name in enumerate(names):
            rep, team = reps[i % 2], teams[i % 2]
            cid = uuid.uuid4()
            created = base + timedelta(minutes=i)
            rows.append(Item(cid, name, [f"c{i}@example.cn"], created))
            await conn.execute(
                insert(Customer).values(
                    id=cid,
                    name=name,
                    type="company",
                    email=f"c{i}@example.cn",
                    owner_id=rep["id"],
                    org_unit_id=team["id"],
                    created_at=created,
                    updated_at=created,
                )
            )
    http = await client_for(manager)
    for term in ("华信", "华", "c1", "example"):
        expected = [r for r in rows if r.own_match(term)]
        for limit in (1, 2, 50):
            got = await _all_pages(http, "/v1/customers", q=term, limit=limit)
            assert got == _relevance_order(expected, term), (term, limit)
