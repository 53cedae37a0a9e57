"""``q`` in the benchmark: the statements the app runs for one search request, captured
by running the repository's own ``list_page`` on a recording executor (a search is one to
five statements, chosen per request from the index statistics, so there is no single
statement to compile), for EXPLAIN and for counting matches.

``python -m bench search-explain --database-url … [--term T]…`` prints EXPLAIN (ANALYZE,
BUFFERS) of every statement of the rare, medium and frequent terms for admin, manager and
rep (the load runner's ``--scenarios search`` stores the same in its results file).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg

#: The terms of the ``search`` scenario group at 1,000,000 customers (`bench generate`,
#: seed 2026): matches among 989,815 live customers, by name/e-mail/phone or a contact name.
TERMS = {
    "rare": "联创科技实业",  # 41 customers
    "medium": "bluewater",  # 10,374 (1.0 %)
    "frequent": "有限",  # 461,909 (46.7 %)
}
LOGINS = {"admin": "admin@bench.crm", "manager": "manager@bench.crm", "rep": "rep@bench.crm"}


@dataclass
class Recording:
    """Executor for the repositories (the ``Reader`` interface) that runs each statement on
    one asyncpg connection and keeps its SQL and parameters."""

    conn: asyncpg.Connection
    statements: list[tuple[str, list[Any]]] = field(default_factory=list)

    async def execute(self, stmt: Any, values: Any = None) -> Any:
        from sqlalchemy.sql.elements import TextClause

        from bench.load import compile_for_asyncpg
        from crm_api.db.reader import ReadResult

        if isinstance(stmt, TextClause):
            compiled = stmt.compile(dialect=_dialect())
            sql = str(compiled)
            params = [compiled.params[n] for n in compiled.positiontup or ()]
        else:
            sql, params = compile_for_asyncpg(stmt, values)
        self.statements.append((sql, params))
        records = await self.conn.fetch(sql, *params)
        keys = tuple(records[0].keys()) if records else ()
        return ReadResult(keys, [tuple(r) for r in records])


def _dialect() -> Any:
    from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

    return pg_asyncpg.dialect()


#: The ``orders`` terms at 1,000,000 orders (bench_orders: 100,000 customers): orders
#: matched by number, external_ref or their customer's name.
ORDER_TERMS = {
    "rare (customer name)": "振华精密",  # 43 customers, 341 orders
    "rare (number)": "SO-00123456",  # 1 order, its number exactly
    "medium (customer name)": "northwind",  # 1,034 customers, 10,143 orders (1.0 %)
    "medium (number)": "so-0099",  # 10,000 orders (1.0 %)
    "frequent (external_ref)": "web-",  # 599,376 orders (60 %)
}


async def _list_page(rec: Recording, login: Any, path: str) -> dict[str, Any]:
    """``GET path`` (``/v1/customers?…`` or ``/v1/orders?…``) through its repository."""
    from urllib.parse import parse_qs, urlsplit

    from bench.load import list_query_from_path

    if not urlsplit(path).path.endswith("/orders"):
        from crm_api.customer import repository as customers

        query = list_query_from_path(path)
        return await customers.list_page(rec, login.access, query)  # type: ignore[arg-type]
    from crm_api.order import repository as orders
    from crm_api.order.schemas import OrderListQuery

    raw = parse_qs(urlsplit(path).query, keep_blank_values=True)
    data = {k: v[-1] for k, v in raw.items()}
    fields = OrderListQuery.model_fields
    query = OrderListQuery.model_validate(data)
    query.__pydantic_fields_set__ = {k for k in data if k in fields}
    return await orders.list_page(
        rec,  # type: ignore[arg-type]
        login.orders_access,
        query,
        customers=login.access,
    )


async def request_statements(
    conn: asyncpg.Connection, login: Any, path: str
) -> tuple[list[tuple[str, list[Any]]], int]:
    """The statements one ``GET path`` runs (stats loading left out) and the rows it got."""
    rec = Recording(conn)
    page = await _list_page(rec, login, path)
    kept = [(s, p) for s, p in rec.statements if "pg_stats" not in s]
    return kept, len(page["data"])


async def time_request(conn: asyncpg.Connection, login: Any, path: str, runs: int) -> float:
    """Median milliseconds of ``runs`` runs of the request's statements (SQL and the
    repository's Python; no HTTP), after one warm-up run."""
    import statistics
    import time

    await _list_page(Recording(conn), login, path)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await _list_page(Recording(conn), login, path)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def explain(conn: asyncpg.Connection, login: Any, path: str) -> str:
    statements, rows = await request_statements(conn, login, path)
    out = [f"{len(statements)} statement(s), {rows} rows"]
    for sql, params in statements:
        plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
        out.append("\n".join(r[0] for r in plan))
    return "\n\n".join(out)


async def count_matches(conn: asyncpg.Connection, access: Any, path: str) -> int:
    """How many customers ``access`` covers that the path's ``q`` matches."""
    from sqlalchemy import func, select

    from bench.load import compile_for_asyncpg, list_query_from_path
    from crm_api.customer import repository as repo
    from crm_api.kit import search
    from crm_api.resources import CUSTOMERS

    query = list_query_from_path(path)
    stmt = repo.filtered(access, query)
    if query.q:
        rec = Recording(conn)
        plan = await search.plan(rec, CUSTOMERS, access, query.q)  # type: ignore[arg-type]
        await plan.decide_match(rec)  # type: ignore[arg-type]
        stmt = plan.matched(stmt)
        values = plan.values
    else:
        values = {}
    sql, params = compile_for_asyncpg(select(func.count()).select_from(stmt.subquery()), values)
    return int(await conn.fetchval(sql, *params))


def main(argv: list[str] | None = None) -> int:
    from urllib.parse import quote

    from bench import asyncpg_url, default_url
    from bench.load import Runner

    p = argparse.ArgumentParser(prog="python -m bench search-explain")
    p.add_argument("--database-url", default=default_url())
    p.add_argument("--term", action="append", help="terms (default: rare, medium, frequent)")
    p.add_argument("--login", action="append", help="admin, manager, rep (default: all)")
    p.add_argument(
        "--resource",
        choices=("customers", "orders"),
        default="customers",
        help="orders: bench_orders' terms, found by number, external_ref or customer name",
    )
    p.add_argument(
        "--time", type=int, default=0, help="instead of EXPLAIN: the median ms of N runs"
    )
    p.add_argument("--sort", help="an explicit sort (default: none, relevance order)")
    args = p.parse_args(argv)
    default_terms = ORDER_TERMS if args.resource == "orders" else TERMS
    terms = args.term or list(default_terms.values())
    logins = args.login or list(LOGINS)

    async def run() -> None:
        conn = await asyncpg.connect(asyncpg_url(args.database_url))
        runner = Runner.__new__(Runner)
        runner.db_url = args.database_url
        runner.logins = {}
        try:
            for who in logins:
                login = await runner.load_login(conn, LOGINS[who])
                for term in terms:
                    path = f"/v1/{args.resource}?q={quote(term)}&limit=50"
                    if args.sort:
                        path += f"&sort={quote(args.sort)}"
                    if args.time:
                        ms = await time_request(conn, login, path, args.time)
                        print(f"{who}\tq={term}\t{ms:.1f} ms")
                    else:
                        print(f"\n=== {who}: q={term}\n{await explain(conn, login, path)}")
        finally:
            await conn.close()

    asyncio.run(run())
    return 0


# --- CPU per search request, in-process (``python -m bench search-cpu``) --------------------
async def cpu_per_request(
    url: str, logins: list[str], terms: dict[str, str], n: int, rounds: int
) -> list[tuple[str, str, float, float, int]]:
    """``(login, term label, Python ms, PostgreSQL ms, statements)`` per request of the
    repository's ``list_page`` on the app's own reader (one connection, one request at a
    time): Python is this process's CPU (``time.process_time``: building, cache keys,
    compiling, asyncpg, rows), PostgreSQL the reading backend's (``/proc``). The fastest
    round's Python and the median round's PostgreSQL are kept (a noisy machine only adds)."""
    import statistics
    import time
    from urllib.parse import quote

    from bench import asyncpg_url, sqlalchemy_url
    from bench.load import Runner, list_query_from_path, proc_cpu_s
    from crm_api.config import Settings
    from crm_api.customer import repository as repo
    from crm_api.db.engine import create_database

    raw = asyncpg_url(url)
    conn = await asyncpg.connect(raw)
    runner = Runner.__new__(Runner)
    runner.db_url = url
    runner.logins = {}
    try:
        access = {who: (await runner.load_login(conn, LOGINS[who])).access for who in logins}
        db_name = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    settings = Settings(database_url=sqlalchemy_url(url), db_read_pool_size=1)
    db = create_database(settings)
    reader = db.reads.reader
    out: list[tuple[str, str, float, float, int]] = []
    try:
        await reader.execute(_select_one())
        conn = await asyncpg.connect(raw)
        try:
            pids = [
                r["pid"]
                for r in await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1"
                    " AND application_name = 'crm-api'",
                    db_name,
                )
            ]
        finally:
            await conn.close()
        for who in logins:
            for label, term in [("list", ""), *terms.items()]:
                path = "/v1/customers?limit=50" + (f"&q={quote(term)}" if term else "")
                query = list_query_from_path(path)
                counting = _Counting(reader)
                try:
                    await repo.list_page(counting, access[who], query)  # type: ignore[arg-type]
                except Exception as exc:  # a tree with a bug: say so, measure the rest
                    print(f"  {who:<8} {label:<9} failed: {type(exc).__name__}: {exc}")
                    continue
                statements = counting.count
                for _ in range(min(10, n)):
                    await repo.list_page(reader, access[who], query)
                py, pg = [], []
                for _ in range(rounds):
                    c0, p0 = time.process_time(), proc_cpu_s(pids)
                    for _ in range(n):
                        await repo.list_page(reader, access[who], query)
                    py.append((time.process_time() - c0) / n * 1000)
                    pg.append((proc_cpu_s(pids) - p0) / n * 1000)
                row = (who, label, min(py), statistics.median(pg), statements)
                print(
                    f"  {who:<8} {label:<9} python {row[2]:6.2f} ms  postgres {row[3]:6.2f} ms"
                    f"  ({statements} statement(s))",
                    flush=True,
                )
                out.append(row)
    finally:
        await db.dispose()
    return out


def _select_one() -> Any:
    from sqlalchemy import literal, select

    return select(literal(1))


class _Counting:
    """A reader that counts the statements it runs (index statistics loads left out)."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.count = 0

    async def execute(self, stmt: Any, values: Any = None) -> Any:
        if "pg_stats" not in str(stmt):
            self.count += 1
        return await self.reader.execute(stmt, values)


def cpu_main(argv: list[str] | None = None) -> int:
    from bench import default_url

    p = argparse.ArgumentParser(prog="python -m bench search-cpu")
    p.add_argument("--database-url", default=default_url())
    p.add_argument("--login", action="append", help="admin, manager, rep (default: all)")
    p.add_argument("-n", type=int, default=100, help="requests per round (default 100)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    logins = args.login or list(LOGINS)
    asyncio.run(cpu_per_request(args.database_url, logins, TERMS, args.n, args.rounds))
    return 0
