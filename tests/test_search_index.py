"""``q`` through the n-gram index (kit/search.py, migration 0008) against a brute-force
oracle: on a generated corpus (Chinese, Latin, mixed, punctuation, wildcards) and for
every term shape (1 and 2 characters, ``%``/``_``/``\\``, any case, spanning fields,
absent), each caller (admin: all, manager: org_subtree, rep: own) gets exactly the
customers and contacts plain substring matching gives, under every strategy (all
collected from the index, all walked, and mixed by the index statistics); relevance order
and its cursor pagination lose and repeat nothing; an explicit ``sort`` wins."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from crm_api.kit import search
from crm_api.models.contact import Contact
from crm_api.models.customer import Customer
from factories.identity import make_org_unit, make_user

CITIES = ["上海", "北京", "苏州", "华信", "深圳"]
WORDS = ["华信", "科技", "有限公司", "贸易", "信息", "东方", "华", "信"]
LATIN = ["Northwind", "Trading", "Café", "ÉCOLE", "Müller", "Acme", "northwind", "Ltd."]
ODD = ["100%", "a_b", "C:\\Temp", "(R&D)", "50% off_deals", "x%y", "___", "华信%"]
PEOPLE = ["王芳", "欧阳娜娜", "张伟", "Émile Zola", "Li Na", "王", "a"]

TERMS = [
    # 1 and 2 characters, Chinese and Latin, any case
    "华", "信", "王", "a", "A", "é", "É", "%", "_", "\\", "华信", "有限", "ab", "AC", "1%",
    # longer, mixed, punctuation
    "华信科技", "northwind", "NORTHWIND TR", "café", "école", "müller", "c:\\t", "(r&d)",
    "50% off", "x%y", "__", "信%", "欧阳", "zola", "li na", "@mail", "example.cn", "138",
    # a term spanning two fields, or a field and a contact, matches nothing
    "公司 info", "ltd. +86",
    # nothing
    "不存在的词", "zzzz",
]  # fmt: skip


@dataclass
class Row:
    id: uuid.UUID
    name: str
    email: str | None
    phone: str | None
    owner: uuid.UUID
    created_at: datetime
    deleted: bool = False
    contacts: list[tuple[str, bool]] = field(default_factory=list)  # (name, deleted)

    def fields(self) -> list[str]:
        return [self.name, self.email or "", self.phone or ""]

    def matches(self, term: str) -> bool:
        t = term.lower()
        return any(t in f.lower() for f in self.fields()) or any(
            t in name.lower() for name, gone in self.contacts if not gone
        )

    def rank(self, term: str) -> int:
        t, name = term.lower(), self.name.lower()
        if name == t:
            return 0
        if name.startswith(t):
            return 1
        return 2 if t in name else 3


@dataclass
class World:
    admin: dict[str, Any]
    manager: dict[str, Any]
    rep: dict[str, Any]
    customers: list[Row]
    #: contact id → (name, email, phone, customer, deleted)
    contacts: dict[uuid.UUID, tuple[str, str | None, str | None, Row, bool]]
    scopes: dict[str, set[uuid.UUID]]  # caller → owners whose customers they see


def _name(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return "".join(rng.choice(CITIES + WORDS) for _ in range(rng.randint(1, 4)))
    if kind < 0.65:
        return " ".join(rng.choice(LATIN) for _ in range(rng.randint(1, 3)))
    if kind < 0.8:
        return rng.choice(ODD) + rng.choice(["", " ", "华信", " Ltd."]) + rng.choice(WORDS)
    if kind < 0.9:
        return rng.choice(PEOPLE)
    return rng.choice(CITIES) + " " + rng.choice(LATIN)  # mixed scripts


async def _world(engine, client_for) -> World:
    rng = random.Random(9)
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
    owners = [(rep, team_a), (peer, team_b), (outsider, elsewhere), (manager, branch)]

    now = datetime.now(UTC)
    customers: list[Row] = []
    customer_rows: list[dict[str, Any]] = []
    contact_rows: list[dict[str, Any]] = []
    contacts: dict[uuid.UUID, tuple[str, str | None, str | None, Row, bool]] = {}
    for i in range(240):
        owner, unit = rng.choice(owners)
        name = _name(rng)
        email = rng.choice([None, f"info{i}@mail{i % 7}.example.cn", f"Sales{i}@ACME.example"])
        phone = rng.choice([None, f"+86 138 {i:04d} 0{i % 10}", "+33 1 4000 0002"])
        # ties on created_at on purpose: the id breaks them
        created = now - timedelta(minutes=rng.randint(0, 60))
        row = Row(uuid.uuid4(), name, email, phone, owner["id"], created, rng.random() < 0.05)
        customers.append(row)
        customer_rows.append(
            {
                "id": row.id,
                "name": name,
                "type": "company",
                "email": email,
                "phone": phone,
                # customers sharing a phone are the duplicates migration 0012_fixes keeps
                # (phones are unique among live customers since): they do not hold it
                "phone_held": phone != "+33 1 4000 0002",
                "owner_id": owner["id"],
                "org_unit_id": unit["id"],
                "created_at": created,
                "updated_at": created,
                "deleted_at": now if row.deleted else None,
            }
        )
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            cname = rng.choice(PEOPLE + LATIN + ODD) + rng.choice(["", "娜", " Jr"])
            cemail = rng.choice([None, f"c{i}@mail.example.cn"])
            cphone = rng.choice([None, f"+86 21 5555 {i:04d}"])
            gone = rng.random() < 0.1
            cid = uuid.uuid4()
            row.contacts.append((cname, gone))
            contacts[cid] = (cname, cemail, cphone, row, gone)
            contact_rows.append(
                {
                    "id": cid,
                    "customer_id": row.id,
                    "name": cname,
                    "email": cemail,
                    "phone": cphone,
                    "created_at": created - timedelta(seconds=rng.randint(0, 5)),
                    "updated_at": created,
                    "deleted_at": now if gone else None,
                }
            )
    async with engine.begin() as conn:
        await conn.execute(insert(Customer), customer_rows)
        await conn.execute(insert(Contact), contact_rows)
    scopes = {
        "admin": {o["id"] for o, _ in owners},
        "manager": {rep["id"], peer["id"], manager["id"]},
        "rep": {rep["id"]},
    }
    return World(admin, manager, rep, customers, contacts, scopes)


async def _all_pages(client, path: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(200):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        rows += body["data"]
        cursor = body["next_cursor"]
        if not body["has_more"]:
            assert cursor is None
            return rows
    raise AssertionError("more than 200 pages")


def _expected_customers(world: World, who: str, term: str, deleted: bool = False) -> list[Row]:
    return [
        c
        for c in world.customers
        if c.owner in world.scopes[who] and c.deleted == deleted and c.matches(term)
    ]


def _relevance_order(rows: list[Row], term: str) -> list[uuid.UUID]:
    # best rank first, then newest first, then id descending (the keyset's tie-break)
    ordered = sorted(
        rows,
        key=lambda c: (c.rank(term), _desc(c.created_at), _desc_id(c.id)),
    )
    return [c.id for c in ordered]


def _desc(moment: datetime) -> float:
    return -moment.timestamp()


def _desc_id(value: uuid.UUID) -> int:
    return -value.int


@pytest.fixture
def fresh_stats(monkeypatch):
    """No index statistics cached from an earlier test (they are per process)."""
    monkeypatch.setattr(search, "_STATS", {})


STRATEGIES = ("collect", "walk", "mixed", "sampled")


async def _force(monkeypatch, engine, strategy: str) -> None:
    if strategy == "collect":
        monkeypatch.setattr(search, "COLLECT_MAX", float("inf"))
        monkeypatch.setattr(search, "COLLECT_MAX_SCOPED", float("inf"))
        monkeypatch.setattr(search, "COLLECT_MAX_OWN", float("inf"))
    elif strategy == "walk":
        monkeypatch.setattr(search, "COLLECT_MAX", -1)
        monkeypatch.setattr(search, "COLLECT_MAX_SCOPED", -1)
        monkeypatch.setattr(search, "COLLECT_MAX_OWN", -1)
    else:
        # real statistics of this corpus; a threshold that splits its grams; "sampled":
        # a sample small enough to be full, so parts the statistics cannot tell are
        # collected or walked by what the sample finds
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE customers"))
            await conn.execute(text("ANALYZE contacts"))
            await conn.commit()
        monkeypatch.setattr(search, "COLLECT_MAX", 8)
        monkeypatch.setattr(search, "COLLECT_MAX_SCOPED", 8)
        monkeypatch.setattr(search, "COLLECT_MAX_OWN", 8)
        if strategy == "sampled":
            monkeypatch.setattr(search, "SAMPLE", 16)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_same_customers_as_substring_matching_per_scope(
    client_for, engine, monkeypatch, fresh_stats, strategy
):
    world = await _world(engine, client_for)
    await _force(monkeypatch, engine, strategy)
    if strategy in ("mixed", "sampled"):
        stats = await search.index_stats(_Conn(engine), "ix_customers_search_grams")
        assert stats.rows > 0 and stats.freqs, "ANALYZE left no statistics to choose by"
    sampled = _sampled_outcomes(monkeypatch)
    callers = {
        "admin": await client_for(world.admin),
        "manager": await client_for(world.manager),
        "rep": await client_for(world.rep),
    }
    await _check_customers(world, callers)
    if strategy == "sampled":
        # parts the statistics could not tell went both ways by what their sample found
        assert sampled == {"collect", "walk"}, sampled


def _sampled_outcomes(monkeypatch) -> set[str]:
    """The strategies decided by a sample (:meth:`search.Plan.decide`)."""
    outcomes: set[str] = set()
    samples = [0]
    real_sample, real_decide = search.Plan.sample, search.Plan.decide

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        samples[0] += 1
        return real_sample(self, *args, **kwargs)

    async def decide(self, *args: Any, **kwargs: Any) -> Any:
        before = samples[0]
        out = await real_decide(self, *args, **kwargs)
        if samples[0] > before:
            outcomes.add(out)
        return out

    monkeypatch.setattr(search.Plan, "sample", sample)
    monkeypatch.setattr(search.Plan, "decide", decide)
    return outcomes


async def _check_customers(world: World, callers: dict[str, Any]) -> None:
    for who, client in callers.items():
        for term in TERMS:
            expected = _expected_customers(world, who, term)
            got = await _all_pages(client, "/v1/customers", q=term, limit=9)
            assert [r["id"] for r in got] == [str(i) for i in _relevance_order(expected, term)], (
                who,
                term,
            )
            # an explicit sort wins: newest first, the same rows
            got_sorted = await _all_pages(
                client, "/v1/customers", q=term, sort="-created_at", limit=50
            )
            expected_recent = sorted(expected, key=lambda c: (_desc(c.created_at), _desc_id(c.id)))
            assert [r["id"] for r in got_sorted] == [str(c.id) for c in expected_recent], (
                who,
                term,
            )
        # the trash: deleted customers only, by the same rule
        for term in ("华", "a", "%"):
            expected = _expected_customers(world, who, term, deleted=True)
            got = await _all_pages(client, "/v1/customers", q=term, deleted="true", limit=9)
            assert sorted(r["id"] for r in got) == sorted(str(c.id) for c in expected)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_same_contacts_as_substring_matching(
    client_for, engine, monkeypatch, fresh_stats, strategy
):
    world = await _world(engine, client_for)
    await _force(monkeypatch, engine, strategy)
    for who, user in (("admin", world.admin), ("rep", world.rep)):
        client = await client_for(user)
        for term in TERMS:
            t = term.lower()
            expected = [
                (cid, name)
                for cid, (name, email, phone, parent, gone) in world.contacts.items()
                if not gone
                and not parent.deleted
                and parent.owner in world.scopes[who]
                and any(t in f.lower() for f in (name, email or "", phone or ""))
            ]
            got = await _all_pages(client, "/v1/contacts", q=term, limit=13)
            assert sorted(r["id"] for r in got) == sorted(str(c) for c, _ in expected), (
                who,
                term,
            )
            # best first: the name's rank never goes down along the pages
            ranks = [_name_rank(r["name"], t) for r in got]
            assert ranks == sorted(ranks), (who, term)


def _name_rank(name: str, t: str) -> int:
    name = name.lower()
    if name == t:
        return 0
    if name.startswith(t):
        return 1
    return 2 if t in name else 3


async def test_relevance_order_and_cursor(client, client_for, engine, fresh_stats):
    """Exact name, then prefix, then in the name, then only in another field or a
    contact's name; ties newest first; the cursor resumes inside a rank and across ranks;
    a relevance cursor is not accepted for an explicit sort."""
    owner = await make_user(engine, org_unit=await make_org_unit(engine))
    base = datetime.now(UTC) - timedelta(hours=1)
    rows = [
        ("华信", None, 1),  # exact (0)
        ("华信", None, 5),  # exact, newer
        ("华信科技", None, 2),  # prefix (1)
        ("苏州华信", None, 3),  # in the name (2)
        ("东方贸易", "huaxin@华信.example", 4),  # e-mail only (3)
        ("无关公司", None, 6),  # via a contact (3)
        ("HUAXIN 华信 Ltd", None, 0),  # in the name (2), older
    ]
    ids = []
    async with engine.begin() as conn:
        for name, email, minutes in rows:
            cid = uuid.uuid4()
            ids.append(cid)
            await conn.execute(
                insert(Customer).values(
                    id=cid,
                    name=name,
                    type="company",
                    email=email,
                    owner_id=owner["id"],
                    org_unit_id=owner["org_unit_id"],
                    created_at=base + timedelta(minutes=minutes),
                    updated_at=base,
                )
            )
        await conn.execute(
            insert(Contact).values(customer_id=ids[5], name="华信的联系人", created_at=base)
        )
    expected = [ids[1], ids[0], ids[2], ids[3], ids[6], ids[5], ids[4]]
    for limit in (1, 2, 3, 7, 50):
        got = await _all_pages(client, "/v1/customers", q="华信", limit=limit)
        assert [r["id"] for r in got] == [str(i) for i in expected], limit
    first = (await client.get("/v1/customers", params={"q": "华信", "limit": 2})).json()
    assert first["has_more"] and first["next_cursor"]
    other = await client.get(
        "/v1/customers",
        params={"q": "华信", "limit": 2, "sort": "-created_at", "cursor": first["next_cursor"]},
    )
    assert other.status_code == 400 and other.json()["code"] == "invalid_cursor"
    # the tiered reader (frequent terms) gives the same order as the one ranked statement
    for limit in (1, 3, 50):
        search.COLLECT_MAX, saved = -1, search.COLLECT_MAX
        try:
            got = await _all_pages(client, "/v1/customers", q="华信", limit=limit)
        finally:
            search.COLLECT_MAX = saved
        assert [r["id"] for r in got] == [str(i) for i in expected], limit


async def test_malformed_relevance_cursors_are_400(client, engine):
    from crm_api.kit.pagination import SortKey, encode_cursor

    for rank in (-1, 4, "0", True, None, 1.5):
        cursor = encode_cursor(
            (SortKey("_rank", False), SortKey("created_at", True)),
            {"_rank": rank, "created_at": datetime.now(UTC), "id": uuid.uuid4()},
        )
        for strategy_max in (float("inf"), -1):
            search.COLLECT_MAX, saved = strategy_max, search.COLLECT_MAX
            try:
                response = await client.get("/v1/customers", params={"q": "华信", "cursor": cursor})
            finally:
                search.COLLECT_MAX = saved
            assert response.status_code == 400, (rank, strategy_max, response.text)
            assert response.json()["code"] == "invalid_cursor"


async def test_grams_function_matches_the_migration(engine):
    """The index's function as the database has it is the one migration 0008 wrote, and
    the Python mirror of a term's grams (used to estimate) agrees with PostgreSQL's."""
    async with engine.connect() as conn:
        grams = (
            await conn.execute(
                text("SELECT crm_search_grams(:t)"), {"t": "苏州华信\x1fa@b.cn\x1f138"}
            )
        ).scalar_one()
        assert set(grams) == {
            "\x02苏", "\x02苏州", "州", "州华", "华", "华信", "信", "信\x04",
            "\x03a", "\x03a@", "\x03@", "\x03@b", "\x03b", "\x03b.", "\x03.", "\x03.c",
            "\x03c", "\x03cn", "\x03n", "\x031", "\x0313", "\x033", "\x0338", "\x038",
        }  # fmt: skip
        for term in ("华信科技", "a", "Ab", "100%", "É"):
            for kind in ("prefix", "exact", "inner", "other"):
                stmt = search._sql_grams(term, kind)  # type: ignore[arg-type]
                got = (await conn.execute(select(stmt))).scalar_one()
                assert got == search._py_grams(term, kind), (term, kind)  # type: ignore[arg-type]


class _Conn:
    """An executor over the engine for kit functions that only read."""

    def __init__(self, engine) -> None:
        self.engine = engine

    async def execute(self, stmt):
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            rows = result.all()

        class _R:
            def first(self_inner):
                return rows[0] if rows else None

        return _R()


async def test_the_trash_finds_an_exact_name(client, engine, fresh_stats):
    """The n-gram index holds live rows only: the trash is walked, every rank of it
    (the exact name too, which live searches always collect)."""
    owner = await make_user(engine, org_unit=await make_org_unit(engine))
    names = ["华信", "华信科技", "苏州华信", "无关"]
    made = []
    for name in names:
        body = {"name": name, "owner_id": str(owner["id"])}
        response = await client.post("/v1/customers", json=body)
        assert response.status_code == 201, response.text
        made.append(response.json())
    for row in made:
        assert (await client.delete(f"/v1/customers/{row['id']}")).status_code == 204
    got = await _all_pages(client, "/v1/customers", q="华信", deleted="true", limit=2)
    assert [r["name"] for r in got] == ["华信", "华信科技", "苏州华信"]
    assert await _all_pages(client, "/v1/customers", q="华信", limit=2) == []


async def test_scoped_callers_collect_through_their_scope_tokens(client_for, engine, monkeypatch):
    """A manager (a set of org units) and a rep (own rows) collect with ``&& <their scope's
    tokens>`` in the index condition, written as the index has it (migration 0012_sperf);
    an administrator without; every one of them keeps the scope predicate. (That the rows
    are the same is the oracle's job, above.)"""
    from sqlalchemy.dialects import postgresql

    from crm_api.authz.scope import unit_set
    from crm_api.resources import CUSTOMERS

    world = await _world(engine, client_for)
    monkeypatch.setattr(search, "COLLECT_MAX", float("inf"))
    monkeypatch.setattr(search, "COLLECT_MAX_SCOPED", float("inf"))
    monkeypatch.setattr(search, "COLLECT_MAX_OWN", float("inf"))
    seen: dict[str, str] = {}
    for who, user in (("admin", world.admin), ("manager", world.manager), ("rep", world.rep)):
        http = await client_for(user)
        token = http.headers["Authorization"].split()[1]
        access = await _access_of(http, token, user)
        p = await search.plan(_Conn(engine), CUSTOMERS, access, "华信")
        p.decided.update({"own": "collect", "related0": "collect"})
        sql = str(search.match_clause(p).compile(dialect=postgresql.dialect()))
        seen[who] = sql
        if who == "manager":
            assert unit_set(access) is not None
    index = "crm_search_grams(s.search_text) || ARRAY[chr(5) || CAST(s.org_unit_id AS TEXT)"
    assert index in seen["manager"] and index in seen["rep"] and index in seen["admin"]
    assert "&& (SELECT array_agg(chr(5) ||" in seen["manager"]
    assert "&& ARRAY[chr(6) ||" in seen["rep"]
    assert "&&" not in seen["admin"]


async def _access_of(http, token: str, user: dict[str, Any]):
    """The ``Access`` the app resolves for ``user`` reading customers."""
    from crm_api.auth import tokens

    app = http._transport.app
    st = app.state
    claims = tokens.verify(
        st.keyring,
        token,
        issuer=st.settings.jwt_issuer,
        audience=st.settings.jwt_audience,
        token_types=frozenset({"access"}),
    )
    principal = await st.principals.resolve(claims)
    from crm_api.authz.dependencies import access_for

    access = access_for(st.policy, principal, "customers", "read")
    assert access is not None
    return access
