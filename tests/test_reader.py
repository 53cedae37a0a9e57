"""The read path (crm_api.db.reader): SQLAlchemy-compiled statements run on asyncpg give
what SQLAlchemy's own execution gives, and the read pool queues fairly and bounds waits.

``CRM_READ_PATH=engine`` (the fallback through SQLAlchemy's AsyncEngine) answers the same
interface: the tests that are not about asyncpg's pool run on both paths; the start-up
self-check refuses the asyncpg path, naming what is missing, when SQLAlchemy's private API
changed.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import bindparam, column, func, literal, select, text, values
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from conftest import problem
from crm_api.config import Settings
from crm_api.db import reader as reader_module
from crm_api.db.engine import Database, create_database
from crm_api.db.reader import EngineReadPool, ReadPathUnavailable, ReadPool
from crm_api.main import create_app
from crm_api.models.customer import Customer

PATHS = ["asyncpg", "engine"]


def _database(settings: Settings, database_url: str, path: str, **update: Any) -> Database:
    return create_database(
        settings.model_copy(
            update={"read_path": path, "db_read_pool_size": 1, "db_pool_timeout_s": 0.5, **update}
        ),
        database_url,
    )


@pytest.fixture(params=PATHS)
async def db(request, settings: Settings, database_url: str) -> AsyncIterator[Database]:
    database = _database(settings, database_url, request.param)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def asyncpg_db(settings: Settings, database_url: str) -> AsyncIterator[Database]:
    database = _database(settings, database_url, "asyncpg")
    try:
        yield database
    finally:
        await database.dispose()


#: The advisory lock a held read waits on (a read blocked until the test lets it go: no
#: sleeps that a busy machine could outlast).
HOLD_KEY = 8_730_001


@asynccontextmanager
async def held_read(db: Database, engine: AsyncEngine) -> AsyncIterator[None]:
    """While inside, ``db``'s read pool of one is busy with a read waiting on a lock."""
    async with engine.connect() as holder:
        await holder.execute(text(f"SELECT pg_advisory_lock({HOLD_KEY})"))
        blocked = asyncio.create_task(
            db.reads.reader.execute(text(f"SELECT pg_advisory_xact_lock({HOLD_KEY})"))
        )
        try:
            for _ in range(3000):  # until the read waits on the lock (a safety net, not timing)
                waiting = (
                    await holder.execute(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            f"AND objid = {HOLD_KEY} AND NOT granted"
                        )
                    )
                ).scalar_one()
                if waiting:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the held read never reached the server")
            yield
        finally:
            await holder.execute(text(f"SELECT pg_advisory_unlock({HOLD_KEY})"))
            await holder.commit()
            await blocked


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


async def test_waiters_are_served_first_come_first_served(asyncpg_db: Database) -> None:
    reader, order = asyncpg_db.reads.reader, []
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


async def test_a_wait_past_the_pool_timeout_fails_and_frees_nothing(
    db: Database, engine: AsyncEngine
) -> None:
    reader = db.reads.reader
    async with held_read(db, engine):
        # asyncpg path: its own turn queue times out; engine path: SQLAlchemy's pool does
        with pytest.raises((TimeoutError, PoolTimeout)):
            await reader.execute(text("SELECT 1"))
    assert (await reader.execute(text("SELECT 2"))).scalar_one() == 2


@pytest.mark.parametrize("path", PATHS)
async def test_pool_exhaustion_is_a_503_problem(
    app, client, engine, settings, database_url, path
) -> None:
    real = app.state.db
    db = app.state.db = _database(settings, database_url, path)
    try:
        async with held_read(db, engine):
            response = await client.get("/v1/customers")
            problem(response, 503, "database_unavailable")
            assert response.headers["retry-after"] == "1"
        assert (await client.get("/v1/customers")).status_code == 200
    finally:
        await db.dispose()
        app.state.db = real


# --- the start-up self-check and the engine fallback ------------------------------------


def test_the_read_path_setting_picks_the_pool(settings: Settings, database_url: str) -> None:
    assert settings.model_copy(update={"read_path": "asyncpg"}).read_path == "asyncpg"
    assert Settings(database_url=database_url).read_path in PATHS
    for path, cls in (("asyncpg", ReadPool), ("engine", EngineReadPool)):
        database = _database(settings, database_url, path)
        assert isinstance(database.reads, cls)


def _defining_class(owner: type, name: str) -> type:
    return next(c for c in owner.__mro__ if name in vars(c))


@pytest.mark.parametrize(
    ("owner", "name"),
    reader_module.PRIVATE_API,
    ids=[f"{o.__name__}.{n}" for o, n in reader_module.PRIVATE_API],
)
def test_a_missing_private_attribute_refuses_the_asyncpg_path(
    settings, database_url, monkeypatch, owner, name
) -> None:
    monkeypatch.delattr(_defining_class(owner, name), name)
    with pytest.raises(ReadPathUnavailable) as refused:
        _database(settings, database_url, "asyncpg")
    message = str(refused.value)
    assert f"{owner.__name__}.{name}" in message, message
    assert f"SQLAlchemy {sqlalchemy.__version__}" in message, message
    assert "CRM_READ_PATH=engine" in message, message


def test_a_changed_signature_or_shape_refuses_the_asyncpg_path(
    settings, database_url, monkeypatch
) -> None:
    real_construct = SQLCompiler.construct_params

    def construct_params(self, params=None, extracted_parameters=None, escape_names=True):  # type: ignore[no-untyped-def]
        return real_construct(self, params, extracted_parameters, escape_names)

    monkeypatch.setattr(SQLCompiler, "construct_params", construct_params)
    with pytest.raises(ReadPathUnavailable, match=r"construct_params\(_collected_params"):
        _database(settings, database_url, "asyncpg")
    monkeypatch.undo()

    # SQLAlchemy 2.0's _compile_w_cache returned three values, not four
    real_compile = ClauseElement._compile_w_cache

    def three(self, *args, **kw):  # type: ignore[no-untyped-def]
        return real_compile(self, *args, **kw)[:3]

    monkeypatch.setattr(ClauseElement, "_compile_w_cache", three)
    with pytest.raises(ReadPathUnavailable, match="_compile_w_cache") as refused:
        _database(settings, database_url, "asyncpg")
    assert "CRM_READ_PATH=engine" in str(refused.value)
    assert inspect.signature(real_construct).parameters  # (the real one is back)


@pytest.fixture
def private_api_gone(monkeypatch):
    """As if a SQLAlchemy release had dropped an attribute the asyncpg path uses (one
    SQLAlchemy itself does not need, so the engine path can be seen working)."""
    monkeypatch.setattr(
        reader_module,
        "PRIVATE_API",
        (*reader_module.PRIVATE_API, (SQLCompiler, "_gone_in_a_later_release")),
    )


async def test_the_app_does_not_start_on_a_broken_asyncpg_path(
    settings, database_url, private_api_gone
) -> None:
    app = create_app(settings.model_copy(update={"read_path": "asyncpg"}), database_url)
    with pytest.raises(ReadPathUnavailable, match=r"SQLCompiler\._gone_in_a_later_release"):
        async with app.router.lifespan_context(app):
            pass


async def test_the_engine_path_starts_and_reads_without_the_private_api(
    settings, database_url, private_api_gone, engine
) -> None:
    app = create_app(settings.model_copy(update={"read_path": "engine"}), database_url)
    async with app.router.lifespan_context(app):
        assert isinstance(app.state.db.reads, EngineReadPool)
        result = await app.state.db.reads.reader.execute(
            select(literal(1).label("a")).where(literal(1).in_([1, 2]))
        )
        assert result.keys() == ("a",) and result.scalar_one() == 1
        assert await app.state.db.reads.probe("SELECT 7", 5.0) == 7


# --- the same answers to database faults on both paths ------------------------------------


async def _terminate_app_backends(engine: AsyncEngine) -> None:
    """pg_terminate_backend on this test database's app connections (reads and writes; as
    tests/test_db_faults.py does, never another database's)."""
    async with engine.connect() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'crm-api' AND datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        )
        await conn.commit()


@pytest.mark.parametrize("path", PATHS)
async def test_read_faults_answer_the_same_on_both_paths(
    app, client, engine, settings, database_url, path
) -> None:
    """A lock wait past lock_timeout is 503 database_busy, past statement_timeout 503
    query_timeout, a killed connection 503 database_unavailable or a fresh one; the path
    recovers by itself. The lock is held by the test until released: no timing luck."""
    from factories.customers import create_customer
    from factories.identity import make_org_unit, make_user

    owner = await make_user(engine, org_unit=await make_org_unit(engine))
    customer = await create_customer(client, owner)
    url = f"/v1/customers/{customer['id']}"
    real = app.state.db
    answers = {"db_lock_timeout_ms": 200}, {"db_lock_timeout_ms": 0, "db_statement_timeout_ms": 300}
    try:
        for update, code in zip(answers, ("database_busy", "query_timeout"), strict=True):
            db = app.state.db = _database(
                settings, database_url, path, db_read_pool_size=2, **update
            )
            try:
                async with engine.connect() as holder:
                    await holder.execute(text("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"))
                    for target in (url, "/v1/customers"):
                        response = await client.get(target)
                        problem(response, 503, code)
                        assert response.headers["retry-after"] == "1"
                    await holder.rollback()
                assert (await client.get(url)).status_code == 200
                await _terminate_app_backends(engine)
                for _ in range(3):
                    response = await client.get(url)
                    if response.status_code == 503:
                        problem(response, 503, "database_unavailable")
                    else:
                        assert response.status_code == 200, response.text
                assert (await client.get(url)).status_code == 200
            finally:
                app.state.db = real
                await db.dispose()
    finally:
        app.state.db = real
