"""The read path (crm_api.db.reader): SQLAlchemy-compiled statements run on asyncpg give
what SQLAlchemy's own execution gives, and the read pool queues fairly and bounds waits."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import bindparam, column, func, literal, select, text, values
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_api.config import Settings
from crm_api.db.engine import Database, create_database
from crm_api.models.customer import Customer


@pytest.fixture
async def db(settings: Settings, database_url: str) -> AsyncIterator[Database]:
    database = create_database(
        settings.model_copy(update={"db_read_pool_size": 1, "db_pool_timeout_s": 0.5}),
        database_url,
    )
    try:
        yield database
    finally:
        await database.dispose()


async def test_results_match_sqlalchemy(db: Database, engine: AsyncEngine) -> None:
    rows = values(column("n"), column("word"), name="v").data([(1, "一"), (2, "two"), (3, None)])
    statements = [
        select(rows.c.n, rows.c.word).order_by(rows.c.n),
        # expanding IN, a repeated parameter, a JSON value and an array
        select(rows.c.n).where(rows.c.n.in_([1, 3]), rows.c.n != bindparam("x", 2)),
        select(literal({"a": [1, 2], "名": None}, JSONB), func.array_agg(rows.c.n)),
        select(literal(uuid.UUID(int=7)), func.now() - func.now()),
        select(Customer.id).where(Customer.id == uuid.uuid4()),
    ]
    async with engine.connect() as conn:
        for stmt in statements:
            expected = [tuple(r) for r in (await conn.execute(stmt)).all()]
            got = (await db.reads.reader.execute(stmt)).all()
            assert [tuple(r) for r in got] == expected, stmt


async def test_result_api(db: Database) -> None:
    reader = db.reads.reader
    one = await reader.execute(select(literal(1).label("a"), literal("x").label("b")))
    assert one.keys() == ("a", "b")
    row = one.one()
    assert (row.a, row.b, row[0]) == (1, "x", 1)
    with pytest.raises(AttributeError):
        _ = row.missing
    assert one.mappings().all() == [{"a": 1, "b": "x"}]
    assert one.scalar_one() == 1 and one.scalar() == 1
    empty = await reader.execute(select(literal(1)).where(literal(False)))
    assert empty.first() is None and empty.scalar_one_or_none() is None
    with pytest.raises(NoResultFound):
        empty.one()
    many = await reader.execute(text("SELECT generate_series(1, 3) AS n"))
    assert many.scalars().all() == [1, 2, 3] and [r.n for r in many] == [1, 2, 3]
    with pytest.raises(MultipleResultsFound):
        many.one_or_none()


async def test_waiters_are_served_first_come_first_served(db: Database) -> None:
    reader, order = db.reads.reader, []
    await reader.execute(text("SELECT 1"))  # the pool of one is open

    async def read(i: int) -> None:
        await reader.execute(text(f"SELECT {i}, pg_sleep(0.02)"))
        order.append(i)

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(read(i)))
        await asyncio.sleep(0)  # each starts waiting before the next is created
    await asyncio.gather(*tasks)
    assert order == list(range(8))


async def test_a_wait_past_the_pool_timeout_fails_fast_and_frees_nothing(db: Database) -> None:
    reader = db.reads.reader
    slow = asyncio.create_task(reader.execute(text("SELECT pg_sleep(1.5)")))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await reader.execute(text("SELECT 1"))
    assert time.monotonic() - started < 1.2  # the pool timeout (0.5 s), not the slow query
    await slow
    assert (await reader.execute(text("SELECT 2"))).scalar_one() == 2


async def test_pool_exhaustion_is_a_503_problem(app, client, monkeypatch) -> None:
    reads = app.state.db.reads

    async def exhausted(sql: str, args: object) -> object:
        raise TimeoutError("no read connection became free in time")

    monkeypatch.setattr(reads, "fetch", exhausted)
    response = await client.get("/v1/customers")
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert response.headers["retry-after"] == "1"
