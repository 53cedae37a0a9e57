"""A small company, complete enough to prove every data scope: the authorization matrix's
"world".

Org tree (``kind`` in brackets)::

    G  Group [group]
    ├── CA  华东公司 [company]
    │   ├── A1  Branch A1 [branch]
    │   │   ├── A1a  Team A1a [team]
    │   │   └── A1b  Team A1b [team]
    │   └── A2  Branch A2 [branch]
    │       └── A2a  Team A2a [team]
    └── CB  Company B [company]
        └── B1  Branch B1 [branch]
            └── B1a  Team B1a [team]

People (roles, unit, manager): see :data:`PEOPLE` — one or more of every built-in role,
two people with two roles each (``hybrid``: sales_rep + a custom org_unit role;
``mgr_mkt``: sales_manager + marketer) and an API client (``storefront``, partner). The
reporting line crosses the org tree on purpose (``rep4`` in company B reports to ``lead``
in company A), so ``subordinates``, ``org_unit`` and ``org_subtree`` each draw a
different line.

Custom roles (inserted straight into ``roles``/``authz_rules``, then the policy version is
bumped): ``team_lead`` (customers:read over ``subordinates``), ``unit_reader`` (over
``org_unit``) and ``region_reader`` (``custom``: units A1b and B1a).

Customers: three per owner (Chinese and Latin names, mixed stages and tags, each with a
bank account and a tax number), plus ``misplaced`` (owned by ``rep1`` but filed under
B1a), ``hybrid-away`` (``hybrid``'s, filed under company B, so its own scope is not
contained in its org_unit scope) and ``deleted`` (``rep1``'s, soft-deleted). Every
customer has one contact (with a sensitive mobile number). Everything is written through
the API as the administrator, so the audit trail is the one real writes leave; a few
customers are updated afterwards.

The world is the *ground truth* of the tests: ownership, units, the tree (``parent``) and
the reporting line (``manager``) as plain Python data, from which a test computes what each
caller should see without asking the application.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from factories.identity import make_org_unit, make_user

#: key: (name, kind, parent key)
UNITS: dict[str, tuple[str, str, str | None]] = {
    "G": ("Group", "group", None),
    "CA": ("华东公司", "company", "G"),
    "CB": ("Company B", "company", "G"),
    "A1": ("Branch A1", "branch", "CA"),
    "A2": ("Branch A2", "branch", "CA"),
    "B1": ("Branch B1", "branch", "CB"),
    "A1a": ("Team A1a", "team", "A1"),
    "A1b": ("Team A1b", "team", "A1"),
    "A2a": ("Team A2a", "team", "A2"),
    "B1a": ("Team B1a", "team", "B1"),
}

#: key: (roles, unit key, manager key); managers come before their reports.
PEOPLE: dict[str, tuple[tuple[str, ...], str, str | None]] = {
    "admin": (("admin",), "G", None),
    "exec": (("executive",), "CA", None),
    "marketer": (("marketer",), "G", None),
    "agent": (("service_agent",), "CB", None),
    "auditor": (("region_reader",), "G", None),
    "mgr": (("sales_manager",), "A1", "exec"),
    "unit_viewer": (("unit_reader",), "A1", "exec"),
    "rep1": (("sales_rep",), "A1a", "mgr"),
    "rep2": (("sales_rep",), "A1b", "mgr"),  # sibling team, same manager's subtree
    "lead": (("team_lead",), "A2", "exec"),
    "rep3": (("sales_rep",), "A2a", "lead"),  # a rep in another branch
    "rep4": (("sales_rep",), "B1a", "lead"),  # reports across companies
    "staff1": (("staff",), "A2a", "rep3"),  # lead's indirect report
    "staff2": (("staff",), "A2a", "exec"),  # same team as staff1, not under lead
    "hybrid": (("sales_rep", "unit_reader"), "A2a", "lead"),  # two roles
    "mgr_mkt": (("sales_manager", "marketer"), "A2", "exec"),  # two built-in roles
    "partner": (("partner",), "B1", None),
    "storefront": (("partner",), "B1", None),  # an API client (service account)
}

#: People who are API clients: a ``users`` row of kind ``service`` whose roles are bound to
#: the Casbin subject ``client:<id>`` (what ``POST /v1/api-clients`` makes).
SERVICE_ACCOUNTS = frozenset({"storefront"})

#: Custom roles: name → (scope, unit keys of a ``custom`` scope).
CUSTOM_ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "team_lead": ("subordinates", ()),
    "unit_reader": ("org_unit", ()),
    "region_reader": ("custom", ("A1b", "B1a")),
}

OWNERS = (
    "admin",
    "exec",
    "mgr",
    "rep1",
    "rep2",
    "rep3",
    "rep4",
    "lead",
    "staff1",
    "staff2",
    "hybrid",
    "partner",
    "storefront",
)

#: The i-th customer of every owner: a name pattern ({n}: running number), and tags.
#: Customer 0 always has "贸易" in its name; customer 1's contact is always "王小明".
SHAPES: tuple[tuple[str, list[str]], ...] = (
    ("上海明远贸易有限公司 {n}", ["vip"]),
    ("Acme Logistics {n}", ["华东", "vip"]),
    ("北京华信科技 {n}", []),
)
CONTACT_NAMES = ("陈静", "王小明", "Zhang Wei")
STAGES = ("lead", "prospect", "customer", "churned")


@dataclass
class Unit:
    key: str
    id: uuid.UUID
    parent: str | None


@dataclass
class Person:
    key: str
    id: uuid.UUID
    roles: tuple[str, ...]
    unit: str
    manager: str | None
    #: The factory's row, for ``client_for``.
    row: dict[str, Any]


@dataclass
class CustomerRec:
    key: str
    id: uuid.UUID
    owner: str
    unit: str
    name: str
    stage: str
    tags: list[str]
    bank_account: str
    tax_number: str
    #: Index into :data:`SHAPES` (name pattern, tags, contact name).
    shape: int = 0
    deleted: bool = False
    contacts: list[uuid.UUID] = field(default_factory=list)
    contact_names: list[str] = field(default_factory=list)


@dataclass
class ContactRec:
    id: uuid.UUID
    customer: str
    name: str
    mobile: str


@dataclass
class AuditRec:
    id: uuid.UUID
    action: str
    resource_type: str
    resource_id: uuid.UUID
    owner: str | None
    unit: str | None


@dataclass
class World:
    units: dict[str, Unit] = field(default_factory=dict)
    people: dict[str, Person] = field(default_factory=dict)
    customers: dict[str, CustomerRec] = field(default_factory=dict)
    contacts: dict[uuid.UUID, ContactRec] = field(default_factory=dict)
    events: list[AuditRec] = field(default_factory=list)

    # --- facts derived from the tree and the reporting line, by walking them in Python ---
    def subtree(self, unit: str) -> set[str]:
        """``unit`` and every unit below it (walking ``parent`` links)."""
        found = {unit}
        changed = True
        while changed:
            more = {k for k, u in self.units.items() if u.parent in found} - found
            found |= more
            changed = bool(more)
        return found

    def reports(self, person: str) -> set[str]:
        """Everyone reporting to ``person``, directly or indirectly (walking ``manager``)."""
        found: set[str] = set()
        frontier = {person}
        while frontier:
            frontier = {k for k, p in self.people.items() if p.manager in frontier} - found
            found |= frontier
        return found

    def live(self) -> list[CustomerRec]:
        return [c for c in self.customers.values() if not c.deleted]

    def unit_key(self, unit_id: uuid.UUID | str | None) -> str | None:
        if unit_id is None:
            return None
        return next(k for k, u in self.units.items() if str(u.id) == str(unit_id))

    def person_key(self, person_id: uuid.UUID | str | None) -> str | None:
        if person_id is None:
            return None
        return next(k for k, p in self.people.items() if str(p.id) == str(person_id))


async def _custom_roles(engine: AsyncEngine, world: World) -> None:
    async with engine.begin() as conn:
        for name, (scope, unit_keys) in CUSTOM_ROLES.items():
            await conn.execute(
                text(
                    "INSERT INTO roles (id, name, description, builtin, version)"
                    " VALUES (gen_random_uuid(), :name, 'matrix test role', false, 1)"
                ),
                {"name": name},
            )
            units = "|".join(str(world.units[k].id) for k in unit_keys)
            await conn.execute(
                text(
                    "INSERT INTO authz_rules (id, ptype, v0, v1, v2, v3, v4, v5) VALUES"
                    " (gen_random_uuid(), 'p', :role, 'customers', 'read', :scope, :units, '')"
                ),
                {"role": name, "scope": scope, "units": units},
            )
        await conn.execute(text("UPDATE authz_state SET version = version + 1 WHERE id = 1"))


async def make_service_account(
    engine: AsyncEngine, key: str, roles: tuple[str, ...], unit: dict
) -> dict:
    user_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (id, email, display_name, org_unit_id, manager_path, kind,"
                " active, version) VALUES (:id, :email, :name, :unit, :mpath, 'service',"
                " true, 1)"
            ),
            {
                "id": user_id,
                "email": f"{key}@api-clients.invalid",
                "name": key,
                "unit": unit["id"],
                "mpath": f"/{user_id}/",
            },
        )
        for role in roles:
            await conn.execute(
                text(
                    "INSERT INTO authz_rules (id, ptype, v0, v1, v2, v3, v4, v5)"
                    " VALUES (gen_random_uuid(), 'g', :sub, :role, '', '', '', '')"
                ),
                {"sub": f"client:{user_id}", "role": role},
            )
        await conn.execute(text("UPDATE authz_state SET version = version + 1 WHERE id = 1"))
    return {
        "id": user_id,
        "kind": "service",
        "manager_path": f"/{user_id}/",
        "org_unit_id": unit["id"],
        "roles": roles,
    }


async def build_world(engine: AsyncEngine, admin_http: Any) -> World:
    """Make the world in an empty (freshly reset) database. ``admin_http(person_row)``
    returns an HTTP client authenticated as that person; the first person made is the
    administrator, through whom every record is written."""
    world = World()
    rows: dict[str, dict] = {}
    for key, (name, kind, parent) in UNITS.items():
        rows[key] = await make_org_unit(engine, name, rows[parent] if parent else None, kind)
        world.units[key] = Unit(key, rows[key]["id"], parent)
    await _custom_roles(engine, world)
    people: dict[str, dict] = {}
    for key, (roles, unit, manager) in PEOPLE.items():
        if key in SERVICE_ACCOUNTS:
            people[key] = await make_service_account(engine, key, roles, rows[unit])
        else:
            people[key] = await make_user(
                engine,
                roles=roles,
                org_unit=rows[unit],
                manager=people[manager] if manager else None,
                email=f"{key}@matrix.test",
            )
        world.people[key] = Person(key, people[key]["id"], roles, unit, manager, people[key])

    http: httpx.AsyncClient = await admin_http(people["admin"])
    n = 0

    async def customer(key: str, owner: str, shape: int, unit: str | None = None) -> CustomerRec:
        nonlocal n
        n += 1
        pattern, tags = SHAPES[shape]
        body: dict[str, Any] = {
            "name": pattern.format(n=n),
            "owner_id": str(world.people[owner].id),
            "lifecycle_stage": STAGES[n % len(STAGES)],
            "tags": tags,
            "bank_account": f"62220202001122{n:04d}",
            "tax_number": f"91310000MA1FL{n:05d}",
        }
        if unit is not None:
            body["org_unit_id"] = str(world.units[unit].id)
        response = await http.post("/v1/customers", json=body)
        assert response.status_code == 201, response.text
        got = response.json()
        rec = CustomerRec(
            key,
            uuid.UUID(got["id"]),
            owner,
            unit or world.people[owner].unit,
            body["name"],
            body["lifecycle_stage"],
            tags,
            body["bank_account"],
            body["tax_number"],
            shape,
        )
        assert got["org_unit_id"] == str(world.units[rec.unit].id)
        world.customers[key] = rec
        return rec

    for owner in OWNERS:
        for i in range(len(SHAPES)):
            await customer(f"{owner}#{i}", owner, i)
    await customer("misplaced", "rep1", 0, unit="B1a")
    await customer("hybrid-away", "hybrid", 1, unit="CB")
    await customer("deleted", "rep1", 0)

    for c in world.customers.values():
        name, mobile = CONTACT_NAMES[c.shape], f"+86 138 0013 {len(world.contacts):04d}"
        email = f"contact{len(world.contacts)}@mingyuan.example.cn"
        response = await http.post(
            f"/v1/customers/{c.id}/contacts", json={"name": name, "mobile": mobile, "email": email}
        )
        assert response.status_code == 201, response.text
        contact_id = uuid.UUID(response.json()["id"])
        c.contacts.append(contact_id)
        c.contact_names.append(name)
        world.contacts[contact_id] = ContactRec(contact_id, c.key, name, mobile)

    # later writes, so the audit trail holds more than creations
    for owner in OWNERS:
        c = world.customers[f"{owner}#2"]
        response = await http.patch(f"/v1/customers/{c.id}", json={"grade": "A"})
        assert response.status_code == 200, response.text
    response = await http.delete(f"/v1/customers/{world.customers['deleted'].id}")
    assert response.status_code == 204, response.text
    world.customers["deleted"].deleted = True

    async with engine.connect() as conn:
        events = (
            await conn.execute(
                text(
                    "SELECT id, action, resource_type, resource_id, owner_id, org_unit_id"
                    " FROM audit_events"
                )
            )
        ).all()
    world.events = [
        AuditRec(
            e.id,
            e.action,
            e.resource_type,
            e.resource_id,
            world.person_key(e.owner_id),
            world.unit_key(e.org_unit_id),
        )
        for e in events
    ]
    return world


# --- snapshot / restore: build once, start every test from the very same rows ------------
SNAPSHOT_SCHEMA = "matrix_world"


async def _tables(conn: Any) -> list[str]:
    """Public tables in foreign-key order (parents first)."""
    from crm_api.db.base import Base

    present = set(
        (
            await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        ).scalars()
    ) - {"alembic_version"}
    ordered = [t.name for t in Base.metadata.sorted_tables if t.name in present]
    return ordered + sorted(present - set(ordered))


async def snapshot(engine: AsyncEngine) -> None:
    """Copy every public table into :data:`SNAPSHOT_SCHEMA` (which test resets leave alone)."""
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {SNAPSHOT_SCHEMA} CASCADE"))
        await conn.execute(text(f"CREATE SCHEMA {SNAPSHOT_SCHEMA}"))
        for table in await _tables(conn):
            await conn.execute(
                text(f"CREATE TABLE {SNAPSHOT_SCHEMA}.{table} AS TABLE public.{table}")
            )


async def restore(engine: AsyncEngine) -> None:
    """Put the public tables back exactly as :func:`snapshot` found them. ``DELETE`` rather
    than ``TRUNCATE``: on tables this small it is many times faster."""
    async with engine.begin() as conn:
        tables = await _tables(conn)
        for table in reversed(tables):
            await conn.execute(text(f"DELETE FROM public.{table}"))
        for table in tables:
            # generated columns (the search columns) cannot be written: PostgreSQL
            # recomputes them
            columns = ", ".join(
                f'"{name}"'
                for name in (
                    await conn.execute(
                        text(
                            "SELECT column_name FROM information_schema.columns"
                            " WHERE table_schema = 'public' AND table_name = :t"
                            " AND is_generated = 'NEVER' ORDER BY ordinal_position"
                        ),
                        {"t": table},
                    )
                ).scalars()
            )
            await conn.execute(
                text(
                    f"INSERT INTO public.{table} ({columns})"
                    f" SELECT {columns} FROM {SNAPSHOT_SCHEMA}.{table}"
                )
            )


async def drop_snapshot(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {SNAPSHOT_SCHEMA} CASCADE"))
