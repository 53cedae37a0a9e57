"""``python -m bench breakdown``: where a request's CPU goes, layer by layer, in-process.

Runs the app (``create_app()`` with its lifespan) inside this process, without HTTP, and
times the same request with more and more of the stack, one request at a time, counting
CPU (``time.process_time``) rather than wall time so the figures survive a noisy
machine. Each step is measured ``--rounds`` times and the fastest round is kept.

The layers, for get-by-id and for the list page:

1. ``asyncpg``: pool acquire, the app's SQL, rows to dicts (the floor, one at a time);
2. ``reader``: the repository function on the app's reader (``crm_api.db.reader``:
   SQLAlchemy-compiled statement run on the asyncpg read pool);
3. ``ASGI app``: the whole FastAPI app (routing, middleware, auth, authz, SQL, orjson);
   also with the principal dependency replaced by a fixed principal (auth cost), and
   ``/healthz`` and an unmatched ``/v1`` path (framework and routing cost).

The uvicorn/HTTP layer is what ``bench run`` adds on top (its "app: python ms").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg

from bench import asyncpg_url, sqlalchemy_url
from bench.load import LIST_PATH, RESULTS, SCENARIOS, Runner, _no_reset, scenario_statement


async def _cpu_per_call(fn: Callable[[], Awaitable[Any]], n: int, rounds: int) -> float:
    for _ in range(min(50, n)):
        await fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(n):
            await fn()
        best = min(best, (time.process_time() - t0) / n)
    return best * 1000


def _returning(value: Any) -> Callable[[], Awaitable[Any]]:
    async def dependency() -> Any:
        return value

    return dependency


class _Asgi:
    """Calls an ASGI app directly (no sockets), the way uvicorn would."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token
        self.status: set[int] = set()

    async def get(self, path: str) -> None:
        await self.call("GET", path)

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        await self.call("POST", path, body, {"content-type": "application/json", **(headers or {})})

    async def call(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        p, _, qs = path.partition("?")
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        if body:
            extra.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": p,
            "raw_path": p.encode(),
            "query_string": qs.encode(),
            "root_path": "",
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"authorization", f"Bearer {self.token}".encode()),
                *extra,
            ],
            "state": {},
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status.add(message["status"])

        await self.app(scope, receive, send)


async def breakdown(url: str, n: int, rounds: int) -> list[tuple[str, float]]:
    from crm_api.auth.dependencies import get_principal
    from crm_api.config import Settings
    from crm_api.customer import repository as repo
    from crm_api.customer.schemas import CustomerListQuery
    from crm_api.db.engine import create_database
    from crm_api.kit import resource as kit
    from crm_api.main import create_app

    args = argparse.Namespace(
        database_url=url, client="python", token=None, sample=1000, search_term="华信"
    )
    runner = Runner(args)
    url = asyncpg_url(url)
    get_sc = next(s for s in SCENARIOS if s.name == "get")
    list_sc = next(s for s in SCENARIOS if s.name == "list")
    conn = await asyncpg.connect(url)
    try:
        login = await runner.load_login(conn, get_sc.login)
        ids, _ = await runner.ids_for(conn, get_sc)
        get_st = await scenario_statement(login.access, get_sc, get_sc.path)
        list_st = await scenario_statement(login.access, list_sc, LIST_PATH)
    finally:
        await conn.close()
    one_id = uuid.UUID(ids[0])
    out: list[tuple[str, float]] = []

    async def measure(label: str, fn: Callable[[], Awaitable[Any]]) -> None:
        ms = await _cpu_per_call(fn, n, rounds)
        out.append((label, ms))
        print(f"  {label:<62} {ms:7.3f} ms", flush=True)

    # 1. the floor, one request at a time
    pool = await asyncpg.create_pool(url, min_size=2, max_size=2, reset=_no_reset)

    async def floor(sql: str, params: list[Any]) -> None:
        async with pool.acquire() as c:
            [dict(r) for r in await c.fetch(sql, *params)]

    get_params = list(get_st.params)
    assert get_st.id_param is not None
    get_params[get_st.id_param] = one_id
    await measure(
        "get  asyncpg: acquire + SQL + dicts (floor)", lambda: floor(get_st.sql, get_params)
    )
    await measure(
        "list asyncpg: acquire + SQL + dicts (floor)", lambda: floor(list_st.sql, list_st.params)
    )
    await pool.close()

    # 2. the app's read path: reader pool + repository functions
    query = CustomerListQuery.model_validate(
        {"limit": 50, "lifecycle_stage": ["customer"], "sort": "-created_at"}
    )
    settings = Settings(database_url=sqlalchemy_url(url), db_read_pool_size=2)
    db = create_database(settings)

    async def rd_get() -> None:
        await kit.get_row(db.reads.reader, repo.R, login.access, repo.scoped(login.access), one_id)

    async def rd_list() -> None:
        await repo.list_page(db.reads.reader, login.access, query)

    await measure("get  reader: kit get_row (build, compile, acquire, run)", rd_get)
    await measure("list reader: repository.list_page (build, compile, acquire, run)", rd_list)
    await db.dispose()

    # 3. the whole ASGI app, in-process
    signing_key = "bench-breakdown-" + uuid.uuid4().hex + uuid.uuid4().hex
    for pre_ping in ("true",):  # reads no longer use the engine; pre-ping only on writes
        os.environ.update(
            CRM_DATABASE_URL=sqlalchemy_url(url),
            CRM_LOG_LEVEL="WARNING",
            CRM_DB_POOL_SIZE="2",
            CRM_DB_MAX_OVERFLOW="0",
            CRM_DB_POOL_PRE_PING=pre_ping,
            CRM_JWT_SIGNING_KEY=signing_key,
        )
        from crm_api.config import get_settings

        get_settings.cache_clear()
        app = create_app()
        startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await startup.put({"type": "lifespan.startup"})
        lifespan = asyncio.create_task(
            app(
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                startup.get,
                events.put,
            )
        )
        started = await events.get()
        if started["type"] != "lifespan.startup.complete":
            raise SystemExit(f"app start-up failed: {started}")

        class _Server:  # what Runner.mint_token needs
            signing_key = os.environ["CRM_JWT_SIGNING_KEY"]
            data_dir = get_settings().data_dir

        token = runner.mint_token(login, _Server())  # type: ignore[arg-type]
        client = _Asgi(app, token)
        tag = "pre-ping " + ("on" if pre_ping == "true" else "off")
        if pre_ping == "true":
            await measure(
                "ASGI app: GET /healthz (framework + middleware)", partial(client.get, "/healthz")
            )
            await measure(
                "ASGI app: GET /v1/customers/x/y (routing miss → 404)",
                partial(client.get, "/v1/customers/x/y"),
            )
        await measure(
            f"get  ASGI app: GET /v1/customers/{{id}}, {tag}",
            partial(client.get, f"/v1/customers/{one_id}"),
        )
        await measure(
            f"list ASGI app: GET {LIST_PATH[:34]}…, {tag}", partial(client.get, LIST_PATH)
        )
        if pre_ping == "true":
            st = app.state
            from crm_api.auth import tokens

            claims = tokens.verify(
                st.keyring,
                token,
                issuer=st.settings.jwt_issuer,
                audience=st.settings.jwt_audience,
                token_types=frozenset({"access"}),
            )
            principal = await st.principals.resolve(claims)

            app.dependency_overrides[get_principal] = _returning(principal)
            await measure(
                f"get  ASGI app, principal dependency stubbed, {tag}",
                partial(client.get, f"/v1/customers/{one_id}"),
            )
            await measure(
                f"list ASGI app, principal dependency stubbed, {tag}",
                partial(client.get, LIST_PATH),
            )
            app.dependency_overrides.clear()
        if pre_ping == "true":
            await measure_create(app, client, measure, n)
        if client.status - {200, 201, 404}:
            raise SystemExit(f"unexpected statuses {client.status}")
        await startup.put({"type": "lifespan.shutdown"})
        await events.get()
        await lifespan
    return out


class _RoundTrips:
    """Counts what the write engine sends: statements (``before_cursor_execute``), the
    transaction's BEGIN/COMMIT/ROLLBACK, and pool checkouts (each one ping, a
    ``SELECT 1`` on the driver connection, when pre-ping is on). The read pool is plain
    asyncpg and not counted (a create does not use it)."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.counts: dict[str, int] = {}
        self.statements: dict[str, int] = {}
        sync = engine.sync_engine

        def bump(name: str) -> Callable[..., None]:
            def listener(*_: Any, **__: Any) -> None:
                self.counts[name] = self.counts.get(name, 0) + 1

            return listener

        def statement(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
            self.counts["statements"] = self.counts.get("statements", 0) + 1
            head = " ".join(sql.split())[:70]
            self.statements[head] = self.statements.get(head, 0) + 1

        event.listen(sync, "before_cursor_execute", statement)
        for name in ("begin", "commit", "rollback"):
            event.listen(sync, name, bump(name))
        event.listen(sync.pool, "checkout", bump("checkout"))

    def reset(self) -> None:
        self.counts.clear()
        self.statements.clear()


async def measure_create(
    app: Any,
    client: _Asgi,
    measure: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[None]],
    n: int,
) -> None:
    """``POST /v1/customers`` (the load run's body, unique names; deleted at the end by
    ``bench run``'s clean-up or :func:`bench.load.delete_created`): CPU per request, and
    statements and round trips per request, without and with an ``Idempotency-Key``."""
    from bench.load import CREATE_BODY

    counter = _RoundTrips(app.state.db.engine)
    seq = iter(range(10**9))

    def body() -> bytes:
        return CREATE_BODY.replace("{n}", f"bd-{uuid.uuid4().hex[:8]}-{next(seq)}").encode()

    async def create() -> None:
        await client.post("/v1/customers", body())

    async def create_keyed() -> None:
        await client.post("/v1/customers", body(), {"idempotency-key": uuid.uuid4().hex})

    for label, fn in (
        ("create ASGI app: POST /v1/customers", create),
        ("create ASGI app: POST /v1/customers + Idempotency-Key", create_keyed),
    ):
        await measure(label, fn)
        counter.reset()
        for _ in range(20):
            await fn()
        per = {k: v / 20 for k, v in sorted(counter.counts.items())}
        print(f"      per request: {per}", flush=True)
        for sql, times in counter.statements.items():
            print(f"        {times / 20:4.1f} x {sql}", flush=True)


# --- where the time goes: py-spy samples of the in-process app, grouped by layer ---------
#: (bucket, pattern over "function (file:line)") — a sample goes to the bucket of its
#: deepest matching frame, except that anything under the pre-ping counts as pre-ping.
BUCKETS: list[tuple[str, str]] = [
    (
        "routing (FastAPI route matching)",
        r"^(\S+\.)?(_match|matches|_get_routes_version|effective_candidates|_handle_selected) ",
    ),
    (
        "FastAPI dependency machinery",
        r"^(solve_dependencies|_solve_generator|"
        r"_asynccontextmanager_with_shielded_exit|run_endpoint_function) ",
    ),
    (
        "query parameters → CustomerListQuery",
        r"^(request_params_to_args|_validate_value\w*|"
        r"_get_multidict_value) ",
    ),
    ("crm middleware (request id, limits, metrics, log)", r"^RequestMiddleware\."),
    (
        "authentication (bearer, token cache, principal)",
        r"^(get_principal|HTTPBearer\.__call__|_verify_cached|PrincipalResolver\.resolve) ",
    ),
    (
        "authorization (require → scope)",
        r"^(require\.<locals>\.dependency|"
        r"PolicyEngine\.scope_for) ",
    ),
    (
        "statement building (scope, filters, keyset)",
        r"^(filtered|scoped|apply_keyset|scope_clause|scope_of|one_of) \(crm_api",
    ),
    (
        "DB connection checkout + return (SQLAlchemy pool)",
        r"^(_read_connection|AsyncConnection\.start|AsyncConnection\.close|Engine\.connect|"
        r"Connection\.close|_run_to_completion|_ConnectionFairy\.\w+|\w*raw_connection) ",
    ),
    (
        "SQLAlchemy execute + result rows",
        r"^(get_row|fetch_page|AsyncConnection\.execute|Connection\.execute \(sqlalchemy|"
        r"AsyncAdapt_asyncpg_cursor\.\w+|\w*Result\w*\.\w+ \(sqlalchemy)",
    ),
    ("SQLAlchemy compile cache key", r"^(\S+\.)?(_generate_cache_key|_compile_w_cache) "),
    ("asyncpg driver (protocol, codecs; the floor pays this too)", r"\(asyncpg/"),
    (
        "jsonb → dict (json.loads, SQLAlchemy's asyncpg codec; the floor keeps text)",
        r"^(\S+\.)?(_jsonb_decoder|_json_decoder) |\(json/",
    ),
    ("event loop (uvloop: I/O, wake-ups, task switches)", r"^Runner\.run \(asyncio"),
    (
        "response: masking, ETag, orjson",
        r"^(json_response|dumps|_with_etag|present|page_envelope|encode_cursor) ",
    ),
]
PRE_PING = (
    "checkout ping (SELECT 1)",
    r"^(\S+\.)?(_ping_on_checkout|_async_ping|do_ping|_do_ping_w_event) ",
)


def bucket_samples(raw_path: str) -> list[tuple[str, float]]:
    import re
    from collections import Counter

    patterns = [(name, re.compile(rx)) for name, rx in BUCKETS]
    pre_ping = re.compile(PRE_PING[1])
    counts: Counter[str] = Counter()
    total = 0
    for line in Path(raw_path).read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, n_text = line.rstrip().rpartition(" ")
        if not n_text.isdigit():
            continue
        n = int(n_text)
        total += n
        frames = stack.split(";")
        chosen = "other (Starlette/FastAPI plumbing, asyncio, uvloop)"
        if any(pre_ping.search(f) for f in frames):
            chosen = PRE_PING[0]
        else:
            for frame in reversed(frames):
                hit = next((b for b, rx in patterns if rx.search(frame)), None)
                if hit:
                    chosen = hit
                    break
        counts[chosen] += n
    return [(k, v / total) for k, v in counts.most_common()] if total else []


async def profile_app(url: str, seconds: float) -> None:
    """The whole app in-process, get then list, each for ``seconds`` under py-spy."""
    import shutil
    import subprocess
    import sys

    from crm_api.config import get_settings
    from crm_api.main import create_app

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not shutil.which(spy):
        raise SystemExit("py-spy not found (pip install py-spy)")
    args = argparse.Namespace(
        database_url=url, client="python", token=None, sample=1000, search_term="华信"
    )
    runner = Runner(args)
    get_sc = next(s for s in SCENARIOS if s.name == "get")
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        login = await runner.load_login(conn, get_sc.login)
        ids, _ = await runner.ids_for(conn, get_sc)
    finally:
        await conn.close()
    os.environ.update(
        CRM_DATABASE_URL=sqlalchemy_url(url),
        CRM_LOG_LEVEL="WARNING",
        CRM_DB_POOL_SIZE="4",
        CRM_DB_MAX_OVERFLOW="0",
        CRM_JWT_SIGNING_KEY="bench-profile-" + uuid.uuid4().hex * 2,
    )
    get_settings.cache_clear()
    app = create_app()
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, startup.get, events.put)
    )
    await events.get()

    class _Server:
        signing_key = os.environ["CRM_JWT_SIGNING_KEY"]
        data_dir = get_settings().data_dir

    client = _Asgi(app, runner.mint_token(login, _Server()))  # type: ignore[arg-type]
    tmp = RESULTS
    tmp.mkdir(parents=True, exist_ok=True)
    for label, path_of in (
        ("get", lambda: f"/v1/customers/{ids[hash(time.time()) % len(ids)]}"),
        ("list", lambda: LIST_PATH),
    ):
        for _ in range(100):
            await client.get(path_of())
        out = tmp / f"py-spy-inprocess-{label}.txt"
        proc = subprocess.Popen(  # noqa: ASYNC220 - py-spy samples this very process
            [
                spy,
                "record",
                "-p",
                str(os.getpid()),
                "-d",
                str(int(seconds)),
                "-r",
                "400",
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
                "--gil",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + seconds + 1.5
        done = 0
        cpu0 = time.process_time()
        while time.monotonic() < deadline:
            await client.get(path_of())
            done += 1
        cpu = time.process_time() - cpu0
        proc.wait(30)
        print(
            f"\n{label}: {done} requests, {cpu / done * 1000:.3f} ms CPU each "
            f"(in-process, one at a time, no HTTP)"
        )
        for name, share in bucket_samples(str(out)):
            print(f"  {share:6.1%}  {name}")
        print(f"  (raw samples: {out})")
    await startup.put({"type": "lifespan.shutdown"})
    await events.get()
    await lifespan


# --- orders (issue 10): create, one customer's orders, my orders ---------------------------
class _ReadCount:
    """Counts the statements the read pool runs (``ReadPool.fetch``: every statement of a
    request that only reads), beside :class:`_RoundTrips` for the write engine."""

    def __init__(self) -> None:
        from crm_api.db.reader import ReadPool

        self.n = 0
        original = ReadPool.fetch

        async def fetch(pool: Any, sql: str, args: Any) -> Any:
            self.n += 1
            return await original(pool, sql, args)

        self._restore = (ReadPool, original)
        ReadPool.fetch = fetch  # type: ignore[method-assign]

    def close(self) -> None:
        cls, original = self._restore
        cls.fetch = original  # type: ignore[method-assign]


async def orders_breakdown(url: str, n: int, rounds: int) -> None:
    """The order scenarios of ``bench run --scenarios orders``, in-process: CPU per request
    and statements per request (write engine: statements, BEGIN/COMMIT, checkouts; read
    pool: statements)."""
    import random

    from crm_api.config import get_settings
    from crm_api.main import create_app

    args = argparse.Namespace(
        database_url=url, client="python", token=None, sample=1000, search_term="华信"
    )
    runner = Runner(args)
    by_name = {s.name: s for s in SCENARIOS}
    create_sc, customer_sc, mine_sc = (
        by_name["order_create"],
        by_name["orders_customer"],
        by_name["orders_mine"],
    )
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        admin = await runner.load_login(conn, create_sc.login)
        rep = await runner.load_login(conn, mine_sc.login)
        ordered, _ = await runner.ids_for(conn, customer_sc)
        await runner.order_refs_for(conn)
    finally:
        await conn.close()
    body_template = runner.body_of(create_sc)
    assert body_template is not None
    os.environ.update(
        CRM_DATABASE_URL=sqlalchemy_url(url),
        CRM_LOG_LEVEL="WARNING",
        CRM_DB_POOL_SIZE="2",
        CRM_DB_MAX_OVERFLOW="0",
        CRM_JWT_SIGNING_KEY="bench-breakdown-" + uuid.uuid4().hex + uuid.uuid4().hex,
    )
    get_settings.cache_clear()
    app = create_app()
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, startup.get, events.put)
    )
    started = await events.get()
    if started["type"] != "lifespan.startup.complete":
        raise SystemExit(f"app start-up failed: {started}")

    class _Server:
        signing_key = os.environ["CRM_JWT_SIGNING_KEY"]
        data_dir = get_settings().data_dir

    as_admin = _Asgi(app, runner.mint_token(admin, _Server()))  # type: ignore[arg-type]
    as_rep = _Asgi(app, runner.mint_token(rep, _Server()))  # type: ignore[arg-type]
    writes = _RoundTrips(app.state.db.engine)
    reads = _ReadCount()
    seq = iter(range(10**9))

    async def create() -> None:
        await as_admin.post(
            "/v1/orders",
            body_template.encode(),
            {"idempotency-key": f"bd-order-{uuid.uuid4().hex}-{next(seq)}"},
        )

    async def customer_orders() -> None:
        await as_admin.get(f"/v1/customers/{random.choice(ordered)}/orders?limit=50")

    async def my_orders() -> None:
        await as_rep.get("/v1/orders?limit=50")

    try:
        for label, fn in (
            ("order_create: POST /v1/orders, 3 lines, new Idempotency-Key", create),
            ("orders_customer: GET /v1/customers/{id}/orders?limit=50 (admin)", customer_orders),
            ("orders_mine: GET /v1/orders?limit=50 (rep)", my_orders),
        ):
            ms = await _cpu_per_call(fn, n, rounds)
            print(f"  {label:<66} {ms:7.3f} ms", flush=True)
            writes.reset()
            reads.n = 0
            for _ in range(20):
                await fn()
            per = {k: v / 20 for k, v in sorted(writes.counts.items())}
            per["read statements"] = reads.n / 20
            print(f"      per request: {per}", flush=True)
            for sql, times in writes.statements.items():
                print(f"        {times / 20:4.1f} x {sql}", flush=True)
    finally:
        reads.close()
        await startup.put({"type": "lifespan.shutdown"})
        await events.get()
        await lifespan
    for c in (as_admin, as_rep):
        if c.status - {200, 201}:
            raise SystemExit(f"unexpected statuses {c.status}")


def breakdown_command(
    url: str, n: int, rounds: int, profile: float = 0, orders: bool = False
) -> int:
    import uvloop

    if orders:
        print(
            f"orders: CPU per request, one at a time, best of {rounds} x {n} "
            f"(load average {os.getloadavg()[0]:.1f}):"
        )
        uvloop.run(orders_breakdown(url, n, rounds))
        from bench.load import delete_created

        print(f"deleted {uvloop.run(delete_created(asyncpg_url(url)))} records made by create")
        return 0
    if profile:
        uvloop.run(profile_app(url, profile))
        return 0
    print(
        f"CPU per request, one at a time, best of {rounds} x {n} "
        f"(load average {os.getloadavg()[0]:.1f}):"
    )
    uvloop.run(breakdown(url, n, rounds))
    from bench.load import delete_created

    print(f"deleted {uvloop.run(delete_created(asyncpg_url(url)))} customers made by create")
    return 0
