"""Keyset cursors over every sort value type the kit meets: Decimal, a PostgreSQL enum,
date, boolean, timestamp and text, each with ties and NULLs, walked in both directions and
mixed, through a scratch resource (a table only this module creates, read with the kit's
``fetch_page`` behind an explicit endpoint, as tests/test_kit_scratch.py does).

What must hold: every walk returns every row exactly once, in exactly the order PostgreSQL
gives for the same ORDER BY (NULLs last ascending, first descending: its default); a
cursor carries Decimals as strings, so values a float cannot tell apart still page
correctly; a tampered cursor is a 400 ``invalid_cursor`` problem, never a 500.
"""

from __future__ import annotations

import base64
import enum
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI, Response
from sqlalchemy import Boolean, Date, Numeric, Text, insert, text
from sqlalchemy import Enum as SAEnum
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conftest import problem, token_for
from crm_api.authz.dependencies import require
from crm_api.authz.types import Access, Action
from crm_api.config import Settings
from crm_api.db.base import Base, IdMixin
from crm_api.db.session import ReadConnection
from crm_api.kit import resource as kit
from crm_api.kit.pagination import ListQuery, SortKey, decode_cursor, encode_cursor
from crm_api.kit.resource import OwnerScoped, Resource
from crm_api.kit.responses import json_response
from crm_api.kit.routing import query_model
from crm_api.kit.schemas import OutputModel
from crm_api.main import create_app
from factories.identity import make_org_unit, make_user

NAME = "scratch_ledger"


class Status(enum.Enum):
    """Declared out of alphabetical order: PostgreSQL sorts an enum by declaration."""

    open = "open"
    draft = "draft"
    paid = "paid"


class ScratchBase(DeclarativeBase):
    type_annotation_map = Base.type_annotation_map


class Entry(IdMixin, ScratchBase):
    __tablename__ = NAME

    amount: Mapped[Decimal | None] = mapped_column(Numeric(20, 2))
    status: Mapped[Status | None] = mapped_column(SAEnum(Status, name=f"{NAME}_status"))
    due_on: Mapped[date | None] = mapped_column(Date)
    flagged: Mapped[bool | None] = mapped_column(Boolean)
    happened_at: Mapped[datetime | None]
    label: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    owner_id: Mapped[uuid.UUID]
    org_unit_id: Mapped[uuid.UUID | None]


DDL = [
    f"CREATE TYPE {NAME}_status AS ENUM ('open', 'draft', 'paid')",
    f"""CREATE TABLE {NAME} (
        id uuid PRIMARY KEY, amount numeric(20, 2), status {NAME}_status, due_on date,
        flagged boolean, happened_at timestamptz, label text,
        created_at timestamptz NOT NULL, owner_id uuid NOT NULL, org_unit_id uuid)""",
]
DROP = [f"DROP TABLE IF EXISTS {NAME}", f"DROP TYPE IF EXISTS {NAME}_status"]


class EntrySort(enum.StrEnum):
    amount = "amount"
    status = "status"
    due_on = "due_on"
    flagged = "flagged"
    happened_at = "happened_at"
    label = "label"
    created_at = "created_at"


class EntryOut(OutputModel):
    id: uuid.UUID
    amount: Decimal | None
    status: Status | None
    due_on: date | None
    flagged: bool | None
    happened_at: datetime | None
    label: str | None
    created_at: datetime
    owner_id: uuid.UUID
    org_unit_id: uuid.UUID | None


LEDGER = Resource(
    name=NAME,
    label="entry",
    model=Entry,
    schema=EntryOut,
    scoping=OwnerScoped(),
    sorts=EntrySort,
    not_found_code="entry_not_found",
    soft_delete=False,
    grant_group="none",
)


class EntryListQuery(ListQuery):
    pass


def make_router() -> APIRouter:
    router = APIRouter(prefix=f"/{NAME}")

    @router.get("")
    async def list_entries(
        access: Annotated[Access, require(NAME, Action.read)],
        conn: ReadConnection,
        query: Annotated[EntryListQuery, query_model(EntryListQuery)],
    ) -> Response:
        stmt = kit.scoped(LEDGER, access)
        return json_response(
            await kit.fetch_page(conn, LEDGER, access, stmt, query.page(EntrySort))
        )

    return router


# Decimals a float cannot tell apart (both are 1e16 as a double), zero in two scales, a
# negative: a cursor that went through a float would repeat or skip rows between them.
AMOUNTS = [
    Decimal("9999999999999999.99"),
    Decimal("9999999999999999.98"),
    Decimal("0.00"),
    Decimal("-3.50"),
    None,
    Decimal("10.10"),
]
STATUSES = [Status.draft, None, Status.open, Status.paid]
DUES = [date(2026, 1, 31), None, date(2025, 12, 1)]
FLAGS = [True, False, None]
BASE = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
HAPPENED = [BASE, None, BASE + timedelta(microseconds=1), BASE - timedelta(days=400)]
LABELS = ["beta", None, "Beta", "阿里", "", "beta"]
ROWS = 61


@pytest.fixture(scope="module")
async def ledger_app(settings: Settings, database_url: str) -> AsyncIterator[FastAPI]:
    eng = create_async_engine(database_url)
    async with eng.begin() as conn:
        for ddl in [*DROP, *DDL]:
            await conn.execute(text(ddl))
    application = create_app(settings, database_url)
    application.include_router(make_router(), prefix="/v1")
    try:
        async with application.router.lifespan_context(application):
            yield application
    finally:
        async with eng.begin() as conn:
            for ddl in DROP:
                await conn.execute(text(ddl))
        await eng.dispose()


@pytest.fixture
async def ledger(
    ledger_app: FastAPI, engine: AsyncEngine
) -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    root = await make_org_unit(engine, "Head office", kind="group")
    admin = await make_user(engine, roles=("admin",), org_unit=root)
    rows = [
        {
            "id": uuid.uuid4(),
            "amount": AMOUNTS[i % len(AMOUNTS)],
            "status": STATUSES[i % len(STATUSES)],
            "due_on": DUES[i % len(DUES)],
            "flagged": FLAGS[i % len(FLAGS)],
            "happened_at": HAPPENED[i % len(HAPPENED)],
            "label": LABELS[i % len(LABELS)],
            "created_at": BASE + timedelta(seconds=i // 5),
            "owner_id": admin["id"],
            "org_unit_id": root["id"],
        }
        for i in range(ROWS)
    ]
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {NAME}"))
        await conn.execute(insert(Entry.__table__), rows)
    await ledger_app.state.policy.load(engine)
    transport = httpx.ASGITransport(app=ledger_app, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {token_for(ledger_app, admin)}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as c:
        yield c, rows


async def walk(client: httpx.AsyncClient, sort: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(ROWS + 2):
        params: dict[str, Any] = {"sort": sort, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(f"/v1/{NAME}", params=params)
        assert response.status_code == 200, (sort, response.text)
        page = response.json()
        rows.extend(page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return rows
        assert len(page["data"]) == limit
        cursor = page["next_cursor"]
    raise AssertionError(f"{sort}: pagination does not terminate")


async def db_order(engine: AsyncEngine, sort: str) -> list[str]:
    keys = sort.split(",")
    terms = [f"{k.lstrip('-')} {'DESC' if k.startswith('-') else 'ASC'}" for k in keys]
    terms.append("id DESC" if keys[-1].startswith("-") else "id ASC")
    async with engine.connect() as conn:
        result = await conn.execute(text(f"SELECT id FROM {NAME} ORDER BY {', '.join(terms)}"))
        return [str(i) for i in result.scalars()]


SORTS = [
    *(key for m in EntrySort for key in (m.value, f"-{m.value}")),
    "amount,-happened_at",
    "-amount,label",
    "status,due_on,-flagged",
    "-status,label,amount",
    "flagged,-due_on",
    "label,-status",
    "-happened_at,amount",
]


async def test_every_sort_type_pages_without_loss_or_repetition(ledger, engine):
    client, rows = ledger
    everyone = sorted(str(r["id"]) for r in rows)
    for sort in SORTS:
        for limit in (1, 4, 7):
            got = [r["id"] for r in await walk(client, sort, limit)]
            assert len(got) == len(set(got)), f"{sort} by {limit}: repeated rows"
            assert sorted(got) == everyone, f"{sort} by {limit}: lost rows"
            assert got == await db_order(engine, sort), f"{sort} by {limit}: order"


async def test_values_come_back_exactly(ledger):
    client, rows = ledger
    by_id = {str(r["id"]): r for r in rows}
    for row in await walk(client, "-amount", 5):
        want = by_id[row["id"]]["amount"]
        assert row["amount"] == (None if want is None else str(want))


def test_cursor_round_trips_each_type_exactly() -> None:
    sort = tuple(SortKey(m.value, descending=False) for m in EntrySort)
    columns = LEDGER.sort_columns
    cases: list[dict[str, Any]] = [
        {
            "amount": Decimal("9999999999999999.99"),
            "status": Status.draft,
            "due_on": date(2026, 2, 28),
            "flagged": False,
            "happened_at": datetime(2026, 3, 1, 8, 0, 0, 1, tzinfo=UTC),
            "label": "阿里 \u00a0beta",
            "created_at": datetime(1, 1, 1, tzinfo=UTC),
        },
        {
            "amount": Decimal("-0.10"),
            "status": None,
            "due_on": None,
            "flagged": None,
            "happened_at": None,
            "label": None,
            "created_at": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        },
    ]
    for values in cases:
        row_id = uuid.uuid4()
        cursor = encode_cursor(sort, {**values, "id": row_id})
        decoded, decoded_id = decode_cursor(cursor, sort, columns)
        assert decoded_id == row_id
        for key, got in zip(sort, decoded, strict=True):
            want = values[key.name]
            assert got == want and type(got) is type(want), key.name
            if isinstance(want, Decimal):
                assert str(got) == str(want)  # the scale too: 10.10 stays 10.10


def _cursor(sort: list[str], values: list[Any], row_id: Any = None) -> str:
    payload = {"s": sort, "v": values, "id": row_id or str(uuid.uuid4())}
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


TAMPERED: list[tuple[str, str]] = [
    ("amount", "not base64 at all!"),
    ("amount", base64.urlsafe_b64encode(b"[1, 2]").decode()),
    ("amount", _cursor(["amount"], [10.1])),  # a float: never issued, loses digits
    ("amount", _cursor(["amount"], ["10.10"])),  # untagged
    ("amount", _cursor(["amount"], [{"d": "ten"}])),
    ("amount", _cursor(["amount"], [{"d": "1e30"}])),  # beyond numeric(20, 2)
    ("amount", _cursor(["amount"], [{"d": "0.001"}])),  # finer than the scale
    ("amount", _cursor(["amount"], [{"d": "sNaN"}])),
    ("amount", _cursor(["amount"], [{"d": "1", "x": 1}])),
    ("amount", _cursor(["amount"], [{"d": "1"}], "not-a-uuid")),
    ("amount", _cursor(["amount"], [{"d": "1"}, {"d": "2"}])),
    ("status", _cursor(["status"], ["closed"])),  # not a value of the enum
    ("status", _cursor(["status"], [1])),
    ("due_on", _cursor(["due_on"], [{"D": "2026-02-30"}])),
    ("due_on", _cursor(["due_on"], [{"t": "2026-02-03T00:00:00+00:00"}])),
    ("flagged", _cursor(["flagged"], [1])),
    ("flagged", _cursor(["flagged"], ["true"])),
    ("happened_at", _cursor(["happened_at"], [{"t": "2026-03-01T08:00:00"}])),  # naive
    ("happened_at", _cursor(["happened_at"], [{"t": "9999-12-31T23:00:00-05:00"}])),
    ("label", _cursor(["label"], ["a\x00b"])),
    ("label", _cursor(["label"], [7])),
    ("created_at", _cursor(["created_at"], [None])),  # NULL for a NOT NULL column
    ("-amount", _cursor(["amount"], [{"d": "1.00"}])),  # issued for another sort
]


async def test_a_tampered_cursor_is_a_400_problem(ledger):
    client, _ = ledger
    for sort, cursor in TAMPERED:
        response = await client.get(f"/v1/{NAME}", params={"sort": sort, "cursor": cursor})
        problem(response, 400, "invalid_cursor")
    # the same shapes, well formed, are accepted (the 400s above are about the values)
    for sort, values in [
        ("amount", [{"d": "10.10"}]),
        ("amount", [None]),
        ("status", ["draft"]),
        ("due_on", [{"D": "2026-02-28"}]),
        ("flagged", [True]),
        ("happened_at", [{"t": "2026-03-01T16:00:00+08:00"}]),
        ("label", ["beta"]),
    ]:
        response = await client.get(
            f"/v1/{NAME}", params={"sort": sort, "cursor": _cursor([sort], values)}
        )
        assert response.status_code == 200, (sort, response.text)
