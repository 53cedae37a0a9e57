"""The authorization matrix: role by resource by action by scope, over HTTP.

Every test runs against the same world (:mod:`factories.world`): an org tree, a reporting
line that crosses it, people of every built-in role, custom roles for the scopes no
built-in role uses (``subordinates``, ``org_unit``, ``custom``), two-role people and an API
client, and customers (with contacts and an audit trail) of many owners — so every caller
always has records that must stay invisible.

What a caller *should* reach is declared here (:data:`RIGHTS`) and worked out from the
world's own data — owners, units, the tree's ``parent`` links, the ``manager`` line — never
by asking the application's scope function. The API must then agree exactly: lists,
counts, search, filters and pages hold exactly the expected records; a record outside the
scope is 404 (never 403), an action the role lacks is 403, and a refused write changes
nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conftest import _http_client, count_rows, problem, reset_database, token_for
from factories.world import (
    OWNERS,
    UNITS,
    CustomerRec,
    World,
    build_world,
    drop_snapshot,
    restore,
    snapshot,
)

# --- what each caller may do ------------------------------------------------------------
#: A data scope as a tuple of terms; several terms are their union (a multi-role user).
Scope = tuple[Any, ...]
ALL: Scope = ("all",)
OWN: Scope = ("own",)
SUBORDINATES: Scope = ("subordinates",)
ORG_UNIT: Scope = ("org_unit",)
SUBTREE: Scope = ("org_subtree",)
CUSTOM_A1B_B1A: Scope = (("custom", ("A1b", "B1a")),)


@dataclass(frozen=True)
class ContactRights:
    read: Scope | None
    create: Scope | None
    update: Scope | None
    delete: Scope | None
    sensitive: Scope | None  # where ``mobile`` comes unmasked


@dataclass(frozen=True)
class Rights:
    """A caller's expected rights (``None``: not granted at all → 403)."""

    read: Scope
    create: Scope | None
    update: Scope | None
    delete: Scope | None
    assign: Scope | None
    sensitive: Scope | None  # where bank_account / tax_number come unmasked
    audit: Scope | None  # audit_events:read
    contacts: ContactRights


_NO_CONTACTS = ContactRights(None, None, None, None, None)
_EVERYTHING = Rights(ALL, ALL, ALL, ALL, ALL, ALL, ALL, ContactRights(ALL, ALL, ALL, ALL, ALL))
_MANAGER = Rights(
    SUBTREE,
    SUBTREE,
    SUBTREE,
    SUBTREE,
    SUBTREE,
    SUBTREE,
    SUBTREE,
    ContactRights(SUBTREE, SUBTREE, SUBTREE, SUBTREE, SUBTREE),
)
_REP = Rights(OWN, OWN, OWN, OWN, None, None, OWN, ContactRights(OWN, OWN, OWN, OWN, None))
_STAFF = Rights(OWN, OWN, OWN, None, None, None, None, ContactRights(OWN, OWN, OWN, None, None))


def _reader(scope: Scope, contacts: ContactRights = _NO_CONTACTS) -> Rights:
    return Rights(scope, None, None, None, None, None, None, contacts)


RIGHTS: dict[str, Rights] = {
    "admin": _EVERYTHING,  # admin
    "exec": _EVERYTHING,  # executive
    "mgr": _MANAGER,  # sales_manager
    "rep1": _REP,  # sales_rep
    "rep2": _REP,
    "rep3": _REP,
    "rep4": _REP,
    "staff1": _STAFF,  # staff
    "staff2": _STAFF,
    "partner": _STAFF,  # partner (a person)
    "storefront": _STAFF,  # partner (an API client)
    "agent": _reader(ALL, ContactRights(ALL, ALL, ALL, None, None)),  # service_agent
    "marketer": _reader(ALL, ContactRights(ALL, None, None, None, None)),  # marketer
    "lead": _reader(SUBORDINATES),  # custom team_lead
    "unit_viewer": _reader(ORG_UNIT),  # custom unit_reader
    "auditor": _reader(CUSTOM_A1B_B1A),  # custom region_reader
    # sales_rep + unit_reader: reads its own customers and its team's, but contacts,
    # writes and the audit log only through sales_rep (own)
    "hybrid": Rights(
        OWN + ORG_UNIT, OWN, OWN, OWN, None, None, OWN, ContactRights(OWN, OWN, OWN, OWN, None)
    ),
    # sales_manager + marketer: reads everything, but writes, assigns and sees sensitive
    # fields only in its own subtree
    "mgr_mkt": Rights(
        ALL,
        SUBTREE,
        SUBTREE,
        SUBTREE,
        SUBTREE,
        SUBTREE,
        SUBTREE,
        ContactRights(ALL, SUBTREE, SUBTREE, SUBTREE, SUBTREE),
    ),
}
VIEWERS = list(RIGHTS)
WRITERS = [v for v in VIEWERS if RIGHTS[v].update is not None]
ASSIGNERS = [v for v in VIEWERS if RIGHTS[v].assign is not None]


def covers(
    world: World, who: str, scope: Scope | None, owner: str | None, unit: str | None
) -> bool:
    """Whether ``scope`` held by ``who`` covers a record of ``owner`` in ``unit`` —
    worked out from the world's data (tree and reporting line walked in Python)."""
    me = world.people[who]
    for term in scope or ():
        if term == "all":
            return True
        if term == "own" and owner == who:
            return True
        if term == "subordinates" and owner in {who} | world.reports(who):
            return True
        if term == "org_unit" and unit == me.unit:
            return True
        if term == "org_subtree" and unit in world.subtree(me.unit):
            return True
        if isinstance(term, tuple) and term[0] == "custom" and unit in term[1]:
            return True
    return False


def reaches(world: World, who: str, scope: Scope | None, c: CustomerRec) -> bool:
    return covers(world, who, scope, c.owner, c.unit)


def expected(world: World, who: str, scope: Scope | None, *, deleted: bool = False) -> set[str]:
    """Ids of the customers ``scope`` covers (live ones, or the trash)."""
    return {
        str(c.id)
        for c in world.customers.values()
        if c.deleted == deleted and reaches(world, who, scope, c)
    }


def expected_contacts(world: World, who: str, scope: Scope | None) -> set[str]:
    """Ids of the contacts ``scope`` reaches: those of live customers it covers."""
    return {
        str(k.id)
        for k in world.contacts.values()
        if not world.customers[k.customer].deleted
        and reaches(world, who, scope, world.customers[k.customer])
    }


#: People a record may be handed to, in order of preference (in A1, A2 and B1 subtrees).
HEIRS = ("rep1", "rep3", "rep2", "staff2", "hybrid", "rep4")


def heir(world: World, who: str, scope: Scope | None, *, besides: str = "") -> str:
    """Someone other than ``besides`` inside ``scope`` (else anyone: the scope is None)."""
    return next(
        (
            p
            for p in HEIRS
            if p not in (who, besides) and covers(world, who, scope, p, world.people[p].unit)
        ),
        next(p for p in HEIRS if p not in (who, besides)),
    )


#: One customer of every owner plus those filed away from their owner's unit: what
#: per-record tests go through.
SAMPLE = (*(f"{owner}#1" for owner in OWNERS), "misplaced", "hybrid-away")


def sample(world: World) -> list[CustomerRec]:
    return [world.customers[k] for k in SAMPLE]


def names(world: World, ids: set[str]) -> list[str]:
    """Customer keys, for readable assertion messages."""
    return sorted(c.key for c in world.customers.values() if str(c.id) in ids)


def masked(value: str) -> str:
    return "****" + value[-4:]


# --- the world, built once, restored before a test when the previous one wrote ----------
# These fixtures avoid conftest's ``engine``/``client`` on purpose: requesting them makes the
# autouse reset TRUNCATE every table before each test, which costs far more than putting
# the world's few hundred rows back (:func:`factories.world.restore`).
@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="module")
async def world_once(app, db) -> AsyncIterator[World]:
    await reset_database(db)
    await app.state.policy.load(db)
    opened: list[httpx.AsyncClient] = []

    async def admin_http(person: dict[str, Any]) -> httpx.AsyncClient:
        await app.state.policy.load(db)
        c = _http_client(app, {"Authorization": f"Bearer {token_for(app, person)}"})
        opened.append(c)
        return c

    built = await build_world(db, admin_http)
    for c in opened:
        await c.aclose()
    await snapshot(db)
    yield built
    await drop_snapshot(db)
    await reset_database(db)


_DIRTY = [False]


@pytest.fixture
async def world(world_once: World, app, db) -> World:
    """The world, exactly as built: restored if the previous test wrote to it."""
    if _DIRTY[0]:
        await restore(db)
        await app.state.policy.load(db)
        _DIRTY[0] = False
    return world_once


@pytest.fixture
async def writable(world: World) -> World:
    """The world, for a test that changes it (the next test gets it restored)."""
    _DIRTY[0] = True
    return world


@pytest.fixture
async def as_(world: World, app) -> AsyncIterator[Any]:
    """``await as_("rep1")``: an HTTP client acting as that person (or API client)."""
    opened: list[httpx.AsyncClient] = []

    async def make(who: str) -> httpx.AsyncClient:
        token = token_for(app, world.people[who].row)
        client = _http_client(app, {"Authorization": f"Bearer {token}"})
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.aclose()


def ids_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["data"]]


async def walk(http: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every row of a list, following ``next_cursor`` page by page."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(500):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await http.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["data"]) <= int(params.get("limit", 50))
        rows.extend(body["data"])
        assert body["has_more"] == (body["next_cursor"] is not None)
        if not body["has_more"]:
            return rows
        cursor = body["next_cursor"]
    raise AssertionError("pagination does not end")


async def table(db: AsyncEngine, name: str) -> dict[str, tuple[Any, ...]]:
    """``{id: (version, deleted?, notes, customer_id?)}`` of every row of customers or
    contacts, to prove what a batch of requests changed — and what it did not."""
    extra = ", customer_id" if name == "contacts" else ", NULL"
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text(f"SELECT id, version, deleted_at IS NOT NULL, notes{extra} FROM {name}")
            )
        ).all()
    return {str(r[0]): tuple(r[1:]) for r in rows}


viewers = pytest.mark.parametrize("who", VIEWERS)
writes = pytest.mark.usefixtures("writable")


# --- the world itself is fit for purpose ---------------------------------------------------
async def test_world_leaves_everyone_something_invisible(world):
    """Preconditions the other tests lean on: every caller short of ``all`` has customers
    they see and customers they must not, and the scopes really draw different lines."""
    live = {str(c.id) for c in world.live()}
    for who, rights in RIGHTS.items():
        visible = expected(world, who, rights.read)
        assert visible, who
        if rights.read != ALL:
            assert live - visible, f"{who} would see everything"
    # subordinates follow the reporting line, not the tree: lead reaches company B (rep4)
    # and an indirect report (staff1), but not staff2 sitting in staff1's team
    lead = names(world, expected(world, "lead", SUBORDINATES))
    assert "rep4#0" in lead and "staff1#0" in lead and "staff2#0" not in lead
    # org_subtree takes the units below, org_unit does not; owner-based scopes follow the
    # owner, unit-based ones the record's unit (the misplaced record)
    assert "rep1#0" in names(world, expected(world, "mgr", SUBTREE))
    assert "rep1#0" not in names(world, expected(world, "unit_viewer", ORG_UNIT))
    assert "misplaced" in names(world, expected(world, "rep1", OWN))
    assert "misplaced" not in names(world, expected(world, "mgr", SUBTREE))
    assert "misplaced" in names(world, expected(world, "auditor", CUSTOM_A1B_B1A))
    # a multi-role union is more than its widest part
    hybrid = expected(world, "hybrid", OWN + ORG_UNIT)
    assert hybrid - expected(world, "hybrid", ORG_UNIT) and hybrid - expected(world, "hybrid", OWN)
    assert world.people["storefront"].row["kind"] == "service"


# --- customers: reading ---------------------------------------------------------------------
@viewers
async def test_list_is_exactly_the_scope(world, as_, who):
    http = await as_(who)
    response = await http.get("/v1/customers", params={"limit": 200, "include_total": "true"})
    got = ids_of(response)
    want = expected(world, who, RIGHTS[who].read)
    assert len(got) == len(set(got))
    assert set(got) == want, (names(world, set(got) - want), names(world, want - set(got)))
    assert response.json()["total"] == len(want)


@viewers
@pytest.mark.parametrize("sort", ["-created_at", "name"])
async def test_pagination_across_scope_borders(world, as_, who, sort):
    http = await as_(who)
    rows = await walk(http, "/v1/customers", limit=2, sort=sort)
    got = [r["id"] for r in rows]
    assert len(got) == len(set(got)), "a row came twice"
    assert set(got) == expected(world, who, RIGHTS[who].read)


@viewers
@pytest.mark.parametrize("q", ["贸易", "王小明", "acme"])
async def test_search_finds_only_visible_matches(world, as_, who, q):
    """``q`` matches customer names (贸易, acme — case-insensitive) or contact names
    (王小明, never in a customer name), in and out of the caller's scope."""

    def matches(c: CustomerRec) -> bool:
        return q.lower() in c.name.lower() or any(q in n for n in c.contact_names)

    everywhere = {str(c.id) for c in world.live() if matches(c)}
    want = expected(world, who, RIGHTS[who].read) & everywhere
    assert want, "the term must match something visible"
    if RIGHTS[who].read != ALL:
        assert everywhere - want, "the term must match something invisible too"
    http = await as_(who)
    response = await http.get(
        "/v1/customers", params={"q": q, "limit": 200, "include_total": "true"}
    )
    assert set(ids_of(response)) == want
    assert response.json()["total"] == len(want)


@viewers
async def test_filters_never_reach_past_the_scope(world, as_, who):
    """owner_id / org_unit_id filters naming invisible owners and units give nothing;
    mixed with visible ones, only the visible records; stage and tag filters narrow
    within the scope."""
    http = await as_(who)
    visible = expected(world, who, RIGHTS[who].read)
    live = world.live()

    def of(owners: frozenset[str] = frozenset(), units: frozenset[str] = frozenset()) -> set[str]:
        return {str(c.id) for c in live if c.owner in owners or c.unit in units} & visible

    async def listed(**params: Any) -> set[str]:
        response = await http.get("/v1/customers", params={**params, "limit": 200})
        return set(ids_of(response))

    if RIGHTS[who].read != ALL:
        hidden_owners = sorted(o for o in OWNERS if not of(owners=frozenset({o})))
        hidden_units = sorted(u for u in UNITS if not of(units=frozenset({u})))
        assert hidden_owners and hidden_units
        assert await listed(owner_id=[str(world.people[o].id) for o in hidden_owners]) == set()
        assert await listed(org_unit_id=[str(world.units[u].id) for u in hidden_units]) == set()
    for owner in ("rep1", "rep4"):
        got = await listed(owner_id=[str(world.people[owner].id)])
        assert got == of(owners=frozenset({owner})), owner
    units = ("A1", "A1b", "B1a")
    got = await listed(org_unit_id=[str(world.units[u].id) for u in units])
    assert got == of(units=frozenset(units))
    want = {
        str(c.id) for c in live if c.stage in ("customer", "lead") and "vip" in c.tags
    } & visible
    assert await listed(lifecycle_stage=["customer", "lead"], tag=["vip"]) == want


@viewers
async def test_get_one_visible_200_invisible_404(world, as_, who):
    http = await as_(who)
    visible = expected(world, who, RIGHTS[who].read)
    records = [*sample(world), world.customers["deleted"]]
    assert any(str(c.id) in visible for c in records)
    assert RIGHTS[who].read == ALL or any(str(c.id) not in visible for c in records)
    for c in records:
        response = await http.get(f"/v1/customers/{c.id}")
        if str(c.id) in visible:
            assert response.status_code == 200, (c.key, response.text)
            assert response.json()["id"] == str(c.id)
        else:  # out of scope and deleted alike: not found, never "forbidden"
            problem(response, 404, "customer_not_found")


@viewers
async def test_trash_is_scoped_too(world, as_, who):
    http = await as_(who)
    got = ids_of(await http.get("/v1/customers", params={"deleted": "true"}))
    assert set(got) == expected(world, who, RIGHTS[who].read, deleted=True)


@viewers
async def test_sensitive_fields_unmasked_only_within_read_sensitive(world, as_, who):
    http = await as_(who)
    rights = RIGHTS[who]
    rows = (await http.get("/v1/customers", params={"limit": 200})).json()["data"]
    by_id = {str(c.id): c for c in world.customers.values()}
    clear = [r for r in rows if reaches(world, who, rights.sensitive, by_id[r["id"]])]
    if rights.sensitive is None:
        assert not clear
    elif rights.sensitive == rights.read:
        assert len(clear) == len(rows)
    else:  # the caller reads more than it may see unmasked: both kinds are on the list
        assert clear and len(clear) < len(rows)
    one = [(await http.get(f"/v1/customers/{r['id']}")).json() for r in (rows[0], rows[-1])]
    for row in rows + one:
        c = by_id[row["id"]]
        unmasked = reaches(world, who, rights.sensitive, c)
        for field in ("bank_account", "tax_number"):
            original = getattr(c, field)
            assert row[field] == (original if unmasked else masked(original)), (c.key, field)


# --- customers: writing ---------------------------------------------------------------------
@viewers
@writes
async def test_update_reaches_exactly_the_update_scope(world, as_, db, who):
    """PATCH a customer of every owner: 200 inside the update scope, 404 outside it (even
    where the caller may read), 403 when the role may not update; nothing else changes."""
    http = await as_(who)
    rights = RIGHTS[who]
    allowed = {str(c.id) for c in sample(world) if reaches(world, who, rights.update, c)}
    if rights.update is not None:  # the sample holds records on both sides of the line
        assert allowed and (rights.update == ALL or len(allowed) < len(SAMPLE))
    before = await table(db, "customers")
    events = await count_rows(db, "audit_events")
    for c in sample(world):
        response = await http.patch(f"/v1/customers/{c.id}", json={"notes": f"by {who}"})
        if rights.update is None:
            problem(response, 403, "permission_denied")
        elif str(c.id) in allowed:
            assert response.status_code == 200, (c.key, response.text)
        else:
            problem(response, 404, "customer_not_found")
    after = await table(db, "customers")
    changed = {i for i in after if after[i] != before[i]}
    assert changed == allowed, names(world, changed ^ allowed)
    assert all(after[i][:3] == (before[i][0] + 1, False, f"by {who}") for i in changed)
    assert await count_rows(db, "audit_events") == events + len(allowed)


@viewers
@writes
async def test_delete_reaches_exactly_the_delete_scope(world, as_, db, who):
    http = await as_(who)
    rights = RIGHTS[who]
    allowed = {str(c.id) for c in sample(world) if reaches(world, who, rights.delete, c)}
    if rights.delete is not None:
        assert allowed and (rights.delete == ALL or len(allowed) < len(SAMPLE))
    before = await table(db, "customers")
    for c in sample(world):
        response = await http.delete(f"/v1/customers/{c.id}")
        if rights.delete is None:
            problem(response, 403, "permission_denied")
        elif str(c.id) in allowed:
            assert response.status_code == 204, (c.key, response.text)
        else:
            problem(response, 404, "customer_not_found")
    after = await table(db, "customers")
    changed = {i for i in after if after[i] != before[i]}
    assert changed == allowed, names(world, changed ^ allowed)
    assert all(after[i][1] for i in changed)


@viewers
@writes
async def test_restore_needs_the_deleted_record_in_scope(world, as_, db, who):
    http = await as_(who)
    rights = RIGHTS[who]
    deleted = world.customers["deleted"]
    response = await http.post(f"/v1/customers/{deleted.id}/restore")
    if rights.delete is None:
        problem(response, 403, "permission_denied")
    elif reaches(world, who, rights.delete, deleted):
        assert response.status_code == 200, response.text
    else:
        problem(response, 404, "customer_not_found")
    gone = await count_rows(db, "customers", f"id = '{deleted.id}' AND deleted_at IS NOT NULL")
    assert gone == (0 if response.status_code == 200 else 1)


@viewers
@writes
async def test_create_and_assign(world, as_, db, who):
    """Creating for oneself needs ``create``; for someone else, or into a chosen unit, also
    ``assign`` (403 assign_not_allowed without it). A refused create leaves no row."""
    http = await as_(who)
    rights = RIGHTS[who]
    me = world.people[who]
    before = await count_rows(db, "customers")

    mine = await http.post("/v1/customers", json={"name": f"{who} 新客户"})
    if rights.create is None:
        problem(mine, 403, "permission_denied")
    else:
        assert mine.status_code == 201, mine.text
        assert mine.json()["owner_id"] == str(me.id)
        assert mine.json()["org_unit_id"] == str(world.units[me.unit].id)
        listed = ids_of(await http.get("/v1/customers", params={"limit": 200}))
        assert mine.json()["id"] in listed

    # another owner inside the caller's assign scope where it has one: only assign decides
    other = heir(world, who, rights.assign)
    for body in (
        {"name": "给别人的客户", "owner_id": str(world.people[other].id)},
        {"name": "指定部门", "org_unit_id": str(world.units[me.unit].id)},
    ):
        response = await http.post("/v1/customers", json=body)
        if rights.create is None:
            problem(response, 403, "permission_denied")
        elif rights.assign is None:
            problem(response, 403, "assign_not_allowed")
        else:
            assert response.status_code == 201, response.text
    made = (rights.create is not None) + 2 * (rights.assign is not None)
    assert await count_rows(db, "customers") == before + made


@pytest.mark.parametrize("who", WRITERS)
@writes
async def test_reassigning_needs_assign(world, as_, db, who):
    rights = RIGHTS[who]
    http = await as_(who)
    target = next(c for c in sample(world) if reaches(world, who, rights.update, c))
    new_owner = heir(world, who, rights.assign, besides=target.owner)
    before = await table(db, "customers")
    response = await http.patch(
        f"/v1/customers/{target.id}", json={"owner_id": str(world.people[new_owner].id)}
    )
    moved = await count_rows(
        db, "customers", f"id = '{target.id}' AND owner_id = '{world.people[new_owner].id}'"
    )
    if rights.assign is not None:
        assert response.status_code == 200, response.text
        assert moved == 1
    else:
        problem(response, 403, "assign_not_allowed")
        assert moved == 0 and await table(db, "customers") == before


@pytest.mark.parametrize("who", ASSIGNERS)
@writes
async def test_assign_stays_inside_the_assign_scope(world, as_, db, who):
    """With ``assign``, a record may be given only to where the assigner could reach it:
    an owner (with their unit) or a unit outside the assign scope is a 422, and nothing
    is written."""
    rights = RIGHTS[who]
    http = await as_(who)
    before = await count_rows(db, "customers")
    made = 0
    for p in ("rep1", "rep3", "rep4", "storefront", "exec"):
        response = await http.post(
            "/v1/customers", json={"name": f"for {p}", "owner_id": str(world.people[p].id)}
        )
        if covers(world, who, rights.assign, p, world.people[p].unit):
            assert response.status_code == 201, (p, response.text)
            made += 1
        else:
            problem(response, 422, "invalid_owner")
    for unit in ("A1b", "A2a", "B1a"):
        response = await http.post(
            "/v1/customers", json={"name": f"in {unit}", "org_unit_id": str(world.units[unit].id)}
        )
        if covers(world, who, rights.assign, who, unit):
            assert response.status_code == 201, (unit, response.text)
            made += 1
        else:
            problem(response, 422, "invalid_org_unit")
    assert await count_rows(db, "customers") == before + made

    target = next(c for c in sample(world) if reaches(world, who, rights.update, c))
    for p in ("rep4", "rep3", "rep1"):
        state = await table(db, "customers")
        response = await http.patch(
            f"/v1/customers/{target.id}", json={"owner_id": str(world.people[p].id)}
        )
        if covers(world, who, rights.assign, p, world.people[p].unit):
            assert response.status_code == 200, (p, response.text)
        else:
            problem(response, 422, "invalid_owner")
            assert await table(db, "customers") == state


@viewers
@writes
async def test_transfer_one_needs_assign_over_the_record(world, as_, db, who):
    rights = RIGHTS[who]
    http = await as_(who)
    to = heir(world, who, rights.assign)
    records = sample(world) if rights.assign is not None else sample(world)[:1]
    before = await table(db, "customers")
    moved = set()
    for c in records:
        response = await http.post(
            f"/v1/customers/{c.id}/transfer", json={"to_user_id": str(world.people[to].id)}
        )
        if rights.assign is None:
            problem(response, 403, "permission_denied")
        elif reaches(world, who, rights.assign, c):
            assert response.status_code == 200, (c.key, response.text)
            moved.add(str(c.id))
        else:
            problem(response, 404, "customer_not_found")
    after = await table(db, "customers")
    changed = {i for i in after if after[i] != before[i]}
    assert changed == {str(c.id) for c in records if str(c.id) in moved and c.owner != to}


@pytest.mark.parametrize("who", [v for v in VIEWERS if RIGHTS[v].create is not None])
@writes
async def test_duplicate_names_the_existing_record_only_if_visible(world, as_, who):
    """A duplicate tax number is a 409 whoever holds it; ``existing_id`` never names a
    customer the caller cannot read, nor one whose tax number it sees masked (that would
    confirm a guessed masked value). (It is checked against the *create* scope, so a
    caller reading more widely — hybrid, mgr_mkt — is not told about records it can read
    but not create in: stricter than needed, not a leak; either answer is accepted there.)"""
    http = await as_(who)
    rights = RIGHTS[who]
    for c in sample(world):
        response = await http.post(
            "/v1/customers", json={"name": "重复", "tax_number": c.tax_number}
        )
        named = problem(response, 409, "customer_duplicate").get("existing_id")
        if not reaches(world, who, rights.read, c) or not reaches(world, who, rights.sensitive, c):
            assert named is None, c.key
        elif reaches(world, who, rights.create, c):
            assert named == str(c.id), c.key
        else:
            assert named in (None, str(c.id)), c.key


@writes
async def test_idempotency_keys_are_per_caller(world, as_):
    """Another caller reusing a key and body gets its own record, not a replay of the
    first caller's (which would leak it)."""
    body, key = {"name": "幂等客户"}, {"Idempotency-Key": "matrix-shared-key"}
    rep1, rep2 = await as_("rep1"), await as_("rep2")
    first = await rep1.post("/v1/customers", json=body, headers=key)
    again = await rep1.post("/v1/customers", json=body, headers=key)
    other = await rep2.post("/v1/customers", json=body, headers=key)
    assert first.status_code == again.status_code == other.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert other.json()["id"] != first.json()["id"]
    assert other.json()["owner_id"] == str(world.people["rep2"].id)
    problem(await rep2.get(f"/v1/customers/{first.json()['id']}"), 404, "customer_not_found")


# --- contacts: visible exactly when their customer is (under the contacts grant) -----------
@viewers
async def test_contacts_list_is_exactly_the_scope(world, as_, who):
    http = await as_(who)
    rights = RIGHTS[who].contacts
    if rights.read is None:
        problem(await http.get("/v1/contacts"), 403, "permission_denied")
        return
    want = expected_contacts(world, who, rights.read)
    assert want and (rights.read == ALL or len(want) < len(world.contacts))
    response = await http.get("/v1/contacts", params={"limit": 200, "include_total": "true"})
    assert set(ids_of(response)) == want
    assert response.json()["total"] == len(want)
    got = [r["id"] for r in await walk(http, "/v1/contacts", limit=3, sort="name")]
    assert len(got) == len(set(got)) and set(got) == want
    # search over visible and invisible namesakes
    namesakes = {str(k.id) for k in world.contacts.values() if k.name == "王小明"}
    got = ids_of(await http.get("/v1/contacts", params={"q": "王小明", "limit": 200}))
    assert set(got) == namesakes & want


@viewers
async def test_contact_mobile_unmasked_only_within_read_sensitive(world, as_, who):
    rights = RIGHTS[who].contacts
    if rights.read is None:
        return
    http = await as_(who)
    rows = (await http.get("/v1/contacts", params={"limit": 200})).json()["data"]
    assert rows
    by_id = {str(i): k for i, k in world.contacts.items()}
    inside = [
        r
        for r in rows
        if reaches(world, who, rights.sensitive, world.customers[by_id[r["id"]].customer])
    ]
    for row in rows:  # never shown outside the read_sensitive scope
        if row not in inside:
            assert row["mobile"] == masked(by_id[row["id"]].mobile), row["id"]
    if rights.sensitive not in (None, rights.read):
        # reading beyond read_sensitive: some mobiles shown, the others masked, per row
        assert inside and len(inside) < len(rows)
    for row in inside:
        assert row["mobile"] == by_id[row["id"]].mobile, row["id"]


@viewers
async def test_contacts_of_one_customer_and_one_contact(world, as_, who):
    """``/customers/{id}/contacts`` and ``/contacts/{id}``: 200 for a customer in the
    contacts scope, 404 outside it (even where the customer itself is readable), 403
    without the grant."""
    http = await as_(who)
    rights = RIGHTS[who].contacts
    for c in [*sample(world), world.customers["deleted"]]:
        listed = await http.get(f"/v1/customers/{c.id}/contacts")
        one = await http.get(f"/v1/contacts/{c.contacts[0]}")
        if rights.read is None:
            problem(listed, 403, "permission_denied")
            problem(one, 403, "permission_denied")
        elif not c.deleted and reaches(world, who, rights.read, c):
            assert {r["id"] for r in listed.json()["data"]} == {str(i) for i in c.contacts}
            assert one.status_code == 200 and one.json()["customer_id"] == str(c.id)
        else:
            problem(listed, 404, "customer_not_found")
            problem(one, 404, "contact_not_found")


@viewers
@writes
async def test_contact_writes_reach_exactly_their_scopes(world, as_, db, who):
    """PATCH each sample contact, add one to each sample customer, then DELETE each
    sample contact: 2xx inside the action's scope, 404 outside, 403 without the grant;
    the rows prove nothing else moved."""
    http = await as_(who)
    rights = RIGHTS[who].contacts
    customers = sample(world)

    def allowed(scope: Scope | None) -> set[str]:
        return {str(c.id) for c in customers if reaches(world, who, scope, c)}

    before = await table(db, "contacts")
    for c in customers:
        response = await http.patch(f"/v1/contacts/{c.contacts[0]}", json={"notes": "改"})
        if rights.update is None:
            problem(response, 403, "permission_denied")
        elif str(c.id) in allowed(rights.update):
            assert response.status_code == 200, (c.key, response.text)
        else:
            problem(response, 404, "contact_not_found")
    after = await table(db, "contacts")
    changed = {after[i][3] for i in after if after[i] != before[i]}
    assert {str(i) for i in changed} == allowed(rights.update)

    for c in customers:
        response = await http.post(f"/v1/customers/{c.id}/contacts", json={"name": "新联系人"})
        if rights.create is None:
            problem(response, 403, "permission_denied")
        elif str(c.id) in allowed(rights.create):
            assert response.status_code == 201, (c.key, response.text)
        else:
            problem(response, 404, "customer_not_found")
    new = {str(v[3]) for i, v in (await table(db, "contacts")).items() if i not in before}
    assert new == allowed(rights.create)

    before = await table(db, "contacts")
    for c in customers:
        response = await http.delete(f"/v1/contacts/{c.contacts[0]}")
        if rights.delete is None:
            problem(response, 403, "permission_denied")
        elif str(c.id) in allowed(rights.delete):
            assert response.status_code == 204, (c.key, response.text)
        else:
            problem(response, 404, "contact_not_found")
    after = await table(db, "contacts")
    gone = {str(after[i][3]) for i in after if after[i] != before[i] and after[i][1]}
    assert gone == allowed(rights.delete)
    assert all(after[i] == before[i] or after[i][1] for i in after)


# --- the audit trail ---------------------------------------------------------------------------
@viewers
async def test_audit_events_are_scoped_like_their_records(world, as_, who):
    http = await as_(who)
    rights = RIGHTS[who]
    if rights.audit is None:
        problem(await http.get("/v1/audit-events"), 403, "permission_denied")
        problem(await http.get(f"/v1/audit-events/{world.events[0].id}"), 403, "permission_denied")
        return
    want = {str(e.id) for e in world.events if covers(world, who, rights.audit, e.owner, e.unit)}
    assert want
    if rights.audit != ALL:
        assert {str(e.id) for e in world.events} - want
    response = await http.get("/v1/audit-events", params={"limit": 200, "include_total": "true"})
    assert set(ids_of(response)) == want
    assert response.json()["total"] == len(want)
    got = [r["id"] for r in await walk(http, "/v1/audit-events", limit=7)]
    assert len(got) == len(set(got)) and set(got) == want
    # one record's history: its events if the record is in scope, else nothing
    for c in sample(world)[:6]:
        history = ids_of(await http.get("/v1/audit-events", params={"resource_id": str(c.id)}))
        mine = {str(e.id) for e in world.events if e.resource_id == c.id} & want
        assert set(history) == mine, c.key
    for e in world.events[::9]:
        response = await http.get(f"/v1/audit-events/{e.id}")
        if str(e.id) in want:
            assert response.status_code == 200, response.text
        else:
            problem(response, 404)
