"""Database faults answer 503 with Retry-After, never 500 and never a hang.

Two levels: every failure class, constructed the way asyncpg raises it (the read path) and
the way SQLAlchemy wraps it (the write path), through the real problem handler; and real
faults against the test server (a table lock, terminated backends) or through a proxy the
test controls (a frozen server, refused new connections) — never by stopping the
PostgreSQL that other test runs share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from asyncpg.exceptions._base import PostgresMessage
from fastapi import FastAPI, Request
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from conftest import problem
from crm_api.db.engine import create_database
from crm_api.errors import install_error_handlers
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user
from pgproxy import PgProxy

# --- every class, through the real handler ------------------------------------------------


def _pg(sqlstate: str, message: str = "server said no") -> BaseException:
    """The asyncpg exception the driver raises for ``sqlstate``."""
    cls = PostgresMessage.get_message_class_for_sqlstate(sqlstate)
    exc: BaseException = cls(message)
    if getattr(exc, "sqlstate", None) != sqlstate:  # a class-wide base: say which one
        exc.sqlstate = sqlstate  # type: ignore[attr-defined]
    return exc


def _wrapped(driver_error: BaseException) -> DBAPIError:
    """``driver_error`` as SQLAlchemy's asyncpg dialect raises it: translated into the
    adapted DB-API error (carrying ``sqlstate``), itself wrapped in a ``DBAPIError``."""
    dbapi = asyncpg_dialect.import_dbapi()
    adapted = dbapi.Error(f"{type(driver_error)}: {driver_error}")
    adapted.pgcode = adapted.sqlstate = getattr(driver_error, "sqlstate", None)
    adapted.__cause__ = driver_error
    wrapped = DBAPIError.instance("SELECT 1", {}, adapted, dbapi.Error)
    assert isinstance(wrapped, DBAPIError)
    return wrapped


UNAVAILABLE: list[tuple[str, Any]] = [
    ("57P01 admin shutdown", lambda: asyncpg.AdminShutdownError("terminating connection")),
    ("57P02 crash shutdown", lambda: _pg("57P02")),
    ("57P03 cannot connect now", lambda: asyncpg.CannotConnectNowError("starting up")),
    ("53300 too many connections", lambda: asyncpg.TooManyConnectionsError("too many")),
    ("53100 disk full", lambda: _pg("53100")),
    ("53200 out of memory", lambda: _pg("53200")),
    ("08006 connection failure", lambda: _pg("08006")),
    ("08001 cannot establish", lambda: _pg("08001")),
    ("08003 no connection", lambda: asyncpg.ConnectionDoesNotExistError("closed mid-query")),
    ("InternalClientError", lambda: asyncpg.InternalClientError("protocol confusion")),
    ("InterfaceError", lambda: asyncpg.InterfaceError("connection is closed")),
    ("ConnectionRefusedError", lambda: ConnectionRefusedError(111, "refused")),
    ("ConnectionResetError", lambda: ConnectionResetError(104, "reset by peer")),
    ("OSError", lambda: OSError(113, "no route to host")),
    ("TimeoutError", lambda: TimeoutError()),
]


def _app_raising(errors: dict[str, BaseException]) -> FastAPI:
    """A bare app with the real handlers whose one route raises ``errors[name]``."""
    app = FastAPI()
    install_error_handlers(app)

    async def boom(name: str, request: Request) -> None:
        raise errors[name]

    app.add_api_route("/boom/{name}", boom, methods=["GET", "HEAD", "POST", "PATCH"])
    return app


async def _ask(app: FastAPI, method: str, name: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await c.request(method, f"/boom/{name}")


@pytest.mark.parametrize("label,make", UNAVAILABLE, ids=[u[0] for u in UNAVAILABLE])
@pytest.mark.parametrize("wrap", [False, True], ids=["driver", "sqlalchemy"])
async def test_unavailable_database_is_503_with_retry_after(label, make, wrap) -> None:
    error = make()
    app = _app_raising({"x": _wrapped(error) if wrap else error})
    for method in ("GET", "POST"):
        response = await _ask(app, method, "x")
        problem(response, 503, "database_unavailable")
        assert response.headers["retry-after"] == "1"


async def test_pool_timeout_is_503_with_retry_after() -> None:
    app = _app_raising({"sa": PoolTimeout("QueuePool limit reached"), "read": TimeoutError()})
    for name in ("sa", "read"):
        response = await _ask(app, "POST", name)
        problem(response, 503, "database_unavailable")
        assert response.headers["retry-after"] == "1"


async def test_checkout_with_only_dead_connections_is_503_not_500() -> None:
    """SQLAlchemy gives up a checkout after three dead connections in a row (a restart
    under load) with InvalidRequestError "This connection is closed": no connection, so a
    503 with Retry-After; any other InvalidRequestError is a bug and stays a 500."""
    from sqlalchemy.exc import InvalidRequestError

    app = _app_raising(
        {
            "exhausted": InvalidRequestError("This connection is closed"),
            "bug": InvalidRequestError("Can't operate on closed transaction"),
        }
    )
    response = await _ask(app, "POST", "exhausted")
    problem(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "1"
    problem(await _ask(app, "POST", "bug"), 500, "internal_error")


@pytest.mark.parametrize("wrap", [False, True], ids=["driver", "sqlalchemy"])
async def test_statement_timeout_is_503_with_retry_after(wrap) -> None:
    error = asyncpg.QueryCanceledError("canceling statement due to statement timeout")
    app = _app_raising({"x": _wrapped(error) if wrap else error})
    response = await _ask(app, "GET", "x")
    problem(response, 503, "query_timeout")
    assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize("sqlstate", ["55P03", "40P01", "40001"])
@pytest.mark.parametrize("wrap", [False, True], ids=["driver", "sqlalchemy"])
async def test_lock_waits_are_503_for_reads_and_409_for_writes(sqlstate, wrap) -> None:
    error = _pg(sqlstate, "canceling statement due to lock timeout")
    app = _app_raising({"x": _wrapped(error) if wrap else error})
    for method in ("GET", "HEAD"):
        response = await _ask(app, method, "x")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
    problem(await _ask(app, "GET", "x"), 503, "database_busy")
    for method in ("POST", "PATCH"):
        response = await _ask(app, method, "x")
        problem(response, 409, "concurrent_update")
        assert response.headers["retry-after"] == "1"


async def test_other_database_errors_stay_what_they_are() -> None:
    app = _app_raising(
        {
            "syntax": _wrapped(_pg("42601", "syntax error")),  # a bug: 500, logged
            "range": _wrapped(_pg("22003", "integer out of range")),
            "encode": asyncpg.DataError("invalid input for query argument $1"),
        }
    )
    problem(await _ask(app, "GET", "syntax"), 500, "internal_error")
    problem(await _ask(app, "GET", "range"), 422, "invalid_value")
    problem(await _ask(app, "GET", "encode"), 422, "invalid_value")


# --- real faults ---------------------------------------------------------------------------


async def _owner(engine) -> dict[str, Any]:
    return await make_user(engine, org_unit=await make_org_unit(engine))


@pytest.fixture
async def short_lock_db(app, settings, database_url) -> AsyncIterator[None]:
    """The app's database with a 200 ms lock timeout (reads and writes)."""
    real = app.state.db
    app.state.db = create_database(
        settings.model_copy(update={"db_lock_timeout_ms": 200}), database_url
    )
    try:
        yield
    finally:
        await app.state.db.dispose()
        app.state.db = real


async def test_a_read_blocked_by_a_table_lock_is_503_not_409(client, engine, short_lock_db):
    customer = await create_customer(client, await _owner(engine))
    url = f"/v1/customers/{customer['id']}"
    async with engine.connect() as holder:
        await holder.execute(text("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"))
        for path in (url, "/v1/customers"):
            response = await client.get(path)
            problem(response, 503, "database_busy")
            assert response.headers["retry-after"] == "1"
        response = await client.patch(url, json={"grade": "A"})
        problem(response, 409, "concurrent_update")  # a write: 409 stays
        await holder.rollback()
    assert (await client.get(url)).status_code == 200


async def _terminate_app_backends(engine) -> int:
    """pg_terminate_backend on this test database's app connections (others' apps use the
    same application_name on other databases: never theirs)."""
    async with engine.connect() as conn:
        killed = (
            await conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'crm-api' AND datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            )
        ).scalar_one()
        await conn.commit()
    return int(killed)


async def test_terminated_backends_give_503_or_success_never_500(client, engine, app):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    url = f"/v1/customers/{customer['id']}"
    for _ in range(3):
        # fill both pools, then kill every connection they hold
        warm = await asyncio.gather(
            *(client.get(url) for _ in range(4)),
            client.patch(url, json={"grade": "B"}),
        )
        assert all(r.status_code in (200, 503) for r in warm), [r.text for r in warm]
        assert await _terminate_app_backends(engine) > 0
        responses = await asyncio.gather(
            *(client.get(url) for _ in range(6)),
            *(
                client.post(
                    "/v1/customers", json={"name": f"After kill {i}", "owner_id": str(owner["id"])}
                )
                for i in range(3)
            ),
        )
        for r in responses:
            assert r.status_code in (200, 201, 503), r.text
            if r.status_code == 503:
                problem(r, 503, "database_unavailable")
                assert r.headers["retry-after"] == "1"
    # recovered without a restart
    assert (await client.get(url)).status_code == 200
    assert (
        await client.post("/v1/customers", json={"name": "Recovered", "owner_id": str(owner["id"])})
    ).status_code == 201


# --- through a proxy: refused, frozen -------------------------------------------------------


@pytest.fixture
async def proxied(app, settings, database_url) -> AsyncIterator[PgProxy]:
    """The app's data path (reads and writes; not auth and policy) through a proxy, with
    short deadlines: statements 1 s (+1 s client margin), readiness 1 s, pool wait 2 s."""
    proxy = await PgProxy(database_url).start()
    real = app.state.db
    app.state.db = create_database(
        settings.model_copy(
            update={
                "db_statement_timeout_ms": 1000,
                "db_command_timeout_margin_s": 1.0,
                "readiness_timeout_s": 1.0,
                "db_pool_timeout_s": 2.0,
            }
        ),
        proxy.url,
    )
    try:
        yield proxy
    finally:
        proxy.thaw()
        proxy.refuse(None)
        await app.state.db.dispose()
        app.state.db = real
        await proxy.close()


async def test_refused_new_connections_fail_readiness_and_answer_503(
    client, anon_client, engine, proxied
):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    url = f"/v1/customers/{customer['id']}"
    assert (await anon_client.get("/readyz")).status_code == 200
    assert (await client.get(url)).status_code == 200  # a pooled read connection now
    for sqlstate in ("53300", "57P03"):
        proxied.refuse(sqlstate)
        response = await anon_client.get("/readyz")
        problem(response, 503, "database_unavailable")
        assert response.headers["retry-after"] == "1"
        # the open connection still serves; work needing a new one gets 503, not 500
        assert (await client.get(url)).status_code == 200
        responses = await asyncio.gather(*(client.get(url) for _ in range(8)))
        for r in responses:
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                problem(r, 503, "database_unavailable")
                assert r.headers["retry-after"] == "1"
        proxied.refuse(None)
    assert (await anon_client.get("/readyz")).status_code == 200


async def test_a_hung_database_answers_503_within_the_deadline(
    client, anon_client, engine, proxied
):
    """With the server frozen, requests on open connections and readiness answer 503 by
    themselves (statement deadline 2 s, readiness 1 s); the app recovers on thaw."""
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    url = f"/v1/customers/{customer['id']}"
    assert (await client.get(url)).status_code == 200
    proxied.freeze()
    try:
        async with asyncio.timeout(60):  # a hang fails the test instead of wedging the run
            started = time.monotonic()
            read, write, ready = await asyncio.gather(
                client.get(url),
                client.post("/v1/customers", json={"name": "Frozen", "owner_id": str(owner["id"])}),
                anon_client.get("/readyz"),
            )
            elapsed = time.monotonic() - started
        for r in (read, write):
            problem(r, 503, "database_unavailable")
            assert r.headers["retry-after"] == "1"
        problem(ready, 503, "database_unavailable")
        # the freeze lasts until thaw(): answering at all means the deadline fired; this
        # bound only says it was the deadline (seconds), not some minute-long default
        assert elapsed < 30, elapsed
        print(f"frozen database: 503s after {elapsed:.2f} s")
    finally:
        proxied.thaw()
    async with asyncio.timeout(60):
        for _ in range(50):  # the first request after thaw may still meet a dropped one
            if (await client.get(url)).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await client.get(url)).status_code == 200
        assert (await anon_client.get("/readyz")).status_code == 200
        created = await client.post(
            "/v1/customers", json={"name": "Thawed", "owner_id": str(owner["id"])}
        )
        assert created.status_code == 201, created.text


# --- pools: idle connections go back, exhaustion is 503 ------------------------------------


async def _eventually(check: Any, within_s: float = 30.0) -> None:
    """Poll ``check()`` until true; the bound is a safety net, not a timing assertion."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


async def test_idle_connections_are_released(client, engine, app, settings, database_url):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    url = f"/v1/customers/{customer['id']}"
    real = app.state.db
    db = app.state.db = create_database(
        settings.model_copy(update={"db_idle_timeout_s": 0.3}), database_url
    )
    db.reaper.start()
    try:
        responses = await asyncio.gather(
            *(client.get(url) for _ in range(4)),
            *(client.patch(url, json={"grade": g}) for g in "AB"),
        )
        assert all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
        assert db.reads.open_connections() > 0 and db.engine.pool.checkedin() > 0
        await _eventually(
            lambda: db.reads.open_connections() == 0 and db.engine.pool.checkedin() == 0
        )
        # released, not broken: the next requests open what they need
        assert (await client.get(url)).status_code == 200
        assert (await client.patch(url, json={"grade": "C"})).status_code == 200
    finally:
        await db.dispose()
        app.state.db = real


async def test_write_pool_exhaustion_is_503(client, engine, app, settings, database_url):
    owner = await _owner(engine)
    real = app.state.db
    db = app.state.db = create_database(
        settings.model_copy(
            update={"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout_s": 0.5}
        ),
        database_url,
    )
    try:
        async with db.engine.connect() as held:  # the pool's only connection
            await held.execute(text("SELECT 1"))
            response = await client.post(
                "/v1/customers", json={"name": "No slot", "owner_id": str(owner["id"])}
            )
            problem(response, 503, "database_unavailable")
            assert response.headers["retry-after"] == "1"
        created = await client.post(
            "/v1/customers", json={"name": "Slot free", "owner_id": str(owner["id"])}
        )
        assert created.status_code == 201, created.text
    finally:
        await db.dispose()
        app.state.db = real


# --- a hung server with the default deadlines: a quick 503, slow statements unharmed ------


def _deadline(settings) -> float:
    """The longest a request should wait on a hung server with ``settings``: a busy
    connection gets ``db_liveness_timeout_s`` to answer, then the probe
    ``db_connect_timeout_s`` (crm_api.db.liveness); a new connection, the ping and the
    pool wait are each shorter."""
    return settings.db_liveness_timeout_s + settings.db_connect_timeout_s


@pytest.fixture
async def proxied_defaults(app, settings, database_url) -> AsyncIterator[PgProxy]:
    """The app's data path through a proxy, with the deadlines as configured by default
    (statement timeout 15 s: only the liveness deadline can make the answer quick)."""
    assert settings.db_statement_timeout_ms == 15_000  # the defaults, not test values
    proxy = await PgProxy(database_url).start()
    real = app.state.db
    app.state.db = create_database(settings, proxy.url)
    try:
        yield proxy
    finally:
        proxy.thaw()
        await app.state.db.dispose()
        app.state.db = real
        await proxy.close()


async def _timed(request: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def test_a_hung_database_answers_503_within_seconds_by_default(
    client, anon_client, engine, settings, proxied_defaults
):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    url = f"/v1/customers/{customer['id']}"
    # connections in both pools: requests meet the hang on established connections
    warm = await asyncio.gather(
        client.get(url), client.get("/v1/customers"), client.patch(url, json={"grade": "B"})
    )
    assert [r.status_code for r in warm] == [200, 200, 200], [r.text for r in warm]
    proxied_defaults.freeze()
    try:
        async with asyncio.timeout(60):  # a hang fails the test instead of wedging the run
            answers = await asyncio.gather(
                _timed(client.get(url)),
                _timed(client.get("/v1/customers")),
                _timed(client.patch(url, json={"grade": "C"})),
                _timed(
                    client.post(
                        "/v1/customers", json={"name": "Hung", "owner_id": str(owner["id"])}
                    )
                ),
                _timed(anon_client.get("/readyz")),
            )
        for response, _ in answers:
            problem(response, 503, "database_unavailable")
            assert response.headers["retry-after"] == "1"
        slowest = max(elapsed for _, elapsed in answers)
        # 3x the configured deadline, so a busy machine cannot fail it; before the
        # liveness deadline these took 17-27 s (statement deadline + connect timeout)
        assert slowest < 3 * _deadline(settings), [round(e, 2) for _, e in answers]
        print(f"hung database, default deadlines: {[round(e, 2) for _, e in answers]} s")
    finally:
        proxied_defaults.thaw()
    async with asyncio.timeout(60):
        for _ in range(50):
            if (await client.get(url)).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await client.get(url)).status_code == 200
        assert (await anon_client.get("/readyz")).status_code == 200


async def test_a_slow_statement_on_a_live_server_runs_past_the_liveness_deadline(
    settings, database_url
):
    """The watchdog probes the server when a connection is busy past the deadline; a
    server that answers keeps its slow statements (read path and write path)."""
    # the probe's connect timeout generous, so that a busy machine's slow fork cannot
    # pass for a hung server; the liveness deadline as by default
    db = create_database(settings.model_copy(update={"db_connect_timeout_s": 20.0}), database_url)
    sleep_s = settings.db_liveness_timeout_s * 1.75
    try:
        read = await db.reads.reader.execute(text(f"SELECT pg_sleep({sleep_s}), 1 AS one"))
        assert read.one().one == 1
        async with db.sessionmaker() as session:
            written = await session.execute(text(f"SELECT pg_sleep({sleep_s}), 2 AS two"))
            assert written.one().two == 2
            await session.commit()
        assert db.watchdog.probes > 0, "the watchdog never looked"
        assert db.watchdog.terminated == 0
    finally:
        await db.dispose()


async def test_a_commit_cut_by_a_hung_server_is_not_reported_as_success(
    client, engine, app, proxied_defaults
):
    """The server stops answering at COMMIT: the outcome is unknown, so the client gets
    503, never 201; its retry with the same Idempotency-Key then yields exactly one
    customer, whichever way the cut COMMIT went."""
    from sqlalchemy import event

    owner = await _owner(engine)
    body = {"name": "Commit cut", "owner_id": str(owner["id"])}
    key = {"Idempotency-Key": "commit-cut-1"}

    def freeze_at_commit(_conn: Any) -> None:
        proxied_defaults.freeze()

    sync_engine = app.state.db.engine.sync_engine
    event.listen(sync_engine, "commit", freeze_at_commit)
    try:
        async with asyncio.timeout(60):
            cut = await client.post("/v1/customers", json=body, headers=key)
    finally:
        event.remove(sync_engine, "commit", freeze_at_commit)
        proxied_defaults.thaw()
    problem(cut, 503, "database_unavailable")
    assert cut.headers["retry-after"] == "1"
    async with asyncio.timeout(60):
        for _ in range(100):  # the first retries may still meet the cut connection's end
            retry = await client.post("/v1/customers", json=body, headers=key)
            if retry.status_code != 503:
                break
            await asyncio.sleep(0.1)
    assert retry.status_code == 201, retry.text
    async with engine.connect() as conn:
        ids = (
            (await conn.execute(text("SELECT id::text FROM customers WHERE name = 'Commit cut'")))
            .scalars()
            .all()
        )
    assert ids == [retry.json()["id"]]
