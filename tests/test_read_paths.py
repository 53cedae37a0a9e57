"""Both read paths return exactly the same rows: the asyncpg path (statements compiled by
SQLAlchemy, run on asyncpg; ``crm_api.db.reader``) and ``CRM_READ_PATH=engine`` (the same
statements run by SQLAlchemy's AsyncEngine, which is by definition what SQLAlchemy returns).

"Exactly" means values *and* types: ``Decimal('1.5000')`` is not ``1.5``, an enum member
is not its name, a tuple is not a list. Covered:

- every registered resource (crm_api/resources.py): every statement its list and get
  endpoints run — each declared sort both ways, paged by cursor, with the opt-in count, the
  search term — for callers of every kind of scope and masking (all, own, org_subtree above
  the owner, per-row ``read_sensitive``), with its JSONB and array columns filled; and the
  kit's list/get statements directly, live and trash;
- a scratch table declared only here with the types no registered resource has yet
  (money arrives with orders): Numeric(18,4), Numeric as float, double precision, a
  PostgreSQL enum, JSONB, text[], numeric[] and timestamptz.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import (
    ARRAY,
    Enum,
    Executable,
    Float,
    Numeric,
    String,
    Text,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from crm_api.authz.types import Access, Principal, PrincipalKind, Scope, ScopeKind
from crm_api.config import Settings
from crm_api.db.base import Base, IdMixin, SoftDeleteMixin, TimestampMixin, VersionMixin
from crm_api.db.engine import Database, create_database
from crm_api.db.reader import Reader, ReadResult
from crm_api.kit import resource as kit
from crm_api.kit.pagination import PageParams, SortKey
from crm_api.kit.resource import OwnerScoped, Resource
from crm_api.kit.schemas import OutputModel
from crm_api.resources import REGISTRY
from test_conformance import Subject, as_user, make_record, make_world

PATHS = ("asyncpg", "engine")


def exact(value: Any) -> Any:
    """``value`` with its type spelled out at every level, so that comparing two of these
    compares types too (``Decimal('1.5000') == 1.5`` is true; this is not)."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, [exact(v) for v in value])
    if isinstance(value, dict):
        return ("dict", [(exact(k), exact(v)) for k, v in value.items()])
    if isinstance(value, Decimal | float):
        return (type(value).__name__, repr(value))  # the scale and the sign of zero too
    if isinstance(value, datetime):
        return ("datetime", value.isoformat(), repr(value.tzinfo))
    if isinstance(value, enum.Enum):
        return (type(value).__qualname__, value.name)
    if isinstance(value, orjson.Fragment):  # JSON sent on as is (orders' lines): its text
        return ("Fragment", orjson.dumps(value))
    return (type(value).__name__, value)


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two :func:`exact` values first differ, and how (``None``: they do not)."""
    if type(a) is type(b) and isinstance(a, list | tuple) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"at {where}: {a!r} != {b!r}"


class ComparingReader(Reader):
    """Runs every statement on each path's reader, asserts identical keys and rows (types
    included), and returns the first path's result."""

    __slots__ = ("_readers", "statements")

    def __init__(self, readers: dict[str, Reader]) -> None:
        self._readers = readers
        self.statements: list[str] = []

    async def execute(
        self, stmt: Executable, values: Mapping[str, Any] | None = None
    ) -> ReadResult:
        results = {path: await r.execute(stmt, values) for path, r in self._readers.items()}
        (first_path, first), *others = results.items()
        rows = exact([tuple(r) for r in first.all()])
        for path, other in others:
            assert other.keys() == first.keys(), (first_path, path, stmt)
            other_rows = exact([tuple(r) for r in other.all()])
            assert other_rows == rows, (
                f"{first_path} and {path} differ {first_difference(rows, other_rows)} in {stmt}"
            )
        self.statements.append(str(stmt))
        return first


@pytest.fixture
async def both(settings: Settings, database_url: str) -> AsyncIterator[ComparingReader]:
    databases: dict[str, Database] = {
        path: create_database(settings.model_copy(update={"read_path": path}), database_url)
        for path in PATHS
    }
    try:
        yield ComparingReader({p: d.reads.reader for p, d in databases.items()})
    finally:
        for database in databases.values():
            await database.dispose()


def _access(resource: str, user_id: uuid.UUID, kind: str) -> Access:
    """``all``: everything, unmasked; ``own``: the user's records, masked; ``per_row``:
    everything, unmasked only on the user's own records (the per-row flag)."""
    principal = Principal(PrincipalKind.user, user_id, "reader", frozenset())
    everything = Scope(frozenset({ScopeKind.all}))
    own = Scope(frozenset({ScopeKind.own}))
    if kind == "all":
        return Access(principal, resource, "read", everything, sensitive=True)
    if kind == "own":
        return Access(principal, resource, "read", own)
    return Access(principal, resource, "read", everything, sensitive_scope=own)


async def _kit_reads(
    reader: Reader,
    resource: Resource,
    access: Access,
    *,
    limit: int = 2,
    one_page: frozenset[str] = frozenset(),
) -> int:
    """Every list page (each sort, both directions, live and trash, with the count) and
    every get of ``resource`` as ``access`` sees it, through the kit. Sorts in ``one_page``
    are read as a single page (no cursor). Returns rows seen."""
    seen = 0
    for deleted in (False, True) if resource.soft_delete else (False,):
        for member in resource.sorts:
            for descending in (False, True):
                cursor = None
                while True:
                    params = PageParams(
                        200 if member.value in one_page else limit,
                        cursor,
                        (SortKey(member.value, descending),),
                        include_total=cursor is None,
                    )
                    stmt = kit.scoped(resource, access, deleted=deleted)
                    page = await kit.fetch_page(reader, resource, access, stmt, params)
                    seen += len(page["data"])
                    for row in page["data"]:
                        got = await kit.get_row(
                            reader,
                            resource,
                            access,
                            kit.scoped(resource, access, deleted=deleted),
                            row["id"],
                        )
                        assert exact(got) == exact(row)
                    cursor = page["next_cursor"]
                    if not cursor:
                        break
    return seen


# --- every registered resource ---------------------------------------------------------------
#: JSONB columns whose content has a shape the service relies on (a token's permissions
#: are ``[[resource, action], …]``): rich values of that shape instead of free-form ones.
SHAPED: dict[tuple[str, str], list[Any]] = {
    ("personal_access_tokens", "permissions"): [
        [["customers", "read"], ["联系人", "*"], ['with "quote"', "read"]],
        [],
        [["contacts", "update"]],
    ],
}


def _rich_values(i: int, column: Any) -> Any:
    """A value of ``column``'s type that exercises the decoders (``None``: leave it)."""
    shaped = SHAPED.get((column.table.name, column.key))
    if shaped is not None:
        return shaped[i % len(shaped)]
    if isinstance(column.type, JSONB):
        return [
            {
                "名": "值",
                "n": [1, 2.5, None, True, -0.0],
                "big": 2**70,
                "e20": 1e20,
                "tiny": 1e-7,
                "nested": {"empty": {}, "list": []},
            },
            [],
            0,
            "text",
            {"f": 1.0},
        ][i % 5]
    if isinstance(column.type, ARRAY):
        return [["a", "标签", 'with "quote"', "comma,x", "{brace}"], [], ["x"]][i % 3]
    return None


async def _enrich(engine: AsyncEngine, resource: Resource, ids: list[str]) -> None:
    """Fill the resource's JSONB and array columns (the samples leave them empty)."""
    columns = [c for c in resource.table.c if isinstance(c.type, JSONB | ARRAY)]
    async with engine.begin() as conn:
        for i, record_id in enumerate(ids):
            values = {c.key: _rich_values(i, c) for c in columns}
            if values:
                await conn.execute(
                    resource.table.update()
                    .where(resource.id_column == uuid.UUID(record_id))
                    .values(values)
                )


async def _grant_per_row_reader(engine: AsyncEngine, app: FastAPI) -> None:
    """A role reading every registered resource whole, with sensitive fields shown only on
    its holders' own records: the per-row masking flag."""
    rules = [("path_reader", r, "read", "all") for r in REGISTRY] + [
        ("path_reader", r, "read_sensitive", "own") for r in REGISTRY
    ]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO authz_rules (id, ptype, v0, v1, v2, v3, v4, v5) VALUES "
                "(gen_random_uuid(), 'p', :role, :res, :act, :scope, '', '')"
            ),
            [{"role": ro, "res": re, "act": a, "scope": s} for ro, re, a, s in rules],
        )
        await conn.execute(text("UPDATE authz_state SET version = version + 1 WHERE id = 1"))
    await app.state.policy.load(engine)


@pytest.mark.parametrize("name", sorted(REGISTRY))
async def test_every_registered_resource_reads_the_same_on_both_paths(
    app, engine, both, monkeypatch, name
) -> None:
    from factories.identity import make_org_unit, make_user

    resource = REGISTRY[name]
    subject = Subject(app, engine, resource)
    samples = subject.samples
    world = await make_world(engine)
    await _grant_per_row_reader(engine, app)
    per_row = await make_user(
        engine, roles=("path_reader",), org_unit=await make_org_unit(engine, "Readers")
    )
    async with as_user(subject, world.admin) as admin:
        ids = [(await make_record(subject, admin, world.owner))[0]["id"] for _ in range(3)]
        ids.append((await make_record(subject, admin, per_row))[0]["id"])
        await _enrich(engine, resource, ids)
        if samples.deletes:
            # whoever may delete it: the administrator, or the owner of a record of their own
            writer = world.owner if samples.created_by_owner else world.admin
            async with as_user(subject, writer) as deleter:
                deleted = await deleter.delete(f"{samples.path}/{ids[0]}")
            assert deleted.status_code == 204, deleted.text

    # every statement the app reads with, from here on, runs on both paths
    monkeypatch.setattr(app.state.db.reads, "reader", both)
    callers = {
        "admin": world.admin,
        "owner": world.owner,
        "manager": world.manager,
        "outsider": world.outsider,
        "per_row": per_row,
    }
    for who, user in callers.items():
        async with as_user(subject, user) as client:
            listed = await client.get(samples.path, params={"limit": 1})
            if listed.status_code == 403:  # the role lacks `read` here: no statement to compare
                continue
            for member in resource.sorts:
                for sort in (member.value, f"-{member.value}"):
                    params: dict[str, Any] = {"limit": 1, "sort": sort, "include_total": "true"}
                    for _ in range(10):
                        response = await client.get(samples.path, params=params)
                        assert response.status_code == 200, (who, response.text)
                        cursor = response.json()["next_cursor"]
                        if not cursor:
                            break
                        params = {"limit": 1, "sort": sort, "cursor": cursor}
            if samples.search:
                response = await client.get(samples.path, params={"q": samples.search})
                assert response.status_code == 200, (who, response.text)
            for record_id in ids:
                response = await client.get(f"{samples.path}/{record_id}")
                assert response.status_code in (200, 404), (who, response.text)
    # every read starts from the resource's table; the search also reads its n-gram
    # index's statistics (pg_stats, cached per process for a few minutes: whether this test
    # sees that statement depends on what ran before it)
    reads = [s for s in both.statements if "pg_stats" not in s]
    assert reads and all(resource.table.name in s for s in reads)

    # the kit's list and get statements directly, live and trash, every kind of access
    seen = 0
    for kind in ("all", "own", "per_row"):
        seen += await _kit_reads(both, resource, _access(name, world.owner["id"], kind))
    assert seen > 0


# --- the types orders will bring ----------------------------------------------------------------
LEDGER = "scratch_read_paths"


class LedgerStatus(enum.Enum):
    draft = "draft"
    posted = "posted"
    void = "void"


class ScratchBase(DeclarativeBase):
    """Not the app's metadata: the table exists only while this module runs."""

    type_annotation_map = Base.type_annotation_map


class Ledger(IdMixin, TimestampMixin, VersionMixin, SoftDeleteMixin, ScratchBase):
    __tablename__ = LEDGER

    owner_id: Mapped[uuid.UUID]
    org_unit_id: Mapped[uuid.UUID | None]
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 4))
    ratio: Mapped[float | None] = mapped_column(Numeric(10, 2, asdecimal=False))
    rate: Mapped[float | None] = mapped_column(Float)
    status: Mapped[LedgerStatus | None] = mapped_column(Enum(LedgerStatus, name=f"{LEDGER}_status"))
    payload: Mapped[Any] = mapped_column(JSONB, nullable=True)
    labels: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    amounts: Mapped[list[Decimal | None] | None] = mapped_column(ARRAY(Numeric(18, 4)))
    happened_at: Mapped[datetime | None]
    secret: Mapped[str | None] = mapped_column(String(64))


DDL = [
    f"DROP TABLE IF EXISTS {LEDGER}",
    f"DROP TYPE IF EXISTS {LEDGER}_status",
    f"CREATE TYPE {LEDGER}_status AS ENUM ('draft', 'posted', 'void')",
    f"""CREATE TABLE {LEDGER} (
        id uuid PRIMARY KEY, owner_id uuid NOT NULL, org_unit_id uuid,
        amount numeric(18, 4), ratio numeric(10, 2), rate double precision,
        status {LEDGER}_status, payload jsonb, labels text[], amounts numeric(18, 4)[],
        happened_at timestamptz, secret varchar(64),
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        deleted_at timestamptz, version integer NOT NULL DEFAULT 1)""",
]


class LedgerSort(enum.StrEnum):
    created_at = "created_at"
    happened_at = "happened_at"
    status = "status"
    amount = "amount"


class LedgerOut(OutputModel):
    id: uuid.UUID
    owner_id: uuid.UUID
    org_unit_id: uuid.UUID | None
    amount: Decimal | None
    ratio: float | None
    rate: float | None
    status: LedgerStatus | None
    payload: Any
    labels: list[str] | None
    amounts: list[Decimal | None] | None
    happened_at: datetime | None
    secret: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


LEDGER_RESOURCE = Resource(
    name=LEDGER,
    label="ledger entry",
    model=Ledger,
    schema=LedgerOut,
    scoping=OwnerScoped(),
    sorts=LedgerSort,
    not_found_code="ledger_entry_not_found",
    sensitive=("secret",),
    grant_group="none",
)

OWNER = uuid.uuid4()
#: (amount, ratio, rate, status, payload, labels, amounts, happened_at): the edges.
ROWS: list[tuple[Any, ...]] = [
    (
        Decimal("1.5"),
        0.1,
        0.1,
        LedgerStatus.draft,
        {
            "名": "值",
            "n": [1, 2.5, None, True],
            "big": 2**70,
            "tiny": -1e-7,
            "f": 1.0,
            "float_1e20": 1e20,
        },
        ["a", "标签", "", 'with "quote"', "comma,x", "{brace}", "NULL"],
        [Decimal("1"), None],
        datetime(2026, 12, 2, 7, 5, 59, 123456, tzinfo=UTC),
    ),
    (
        Decimal("99999999999999.9999"),
        12345678.91,
        1e300,
        LedgerStatus.posted,
        [],
        [],
        [],
        datetime(1900, 1, 1, tzinfo=UTC),
    ),
    (
        Decimal("-0.0001"),
        -0.5,
        -0.0,
        LedgerStatus.void,
        "text",
        [None, "x"],
        [Decimal("-12.3456"), Decimal("0")],
        datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ),
    (Decimal("0"), 0.0, 5e-324, LedgerStatus.posted, 0, ["only"], None, None),
    (None, None, None, None, None, None, None, None),
]


@pytest.fixture(scope="module")
async def ledger(database_url: str) -> AsyncIterator[list[uuid.UUID]]:
    """The scratch table, with one row per edge (owned by ``OWNER`` but the last), and a
    deleted one; dropped afterwards."""
    from sqlalchemy.ext.asyncio import create_async_engine

    eng = create_async_engine(database_url)
    ids = [uuid.uuid4() for _ in ROWS] + [uuid.uuid4()]
    async with eng.begin() as conn:
        for statement in DDL:
            await conn.execute(text(statement))
        for i, (record_id, row) in enumerate(zip(ids, [*ROWS, ROWS[0]], strict=True)):
            keys = (
                "amount",
                "ratio",
                "rate",
                "status",
                "payload",
                "labels",
                "amounts",
                "happened_at",
            )
            await conn.execute(
                Ledger.__table__.insert().values(
                    id=record_id,
                    owner_id=OWNER if i < len(ROWS) - 1 else uuid.uuid4(),
                    secret=f"S-{i}",
                    deleted_at=datetime.now(UTC) if i == len(ROWS) else None,
                    **dict(zip(keys, row, strict=True)),
                )
            )
    try:
        yield ids
    finally:
        async with eng.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {LEDGER}"))
            await conn.execute(text(f"DROP TYPE IF EXISTS {LEDGER}_status"))
        await eng.dispose()


async def test_money_enum_jsonb_array_and_timestamps_read_the_same(both, ledger) -> None:
    R = LEDGER_RESOURCE
    # the kit's list and get statements: every sort, live and trash, and masking by constant
    # and by the per-row flag. Paged by cursor on created_at only: a cursor cannot carry an
    # enum member, a Decimal or a NULL yet (kit/pagination.py), so those sorts read one page.
    for kind in ("all", "own", "per_row"):
        seen = await _kit_reads(
            both,
            R,
            _access(LEDGER, OWNER, kind),
            limit=2,
            one_page=frozenset({"happened_at", "status", "amount"}),
        )
        assert seen > 0
    # sorted by the money column
    access = _access(LEDGER, OWNER, "all")
    page = await kit.fetch_page(
        both,
        R,
        access,
        kit.scoped(R, access),
        PageParams(200, None, (SortKey("amount", True),), include_total=True),
    )
    assert page["total"] == len(ROWS) and page["next_cursor"] is None

    # what SQLAlchemy itself returns for these types (the engine path is SQLAlchemy)
    by_id = {r["id"]: r for r in page["data"]}
    first = by_id[ledger[0]]
    assert exact(first["amount"]) == exact(Decimal("1.5000"))
    assert exact(first["ratio"]) == exact(0.1) and exact(first["rate"]) == exact(0.1)
    assert first["status"] is LedgerStatus.draft
    payload = first["payload"]  # jsonb orders keys its own way
    # a number past 64 bits reads as a float on both paths (reader._loads: what orjson can
    # render in a response; jsonb writes the float 1e20 as 100000000000000000000)
    assert exact(payload.pop("big")) == exact(float(2**70))
    assert exact(payload.pop("float_1e20")) == exact(1e20)
    expected = {k: v for k, v in ROWS[0][4].items() if k not in ("big", "float_1e20")}
    assert exact(dict(sorted(payload.items()))) == exact(dict(sorted(expected.items())))
    assert exact(first["labels"]) == exact(ROWS[0][5])
    assert exact(first["amounts"]) == exact([Decimal("1.0000"), None])
    assert exact(first["happened_at"]) == exact(ROWS[0][7])
    assert exact(by_id[ledger[2]]["rate"]) == exact(-0.0)
    assert by_id[ledger[4]]["payload"] is None and by_id[ledger[4]]["labels"] is None

    # expressions over them: aggregates, casts, arrays of numerics, enum text
    t = R.table
    for stmt in (
        select(
            func.sum(t.c.amount),
            func.avg(t.c.amount),
            func.min(t.c.rate),
            func.max(t.c.happened_at),
            func.count(),
        ),
        select(
            cast(t.c.amount, Float).label("as_float"), cast(t.c.rate, Numeric).label("n")
        ).order_by(t.c.id),
        select(func.array_agg(t.c.amount).label("all_amounts")),
        select(
            t.c.status, cast(t.c.status, Text).label("name"), t.c.payload["n"].label("n")
        ).order_by(t.c.id),
        select(t.c.id)
        .where(t.c.status.in_([LedgerStatus.draft, LedgerStatus.void]), t.c.amount > Decimal("-1"))
        .order_by(t.c.id),
    ):
        await both.execute(stmt)
    masked = await kit.get_row(
        both, R, replace(access, sensitive=False), kit.scoped(R, access), ledger[0]
    )
    assert masked is not None and masked["secret"] != "S-0"
