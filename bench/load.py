"""``python -m bench run``: closed-loop load against a real uvicorn server, and the floor.

For each scenario: a warm-up, then ``--duration`` seconds at ``--concurrency`` connections
(wrk, or a raw-socket asyncio client when wrk is missing), reporting requests/s, p50, p99
and errors. Scenarios with a floor also run the *same SQL* the app sends (compiled from
``crm_api.customer.repository`` for the same principal) raw through an asyncpg pool of the
app's size, rows fetched and turned into dicts, nothing else. Repeated ``--repeat`` times,
app and floor interleaved; the median run is reported.

Adding a scenario is one :class:`Scenario` in :data:`SCENARIOS`; whose token it sends is
its ``login`` (any user of the bench database; see :meth:`Runner.headers_for`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import asyncpg

from bench import asyncpg_url, database_name, default_url, host_of, sqlalchemy_url
from bench.search import LOGINS as SEARCH_LOGINS
from bench.search import TERMS as SEARCH_TERMS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk.lua"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
DEFAULT_SEARCH = "华信"

LIST_PATH = "/v1/customers?limit=50&lifecycle_stage=customer&sort=-created_at"
CREATE_BODY = json.dumps(
    {
        "name": "压测客户 Bench Customer {n}",
        "type": "company",
        "lifecycle_stage": "lead",
        "grade": "B",
        "industry": "制造业",
        "region": "华东",
        # unique per request: a live customer's e-mail is a natural key (migration
        # 0012_fixes), a second one is a 409; no phone (the token is not digits)
        "email": "bench-{n}@example.cn",
        "tags": ["bench-load"],
        "source": "web",
    },
    ensure_ascii=False,
)
CREATED_TAG = "bench-load"
#: An order of 3 lines (``{customer_id}``, ``{p0}`` … ``{p2}``: a live customer and three
#: active products of the bench database, filled in by the runner).
ORDER_BODY = json.dumps(
    {
        "customer_id": "{customer_id}",
        "channel": "storefront",
        "notes": CREATED_TAG,
        "lines": [
            {"product_id": "{p0}", "quantity": "1"},
            {"product_id": "{p1}", "quantity": "2"},
            {"product_id": "{p2}", "quantity": "3", "discount": "5.00"},
        ],
    }
)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str
    method: str = "GET"
    #: Whose bearer token the requests carry (a user of the bench database).
    login: str = "admin@bench.crm"
    #: JSON body; ``{n}`` becomes a unique token per request.
    body: str | None = None
    #: Extra request headers; ``{n}`` in a value becomes the request's unique token too
    #: (a new ``Idempotency-Key`` per request).
    headers: tuple[tuple[str, str], ...] = ()
    #: ``"any"``: ``{id}`` in the path is a random live customer; ``"own"``: one the login
    #: owns; ``"ordered"``: a random customer with orders.
    ids: str | None = None
    #: ``"list"`` or ``"get"`` (customers), ``"orders"`` (the orders list the path asks
    #: for): also run the same SQL raw through asyncpg.
    floor: str | None = None
    #: Print EXPLAIN (ANALYZE, BUFFERS) of its SQL with ``--explain``.
    explain: bool = False
    groups: tuple[str, ...] = ("default",)


SCENARIOS: list[Scenario] = [
    Scenario(
        "list", "list customers (stage filter, newest first)", LIST_PATH, floor="list", explain=True
    ),
    Scenario("get", "get one customer by id", "/v1/customers/{id}", ids="any", floor="get"),
    Scenario("create", "create one customer", "/v1/customers", method="POST", body=CREATE_BODY),
    Scenario(
        "create_keyed",
        "create one customer with a new Idempotency-Key each",
        "/v1/customers",
        method="POST",
        body=CREATE_BODY,
        headers=(("Idempotency-Key", "bench-{n}"),),
        groups=("writes",),
    ),
    Scenario(
        "upsert_new",
        "upsert a new customer: PUT /v1/customers/by-external-ref/{n}",
        "/v1/customers/by-external-ref/bench-{n}",
        method="PUT",
        body=CREATE_BODY,
        groups=("writes",),
    ),
    Scenario("search", "search: Chinese substring q", "/v1/customers?q={q}&limit=50", explain=True),
    # q through the n-gram index (--scenarios search): a rare, a medium (~1 %) and a frequent
    # (~45 %) term of the 1,000,000-customer data set (bench/search.py), per data scope.
    *(
        Scenario(
            f"search_{kind}_{who}",
            f"q {kind} ({term}) as {who}",
            f"/v1/customers?q={quote(term)}&limit=50",
            login=SEARCH_LOGINS[who],
            explain=True,
            groups=("search",),
        )
        for kind, term in SEARCH_TERMS.items()
        for who in ("admin", "manager", "rep")
    ),
    # Per-role data scopes (run with --scenarios roles; most telling at 1,000,000 customers).
    Scenario(
        "list_admin",
        "list as admin (scope: all)",
        LIST_PATH,
        floor="list",
        explain=True,
        groups=("roles",),
    ),
    Scenario(
        "list_manager",
        "list as branch sales manager (org_subtree)",
        LIST_PATH,
        login="manager@bench.crm",
        floor="list",
        explain=True,
        groups=("roles",),
    ),
    Scenario(
        "list_rep",
        "list as sales rep (own)",
        LIST_PATH,
        login="rep@bench.crm",
        floor="list",
        explain=True,
        groups=("roles",),
    ),
    Scenario(
        "get_rep",
        "get one of the rep's customers",
        "/v1/customers/{id}",
        login="rep@bench.crm",
        ids="own",
        floor="get",
        groups=("roles",),
    ),
    # Contacts take their scope from their customer (no per-unit walk): --scenarios contacts
    Scenario(
        "contacts_admin",
        "contacts as admin (scope: all)",
        "/v1/contacts?limit=50",
        groups=("contacts",),
    ),
    Scenario(
        "contacts_manager",
        "contacts as branch sales manager (org_subtree, through the customer)",
        "/v1/contacts?limit=50",
        login="manager@bench.crm",
        groups=("contacts",),
    ),
    # include_total past the count cap (exact up to 10,000, then EXPLAIN's estimate)
    Scenario(
        "count_admin",
        "list + include_total as admin (a million matches: capped)",
        LIST_PATH + "&include_total=true",
        groups=("counts",),
    ),
    Scenario(
        "count_manager",
        "list + include_total as branch sales manager (~17,000 matches: capped)",
        LIST_PATH + "&include_total=true",
        login="manager@bench.crm",
        groups=("counts",),
    ),
    # Orders (--scenarios orders; generate with --orders 1000000 for the recorded figures).
    Scenario(
        "order_create",
        "place an order of 3 lines with a new Idempotency-Key each",
        "/v1/orders",
        method="POST",
        body=ORDER_BODY,
        headers=(("Idempotency-Key", "bench-order-{n}"),),
        groups=("orders",),
    ),
    Scenario(
        "orders_customer",
        "orders of one customer (newest first)",
        "/v1/customers/{id}/orders?limit=50",
        ids="ordered",
        floor="orders",
        explain=True,
        groups=("orders",),
    ),
    Scenario(
        "orders_mine",
        "my orders, as a sales rep (own scope, newest first)",
        "/v1/orders?limit=50",
        login="rep@bench.crm",
        floor="orders",
        explain=True,
        groups=("orders",),
    ),
    Scenario(
        "orders_manager",
        "orders as a branch sales manager (org_subtree, newest first)",
        "/v1/orders?limit=50",
        login="manager@bench.crm",
        floor="orders",
        explain=True,
        groups=("orders",),
    ),
    # What uvicorn + FastAPI + our middleware cost with no auth and no SQL: the ceiling of
    # any endpoint of this stack on this machine (run with --scenarios healthz).
    Scenario(
        "healthz",
        "framework ceiling: GET /healthz (no auth, no SQL)",
        "/healthz",
        groups=("ceiling",),
    ),
]


def select_scenarios(spec: str) -> list[Scenario]:
    chosen: list[Scenario] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        matches = [s for s in SCENARIOS if s.name == part or part in s.groups or part == "all"]
        if not matches:
            names = ", ".join(s.name for s in SCENARIOS)
            raise SystemExit(
                f"unknown scenario {part!r}; known: {names}, groups default, roles, all"
            )
        chosen += [s for s in matches if s not in chosen]
    return chosen


# --- measurements -------------------------------------------------------------------------
@dataclass
class Stats:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    p90_ms: float | None = None
    max_ms: float | None = None
    #: CPU per request of the process serving it (the uvicorn server; for the floor, the
    #: bench process) and of the PostgreSQL backends it used: robust to a noisy machine.
    cpu_ms_per_req: float | None = None
    pg_cpu_ms_per_req: float | None = None
    loadavg_1m: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def median_stats(runs: list[Stats]) -> dict[str, Any]:
    """The median of each figure over the runs (and the run count)."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "pg_cpu_ms_per_req"):
        values = [getattr(r, key) for r in runs if getattr(r, key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["errors"] = sum(r.errors for r in runs)
    out["requests"] = sum(r.requests for r in runs)
    return out


# --- the app server -----------------------------------------------------------------------
#: Ports the server may take (``CRM_BENCH_PORTS=low-high``; a shared machine gives each
#: user a range), tried from a random start.
PORTS = os.environ.get("CRM_BENCH_PORTS", "18000-18999")


def free_port() -> int:
    low, _, high = PORTS.partition("-")
    first, last = int(low), int(high or low)
    start = random.randint(first, last)
    for i in range(last - first + 1):
        port = first + (start - first + i) % (last - first + 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port in {PORTS}")


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of ``pids`` still alive (Linux /proc)."""
    seen: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seen[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return seen


def proc_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (Linux /proc)."""
    return sum(proc_cpu_by_pid(pids).values())


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two :func:`proc_cpu_by_pid` readings, by the processes
    alive at the second one (a process that started in between counts from zero). One
    that exited in between is left out rather than counted negative: its last seconds
    are lost, so the figure is a slight underestimate when backends close mid-run."""
    return sum(now - before.get(pid, 0.0) for pid, now in after.items())


async def backend_pids(url: str, application_name: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = $1",
            application_name,
        )
        return [r["pid"] for r in rows]
    finally:
        await conn.close()


class AppServer:
    """``python -m uvicorn crm_api.main:create_app --factory --workers 1`` in its own
    process group; always stopped (SIGTERM, then SIGKILL) by :meth:`stop`."""

    def __init__(
        self,
        db_url: str,
        pool_size: int,
        env: dict[str, str],
        log_dir: Path,
        label: str = "app",
        workers: int = 1,
    ) -> None:
        self.workers = workers
        self.port = free_port()
        self.signing_key = secrets.token_urlsafe(48)
        self.data_dir = Path(tempfile.mkdtemp(prefix="crm-bench-"))
        self.env = {
            **os.environ,
            "CRM_DATABASE_URL": sqlalchemy_url(db_url),
            "CRM_LOG_LEVEL": "WARNING",
            "CRM_DB_POOL_SIZE": str(pool_size),
            "CRM_DB_READ_POOL_SIZE": str(pool_size),
            "CRM_DB_MAX_OVERFLOW": "0",
            "CRM_JWT_SIGNING_KEY": self.signing_key,
            "CRM_ACCESS_TOKEN_TTL_S": "86400",
            "CRM_DATA_DIR": str(self.data_dir),
            "CRM_DEMO_DATA": "false",
            # one login drives every connection: the per-principal cap (default 8) would
            # answer most of them 429
            "CRM_MAX_INFLIGHT_PER_PRINCIPAL": "0",
            "CRM_ENV": "development",
            **env,
        }
        self.log_path = log_dir / f"server-{label}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        log = self.log_path.open("wb")
        if self.workers == 1:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "crm_api.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--no-access-log",
                "--no-server-header",
                "--log-level",
                "warning",
            ]
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        else:
            self._start_reuseport(log)
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                status, body = http_request(self.port, "GET", "/readyz", timeout=2.0)
            except OSError:
                time.sleep(0.2)
                continue
            if status == 200:
                return
            last = f"/readyz answered {status}: {body[:300]!r}"
            if b"migrations_pending" in body:
                raise RuntimeError(
                    f"{last}\nthe bench database is behind the code's "
                    "migrations: run `python -m bench generate` again"
                )
            time.sleep(0.3)
        raise RuntimeError(
            f"the server was not ready within {timeout_s:.0f} s. {last}\n{self.log_tail()}"
        )

    def _start_reuseport(self, log: Any) -> None:
        """N single-worker uvicorn processes, each on its own SO_REUSEPORT socket of one
        port, in one process group. ``uvicorn --workers N`` shares one listening socket,
        and whichever worker wakes first accepts a whole batch: wrk's 32 connections often
        all landed on one worker while the other idled (server CPU 1.0 of 2 cores). With a
        socket each, the kernel spreads connections over the workers."""
        sockets = []
        for _ in range(self.workers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(2048)
            sock.set_inheritable(True)
            sockets.append(sock)
        script = (
            "import socket, sys, uvicorn; "
            "s = socket.socket(fileno=int(sys.argv[1])); "
            "uvicorn.Server(uvicorn.Config('crm_api.main:create_app', factory=True, "
            "access_log=False, server_header=False, log_level='warning')).run(sockets=[s])"
        )
        try:
            for i, sock in enumerate(sockets):
                proc = subprocess.Popen(
                    [sys.executable, "-c", script, str(sock.fileno())],
                    cwd=ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(sock.fileno(),),
                    process_group=0 if i == 0 else self.proc.pid,  # type: ignore[union-attr]
                )
                if i == 0:
                    self.proc = proc
        finally:
            for sock in sockets:
                sock.close()

    def pids(self) -> list[int]:
        """The server process and, with several workers, the worker processes (its
        process group)."""
        assert self.proc is not None
        group = os.getpgid(self.proc.pid)
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == group:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found or [self.proc.pid]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.data_dir, ignore_errors=True)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --- load generators ----------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One scenario, made concrete: what the load generator sends."""

    method: str
    path: str
    headers: dict[str, str]
    body: str | None
    ids_file: str | None


def run_wrk(
    wrk: str, port: int, job: Job, seconds: float, concurrency: int, threads: int, run_id: str
) -> Stats:
    env = {
        **os.environ,
        "BENCH_METHOD": job.method,
        "BENCH_PATH": job.path,
        "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in job.headers.items()),
        "BENCH_BODY": job.body or "",
        "BENCH_IDS": job.ids_file or "",
        "BENCH_RUN": run_id,
    }
    cmd = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"^BENCH_RESULT (\{.*\})$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    r = json.loads(match.group(1))
    secs = r["duration_us"] / 1e6
    errors = (
        r["connect_errors"]
        + r["read_errors"]
        + r["write_errors"]
        + r["status_errors"]
        + r["timeouts"]
    )
    return Stats(
        requests=r["requests"],
        seconds=round(secs, 2),
        rps=round(r["requests"] / secs, 1),
        p50_ms=round(r["p50_us"] / 1000, 2),
        p99_ms=round(r["p99_us"] / 1000, 2),
        errors=errors,
        p90_ms=round(r["p90_us"] / 1000, 2),
        max_ms=round(r["max_us"] / 1000, 2),
        detail={
            k: r[k]
            for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
        },
    )


async def _py_client(
    port: int, job: Job, seconds: float, concurrency: int, run_id: str, ids: list[str]
) -> Stats:
    """Fallback when wrk is missing: HTTP/1.1 keep-alive over raw asyncio streams."""
    head_template = "".join(f"{k}: {v}\r\n" for k, v in job.headers.items())
    latencies: list[float] = []
    errors = 0
    counter = 0
    deadline = time.perf_counter() + seconds

    def build() -> bytes:
        nonlocal counter
        path = job.path.replace("{id}", random.choice(ids)) if ids else job.path
        body = b""
        counter += 1
        token = f"{run_id}-{counter}"
        path = path.replace("{n}", token)
        head = head_template.replace("{n}", token)
        if job.body is not None:
            body = job.body.replace("{n}", token).encode()
        extra = (
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            if job.body is not None
            else ""
        )
        return (
            f"{job.method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}{extra}\r\n".encode() + body
        )

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(build())
                status_line = await reader.readline()
                length, chunked = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "transfer-encoding" and "chunked" in value:
                        chunked = True
                if chunked:
                    while (size := int((await reader.readline()).strip() or b"0", 16)) > 0:
                        await reader.readexactly(size + 2)
                    await reader.readline()
                elif length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status_line[9:10] not in (b"2", b"3"):
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)), return_exceptions=False)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Stats(
        len(latencies),
        round(elapsed, 2),
        round(len(latencies) / elapsed, 1),
        round(_percentile(latencies, 50) * 1000, 2),
        round(_percentile(latencies, 99) * 1000, 2),
        errors,
        round(_percentile(latencies, 90) * 1000, 2),
        round(latencies[-1] * 1000, 2),
    )


# --- the floor: the app's own SQL, raw through asyncpg ------------------------------------
@dataclass
class Statement:
    sql: str
    params: list[Any]
    #: Index of the parameter that takes a random id per call (get-by-id), if any.
    id_param: int | None = None


def _plain(value: Any) -> Any:
    from enum import Enum

    return value.value if isinstance(value, Enum) else value


def compile_for_asyncpg(stmt: Any, values: Any = None) -> tuple[str, list[Any]]:
    """SQL and positional arguments of ``stmt`` for asyncpg (``values``: those of its named
    parameters, as ``execute(stmt, values)`` takes them)."""
    from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

    compiled = stmt.compile(dialect=pg_asyncpg.dialect())
    params = compiled.construct_params(values) if values else compiled.params
    return str(compiled), [_plain(params[name]) for name in compiled.positiontup]


def list_query_from_path(path: str) -> Any:
    from crm_api.customer.schemas import CustomerListQuery

    raw = parse_qs(urlsplit(path).query, keep_blank_values=True)
    data: dict[str, Any] = {}
    for key, values in raw.items():
        f = CustomerListQuery.model_fields.get(key)
        data[key] = values if f is not None and "list[" in str(f.annotation) else values[-1]
    return CustomerListQuery.model_validate(data)


async def scenario_statement(access: Any, scenario: Scenario, path: str) -> Statement:
    """The statement the app runs for ``scenario`` (compiled from the repository)."""
    from crm_api.customer import repository as repo
    from crm_api.customer.schemas import CustomerSort
    from crm_api.kit import resource as kit
    from crm_api.models.customer import Customer

    if scenario.floor == "get" or "{id}" in scenario.path:
        sentinel = uuid.UUID(int=0)
        sql, params = compile_for_asyncpg(repo.scoped(access).where(Customer.id == sentinel))
        return Statement(sql, params, params.index(sentinel))
    query = list_query_from_path(path)
    # the kit's own page statement: the per-unit merge for an org scope, the masking flag
    # (a tree from before page_statement: its plain keyset statement, for before/after runs)
    page = getattr(kit, "page_statement", None)
    if page is not None:
        stmt = page(repo.R, access, repo.filtered(access, query), query.page(CustomerSort))
    else:
        from crm_api.kit.pagination import apply_keyset

        stmt = apply_keyset(
            repo.filtered(access, query), repo.SORT_COLUMNS, Customer.id, query.page(CustomerSort)
        )
    sql, params = compile_for_asyncpg(stmt)
    return Statement(sql, params)


def orders_statement(access: Any, scenario: Scenario, customers: Any = None) -> Statement:
    """The orders list the app runs for ``scenario`` (compiled from the orders repository,
    lines included): one customer's orders when the path names a customer (``{id}``, the
    random id parameter; with the check that ``customers``, the login's customers read,
    sees that customer, which the app runs inside the same statement), else the login's
    list."""
    from crm_api.kit.pagination import apply_keyset
    from crm_api.order import repository as repo
    from crm_api.order.schemas import CustomerOrderListQuery, OrderListQuery, OrderSort
    from crm_api.resources import ORDERS

    if access is None:
        raise SystemExit(f"{scenario.login} may not read orders")
    query = (CustomerOrderListQuery if "{id}" in scenario.path else OrderListQuery)(limit=50)
    sentinel = uuid.UUID(int=0) if "{id}" in scenario.path else None
    base = (
        repo.customer_filtered(access, customers, query).params(customer_id=sentinel)
        if sentinel is not None and customers is not None
        else repo.filtered(access, query, sentinel)
    )
    stmt = apply_keyset(
        base,
        ORDERS.sort_columns,
        ORDERS.id_column,
        query.page(OrderSort),
    )
    sql, params = compile_for_asyncpg(stmt)
    return Statement(sql, params, params.index(sentinel) if sentinel is not None else None)


async def count_matches(conn: asyncpg.Connection, access: Any, path: str) -> int:
    from sqlalchemy import func, select

    from crm_api.customer import repository as repo

    query = list_query_from_path(path)
    sql, params = compile_for_asyncpg(
        select(func.count()).select_from(repo.filtered(access, query).subquery())
    )
    return int(await conn.fetchval(sql, *params))


async def run_floor(
    pool: asyncpg.Pool, st: Statement, ids: list[str], seconds: float, concurrency: int
) -> Stats:
    latencies: list[float] = []
    errors = 0
    uuids = [uuid.UUID(i) for i in ids]
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        params = list(st.params)
        while time.perf_counter() < deadline:
            if st.id_param is not None:
                params[st.id_param] = random.choice(uuids)
            started = time.perf_counter()
            try:
                async with pool.acquire() as conn:
                    rows = [dict(r) for r in await conn.fetch(st.sql, *params)]
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            del rows

    async with pool.acquire() as conn:  # every backend of the pool is open after a warm-up
        pids = [
            r["pid"]
            for r in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'crm-bench-floor'"
            )
        ]
    cpu0, pg0 = time.process_time(), proc_cpu_s(pids)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu, pg = time.process_time() - cpu0, proc_cpu_s(pids) - pg0
    latencies.sort()
    n = len(latencies)
    return Stats(
        n,
        round(elapsed, 2),
        round(n / elapsed, 1),
        round(_percentile(latencies, 50) * 1000, 2),
        round(_percentile(latencies, 99) * 1000, 2),
        errors,
        round(_percentile(latencies, 90) * 1000, 2),
        round(latencies[-1] * 1000, 2),
        cpu_ms_per_req=round(cpu * 1000 / n, 3) if n else None,
        pg_cpu_ms_per_req=round(pg * 1000 / n, 3) if n else None,
        loadavg_1m=os.getloadavg()[0],
    )


async def _no_reset(conn: asyncpg.Connection) -> None:
    """The floor skips asyncpg's per-release reset query (a round trip the app's pool does
    not make either)."""


# --- the runner ---------------------------------------------------------------------------
@dataclass
class Login:
    user_id: uuid.UUID
    email: str
    access: Any  # crm_api Access for customers:read, as the app would build it
    orders_access: Any = None  # the same for orders:read (None: not granted)


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.db_url = asyncpg_url(args.database_url)
        self.logins: dict[str, Login] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="crm-bench-run-"))
        self.ids: dict[tuple[str, str], tuple[list[str], str]] = {}
        self.wrk = None if args.client == "python" else shutil.which("wrk")
        if args.client == "wrk" and not self.wrk:
            raise SystemExit(
                "wrk is not installed (apt-get install -y wrk), or use --client python"
            )
        self.run_id = datetime.now(UTC).strftime("%H%M%S") + secrets.token_hex(2)
        #: Loads run so far (each gets its own "{n}" prefix).
        self.loads = 0
        #: The server the next requests go to; every server the run started.
        self.server: AppServer | None = None
        self.servers: list[AppServer] = []
        self.tokens: dict[tuple[int, str], str | None] = {}
        #: What the order scenario's body refers to (:meth:`order_refs_for`).
        self.order_refs: dict[str, str] = {}

    # -- identities -------------------------------------------------------------------------
    async def load_login(self, conn: asyncpg.Connection, email: str) -> Login:
        if email in self.logins:
            return self.logins[email]
        from sqlalchemy.ext.asyncio import create_async_engine

        from crm_api.authz.enforcer import PolicyEngine
        from crm_api.authz.types import Access, Principal, PrincipalKind

        row = await conn.fetchrow(
            "SELECT u.id, u.display_name, u.org_unit_id, o.path, u.manager_path,"
            " (SELECT count(*) FROM org_units s WHERE starts_with(s.path, o.path)) AS below,"
            " (SELECT count(*) FROM org_units) AS total FROM users u "
            "LEFT JOIN org_units o ON o.id = u.org_unit_id WHERE lower(u.email) = lower($1)",
            email,
        )
        if row is None:
            raise SystemExit(
                f"no user {email} in {database_name(self.db_url)}: run "
                "`python -m bench generate` first"
            )
        hints = {}
        if "org_subtree_units" in Principal.__dataclass_fields__:  # (older trees lack them)
            # as the app's principal cache has them (crm_api.auth.principals)
            hints = {
                "org_subtree_units": row["below"] if row["path"] is not None else None,
                "org_units_total": row["total"],
            }
        principal = Principal(
            kind=PrincipalKind.user,
            id=row["id"],
            name=row["display_name"],
            roles=frozenset(),
            org_unit_id=row["org_unit_id"],
            org_path=row["path"],
            manager_path=row["manager_path"],
            **hints,
        )
        engine = create_async_engine(sqlalchemy_url(self.db_url))
        try:
            policy = PolicyEngine()
            await policy.load(engine)
            scope = policy.scope_for(principal, "customers", "read")
            orders_scope = policy.scope_for(principal, "orders", "read")
        finally:
            await engine.dispose()
        if scope is None:
            raise SystemExit(f"{email} may not read customers")
        orders = Access(principal, "orders", "read", orders_scope) if orders_scope else None
        login = Login(row["id"], email, Access(principal, "customers", "read", scope), orders)
        self.logins[email] = login
        return login

    def mint_token(self, login: Login, server: AppServer) -> str:
        """A 4-hour access token signed with the key the runner gave the server."""
        from pydantic import SecretStr

        from crm_api.auth import tokens
        from crm_api.auth.keys import keyring_from_settings
        from crm_api.config import Settings

        settings = Settings(jwt_signing_key=SecretStr(server.signing_key), data_dir=server.data_dir)
        token, _ = tokens.issue(
            keyring_from_settings(settings),
            subject=f"user:{login.user_id}",
            token_type="access",
            ttl_s=4 * 3600,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        return token

    def password_token(self, login: Login, server: AppServer) -> str | None:
        from bench.generate import BENCH_PASSWORD

        body = f"grant_type=password&username={quote(login.email)}&password={BENCH_PASSWORD}"
        status, raw = http_request(
            server.port,
            "POST",
            "/v1/auth/token",
            body.encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 200:
            return None
        return str(json.loads(raw)["access_token"])

    def headers_for(self, scenario: Scenario) -> dict[str, str]:
        """Request headers for ``scenario``: the bearer token of its login. ``--token``
        wins; otherwise a token is minted with the server's signing key (falling back to
        the password grant)."""
        if self.args.token:
            return {"Authorization": f"Bearer {self.args.token}"}
        login = self.logins[scenario.login]
        assert self.server is not None
        key = (self.server.port, login.email)  # each server has its own signing key
        if key not in self.tokens:
            try:
                self.tokens[key] = self.mint_token(login, self.server)
            except Exception as exc:  # the auth modules changed: use the public grant
                print(f"  (could not mint a token in-process: {exc}; trying the password grant)")
                self.tokens[key] = self.password_token(login, self.server)
        token = self.tokens[key]
        return {"Authorization": f"Bearer {token}"} if token else {}

    # -- ids --------------------------------------------------------------------------------
    async def ids_for(self, conn: asyncpg.Connection, scenario: Scenario) -> tuple[list[str], str]:
        key = (scenario.ids or "", scenario.login)
        if key not in self.ids:
            login = self.logins[scenario.login]
            if scenario.ids == "ordered":
                rows = await conn.fetch(
                    "SELECT customer_id AS id FROM orders TABLESAMPLE SYSTEM (5) "
                    "WHERE deleted_at IS NULL GROUP BY customer_id ORDER BY random() LIMIT $1",
                    self.args.sample,
                )
                if not rows:  # a small table: TABLESAMPLE may miss every page
                    rows = await conn.fetch(
                        "SELECT DISTINCT customer_id AS id FROM orders LIMIT $1",
                        self.args.sample,
                    )
            elif scenario.ids == "own":
                rows = await conn.fetch(
                    "SELECT id FROM customers WHERE deleted_at IS NULL AND owner_id = $1 "
                    "ORDER BY random() LIMIT $2",
                    login.user_id,
                    self.args.sample,
                )
            else:
                rows = await conn.fetch(
                    "SELECT id FROM customers WHERE deleted_at IS NULL ORDER BY random() LIMIT $1",
                    self.args.sample,
                )
            ids = [str(r["id"]) for r in rows]
            if not ids:
                raise SystemExit(f"no customer ids for scenario {scenario.name}")
            path = self.tmp / f"ids-{scenario.ids}-{login.user_id}.txt"
            path.write_text("\n".join(ids) + "\n")
            self.ids[key] = (ids, str(path))
        return self.ids[key]

    def path_of(self, scenario: Scenario) -> str:
        return scenario.path.replace("{q}", quote(self.args.search_term))

    async def order_refs_for(self, conn: asyncpg.Connection) -> None:
        """A live customer and three active products for the order scenario's body."""
        if self.order_refs:
            return
        customer = await conn.fetchval(
            "SELECT id FROM customers WHERE deleted_at IS NULL ORDER BY created_at DESC LIMIT 1"
        )
        products = await conn.fetch(
            "SELECT id FROM products WHERE active AND deleted_at IS NULL AND currency = 'CNY' "
            "ORDER BY sku LIMIT 3"
        )
        if customer is None or len(products) < 3:
            raise SystemExit("the order scenario needs customers and 3 products: generate --orders")
        self.order_refs = {"customer_id": str(customer)} | {
            f"p{i}": str(r["id"]) for i, r in enumerate(products)
        }

    def body_of(self, scenario: Scenario) -> str | None:
        body = scenario.body
        if body is not None:
            for name, value in self.order_refs.items():
                body = body.replace("{" + name + "}", value)
        return body

    def job_for(self, scenario: Scenario) -> Job:
        ids_file = self.ids[(scenario.ids, scenario.login)][1] if scenario.ids else None
        return Job(
            scenario.method,
            self.path_of(scenario),
            {**self.headers_for(scenario), **dict(scenario.headers)},
            self.body_of(scenario),
            ids_file,
        )

    # -- one load run -----------------------------------------------------------------------
    def load(self, job: Job, seconds: float, measure_cpu: bool = False) -> Stats:
        assert self.server is not None and self.server.proc is not None
        a = self.args
        pg_pids = asyncio.run(backend_pids(self.db_url, "crm-api")) if measure_cpu else []
        server_pids = self.server.pids()
        cpu0, pg0 = proc_cpu_s(server_pids), proc_cpu_by_pid(pg_pids)
        # a fresh token prefix per load (warm-up, every round): "{n}" must never repeat, or
        # a later round's Idempotency-Keys would replay an earlier round's creates
        self.loads += 1
        run_id = f"{self.run_id}r{self.loads}"
        if self.wrk:
            stats = run_wrk(
                self.wrk, self.server.port, job, seconds, a.concurrency, a.threads, run_id
            )
        else:
            ids = Path(job.ids_file).read_text().split() if job.ids_file else []
            stats = asyncio.run(
                _py_client(self.server.port, job, seconds, a.concurrency, run_id, ids)
            )
        if measure_cpu and stats.requests:
            cpu = proc_cpu_s(server_pids) - cpu0
            stats.cpu_ms_per_req = round(cpu * 1000 / stats.requests, 3)
            # backends opened during the run count too; closed ones drop out (never < 0)
            pg_now = asyncio.run(backend_pids(self.db_url, "crm-api"))
            pg_cpu = cpu_spent(pg0, proc_cpu_by_pid(sorted({*pg_pids, *pg_now})))
            stats.pg_cpu_ms_per_req = round(pg_cpu * 1000 / stats.requests, 3)
            stats.detail["server_cpu_share"] = round(cpu / stats.seconds, 2)
        stats.loadavg_1m = os.getloadavg()[0]
        return stats

    def preflight(self, scenario: Scenario, job: Job) -> str | None:
        """One request first: a clear message instead of a table of errors."""
        assert self.server is not None
        path = job.path
        if job.ids_file and "{id}" in path:
            path = path.replace("{id}", Path(job.ids_file).read_text().split()[0])
        path = path.replace("{n}", f"{self.run_id}-preflight-{scenario.name}")
        body = (
            job.body.replace("{n}", f"{self.run_id}-preflight-{scenario.name}").encode()
            if job.body
            else None
        )
        headers = {
            k: v.replace("{n}", f"{self.run_id}-preflight-{scenario.name}")
            for k, v in job.headers.items()
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        status, raw = http_request(self.server.port, job.method, path, body, headers)
        if status == 401:
            return (
                "401 Unauthorized: the app requires a bearer token and refused the one the "
                "runner sent (minted with the server's signing key, or --token). Pass a "
                "valid --token, or fix Runner.headers_for(). Response: "
                + raw[:300].decode(errors="replace")
            )
        if status >= 400:
            return f"{job.method} {path} answered {status}: {raw[:400].decode(errors='replace')}"
        return None


def machine_info(pg_version: str) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    git = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        git = rev + (" (+ uncommitted changes in src/)" if dirty else "")
    versions = {}
    for mod in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "asyncpg", "pydantic", "orjson"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    wrk = shutil.which("wrk")
    wrk_version = ""
    if wrk:
        with contextlib.suppress(Exception):
            wrk_version = subprocess.run(
                [wrk, "-v"], capture_output=True, text=True, timeout=5
            ).stdout.splitlines()[0]
    return {
        "nproc": os.cpu_count(),
        "memory_gib": mem_gib,
        "cpu": cpu,
        "postgresql": pg_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git,
        "packages": versions,
        "wrk": wrk_version,
        "loadavg_start": list(os.getloadavg()),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=default_url(),
        help="the generated bench database (default $CRM_BENCH_DATABASE_URL or "
        "%(default)s); must be on this machine",
    )
    p.add_argument(
        "--scenarios",
        default="default",
        help="comma-separated names or groups: list,get,create,search (= default), "
        "roles (list_admin,list_manager,list_rep,get_rep), all",
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before each measured run")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario; the median counts")
    p.add_argument(
        "--pool-size",
        type=int,
        default=5,
        help="CRM_DB_POOL_SIZE and CRM_DB_READ_POOL_SIZE per worker (max overflow "
        "0), and the floor's pool size",
    )
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--token",
        help="bearer token for every request (default: mint one per "
        "scenario login with the server's signing key)",
    )
    p.add_argument("--search-term", default=DEFAULT_SEARCH)
    p.add_argument("--sample", type=int, default=10_000, help="ids for get-by-id scenarios")
    p.add_argument("--no-floor", action="store_true", help="skip the raw asyncpg floor")
    p.add_argument(
        "--explain",
        action="store_true",
        help="EXPLAIN (ANALYZE, BUFFERS) the list queries, into the results",
    )
    p.add_argument(
        "--compare-pre-ping",
        action="store_true",
        help="also run the floor scenarios against a server with CRM_DB_POOL_PRE_PING=false",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server (repeatable)",
    )
    p.add_argument(
        "--py-spy",
        metavar="SCENARIO",
        help="record a py-spy profile of the server during SCENARIO's first run",
    )
    p.add_argument(
        "--keep-created",
        action="store_true",
        help="keep the customers the create scenario made (default: delete them)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="hard limit in seconds for the whole run (default: estimate x 2 + 180)",
    )
    p.add_argument("--output", help="results JSON path (default bench/results/<timestamp>.json)")


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--server-env expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


class _TimeUp(Exception):
    pass


def run_command(args: argparse.Namespace) -> int:
    url = asyncpg_url(args.database_url)
    if host_of(url) not in LOCAL_HOSTS:
        raise SystemExit("the runner only talks to 127.0.0.1: give a local --database-url")
    scenarios = select_scenarios(args.scenarios)
    n_floor = 0 if args.no_floor else sum(1 for s in scenarios if s.floor)
    per_run = args.duration + args.warmup
    variants = 1 if args.compare_pre_ping else 0
    estimate = args.repeat * per_run * (len(scenarios) + n_floor + variants * n_floor) + 30
    limit = args.time_limit or estimate * 2 + 180
    print(
        f"{len(scenarios)} scenarios x {args.repeat} run(s) of {args.duration:.0f}s "
        f"(+{args.warmup:.0f}s warm-up) at concurrency {args.concurrency}: "
        f"~{estimate / 60:.1f} min (hard limit {limit / 60:.1f} min)"
    )

    def on_alarm(signum: int, frame: Any) -> None:
        raise _TimeUp(f"time limit of {limit:.0f} s reached")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    signal.alarm(int(limit))
    runner = Runner(args)
    try:
        return _run(runner, scenarios, args)
    except _TimeUp as exc:
        print(f"aborted: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: stopping the server", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        for server in runner.servers:
            server.stop()
        shutil.rmtree(runner.tmp, ignore_errors=True)


def _run(runner: Runner, scenarios: list[Scenario], args: argparse.Namespace) -> int:
    url = runner.db_url
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_path = Path(args.output) if args.output else RESULTS / f"{stamp}.json"

    async def prepare() -> dict[str, Any]:
        conn = await asyncpg.connect(url)
        try:
            info: dict[str, Any] = {
                "pg_version": await conn.fetchval("SHOW server_version"),
                "customers": await conn.fetchval(
                    "SELECT count(*) FROM customers WHERE deleted_at IS NULL"
                ),
                "contacts": await conn.fetchval("SELECT count(*) FROM contacts"),
                "users": await conn.fetchval("SELECT count(*) FROM users"),
                "org_units": await conn.fetchval("SELECT count(*) FROM org_units"),
            }
            statements: dict[str, Statement] = {}
            searched: dict[str, dict[str, Any]] = {}
            for sc in scenarios:
                login = await runner.load_login(conn, sc.login)
                if sc.ids:
                    await runner.ids_for(conn, sc)
                if sc.body is not None and "{customer_id}" in sc.body:
                    await runner.order_refs_for(conn)
                path = runner.path_of(sc)
                searches = "q=" in path
                if sc.floor == "orders":
                    statements[sc.name] = orders_statement(login.orders_access, sc, login.access)
                elif sc.method == "GET" and not searches:
                    statements[sc.name] = await scenario_statement(login.access, sc, path)
                if searches:
                    # one to five statements chosen per request (kit/search.py): counted and
                    # explained by running the repository on a recording executor
                    from bench import search as bench_search

                    info.setdefault("search_matches", {})[
                        sc.name
                    ] = await bench_search.count_matches(conn, login.access, path)
                    if args.explain and sc.explain:
                        searched[sc.name] = {
                            "sql": f"(the statements of GET {path})",
                            "params": [],
                            "plan": await bench_search.explain(conn, login, path),
                        }
                if sc.name == "search" or "{q}" in sc.path:
                    info["search_term"] = args.search_term
            info["statements"] = statements
            if args.explain:
                info["explain"] = {}
                for sc in scenarios:
                    st = statements.get(sc.name)
                    if not sc.explain or st is None:
                        continue
                    plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {st.sql}", *st.params)
                    info["explain"][sc.name] = {
                        "sql": st.sql,
                        "params": [str(p) for p in st.params],
                        "plan": "\n".join(r[0] for r in plan),
                    }
                info["explain"].update(searched)
            return info
        finally:
            await conn.close()

    info = asyncio.run(prepare())
    statements: dict[str, Statement] = info.pop("statements")
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(info.pop("pg_version")),
        "config": {
            "database": database_name(url),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "pool_size": args.pool_size,
            "max_overflow": 0,
            "client": "wrk" if runner.wrk else "python asyncio",
            "wrk_threads": args.threads if runner.wrk else None,
            "server": (
                "uvicorn crm_api.main:create_app --factory --workers 1"
                if args.workers == 1
                else f"{args.workers} uvicorn processes, one SO_REUSEPORT socket each"
            )
            + " (uvloop, httptools), CRM_LOG_LEVEL=WARNING",
            "workers": args.workers,
            "server_env": _env_pairs(args.server_env),
        },
        "dataset": {k: v for k, v in info.items() if k != "explain"},
        "scenarios": {},
        "explain": info.get("explain", {}),
    }
    if args.explain:
        for name, e in results["explain"].items():
            print(
                f"\n--- EXPLAIN (ANALYZE, BUFFERS): {name}\n{e['sql']}\n  params {e['params']}\n"
                f"{e['plan']}"
            )
    print(f"\ndataset: {results['dataset']}")

    def start_server(env: dict[str, str], label: str) -> AppServer:
        server = AppServer(url, args.pool_size, env, RESULTS, label, args.workers)
        runner.servers.append(server)
        print(f"starting uvicorn on 127.0.0.1:{server.port} ({label}) …", flush=True)
        server.start()
        return server

    def app_run(
        sc: Scenario, runs: list[Stats], profile: bool = False, label: str = "app  "
    ) -> None:
        job = runner.job_for(sc)
        if args.warmup > 0:
            runner.load(job, args.warmup)
        spy = None
        if profile:
            spy = start_py_spy(runner, sc, args.duration)
        stats = runner.load(job, args.duration, measure_cpu=True)
        if spy is not None:
            finish_py_spy(spy)
        runs.append(stats)
        print(
            f"  {sc.name:<14} {label} {stats.rps:8.1f} req/s  p50 {stats.p50_ms:7.2f} ms  "
            f"p99 {stats.p99_ms:7.2f} ms  errors {stats.errors}  {_cpu(stats)}",
            flush=True,
        )

    async def floor_runs(sc: Scenario, runs: list[Stats]) -> None:
        st = statements[sc.name]
        ids = runner.ids[(sc.ids, sc.login)][0] if sc.ids else []
        pool = await asyncpg.create_pool(
            url,
            min_size=args.pool_size,
            max_size=args.pool_size,
            reset=_no_reset,
            server_settings={"application_name": "crm-bench-floor"},
        )
        try:
            if args.warmup > 0:
                await run_floor(pool, st, ids, args.warmup, args.concurrency)
            stats = await run_floor(pool, st, ids, args.duration, args.concurrency)
        finally:
            await pool.close()
        runs.append(stats)
        print(
            f"  {sc.name:<14} floor {stats.rps:8.1f} q/s    p50 {stats.p50_ms:7.2f} ms  "
            f"p99 {stats.p99_ms:7.2f} ms  errors {stats.errors}  {_cpu(stats)}",
            flush=True,
        )

    app: dict[str, list[Stats]] = {sc.name: [] for sc in scenarios}
    floor: dict[str, list[Stats]] = {sc.name: [] for sc in scenarios}
    failed: dict[str, str] = {}
    variant_runs: dict[str, list[Stats]] = {}
    main = start_server(_env_pairs(args.server_env), "main")
    # The variant server idles while the main one is measured, and the other way round:
    # both are measured in the same rounds, so the machine's noise hits both alike.
    variant = (
        start_server(
            {**_env_pairs(args.server_env), "CRM_DB_POOL_PRE_PING": "false"}, "pre_ping_off"
        )
        if args.compare_pre_ping
        else None
    )
    runner.server = main
    for sc in scenarios:
        problem = runner.preflight(sc, runner.job_for(sc))
        if problem:
            failed[sc.name] = problem
            print(f"  {sc.name}: SKIPPED: {problem}", file=sys.stderr)
    for rep in range(args.repeat):
        print(f"run {rep + 1}/{args.repeat}")
        for sc in scenarios:
            if sc.name in failed:
                continue
            # with a variant, odd rounds measure it first: no side gets the better slot
            variant_first = variant is not None and sc.floor and rep % 2 == 1
            if variant_first:
                runner.server = variant
                app_run(sc, variant_runs.setdefault(sc.name, []), label="app, pre-ping off")
            runner.server = main
            app_run(sc, app[sc.name], profile=(args.py_spy == sc.name and rep == 0))
            if sc.floor and not args.no_floor:
                asyncio.run(floor_runs(sc, floor[sc.name]))
            if variant is not None and sc.floor and not variant_first:
                runner.server = variant
                app_run(sc, variant_runs.setdefault(sc.name, []), label="app, pre-ping off")
    for server in runner.servers:
        server.stop()

    for sc in scenarios:
        entry: dict[str, Any] = {
            "title": sc.title,
            "method": sc.method,
            "path": runner.path_of(sc),
            "login": sc.login,
        }
        if sc.name in failed:
            entry["skipped"] = failed[sc.name]
        if app[sc.name]:
            entry["app"] = median_stats(app[sc.name])
            entry["app_runs"] = [asdict(s) for s in app[sc.name]]
        if floor[sc.name]:
            entry["floor"] = median_stats(floor[sc.name])
            entry["floor_runs"] = [asdict(s) for s in floor[sc.name]]
            entry["floor_sql"] = statements[sc.name].sql
            if entry.get("app"):
                # Each round's app run against the floor run right after it: the machine's
                # speed drifts between rounds, the pairs see the same conditions.
                pairs = [
                    a.rps / f.rps
                    for a, f in zip(app[sc.name], floor[sc.name], strict=False)
                    if f.rps
                ]
                entry["app_over_floor"] = round(statistics.median(pairs), 3)
                entry["app_over_floor_rounds"] = [round(x, 3) for x in pairs]
        if sc.name in variant_runs:
            entry["app_pre_ping_off"] = median_stats(variant_runs[sc.name])
            entry["app_pre_ping_off_runs"] = [asdict(s) for s in variant_runs[sc.name]]
            entry["pre_ping_off_over_on_rounds"] = [
                round(b.rps / a.rps, 3)
                for a, b in zip(app[sc.name], variant_runs[sc.name], strict=False)
                if a.rps
            ]
        results["scenarios"][sc.name] = entry
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    out_path.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n")
    print("\n" + markdown_table(results))
    print(f"\nresults: {out_path}")
    if not args.keep_created and any(s.body for s in scenarios):
        print("deleting the customers the create scenario made …", flush=True)
        results["dataset"]["created_and_deleted"] = asyncio.run(delete_created(url))
        out_path.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n")
    return 1 if failed else 0


def _cpu(stats: Stats) -> str:
    if stats.cpu_ms_per_req is None:
        return ""
    return (
        f"cpu/req: python {stats.cpu_ms_per_req:.3f} ms + postgres "
        f"{stats.pg_cpu_ms_per_req or 0:.3f} ms  (load {stats.loadavg_1m:.1f})"
    )


async def delete_created(url: str) -> int:
    """Remove what the create scenario made, so runs stay comparable."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE bench_created ON COMMIT DROP AS "
                "SELECT id FROM customers WHERE tags @> ARRAY[$1]::varchar[]",
                CREATED_TAG,
            )
            n = await conn.fetchval("SELECT count(*) FROM bench_created")
            if n:
                await conn.execute(
                    "DELETE FROM contacts c USING bench_created b WHERE c.customer_id = b.id"
                )
                await conn.execute(
                    "DELETE FROM audit_events a USING bench_created b WHERE a.resource_id = b.id"
                )
                # Their contacts are gone already; without this the ON DELETE CASCADE to
                # contacts scans contacts once per customer (contacts.customer_id has only
                # partial indexes), minutes for a few thousand rows.
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute(
                    "DELETE FROM customers c USING bench_created b WHERE c.id = b.id"
                )
        orders = await _delete_created_orders(conn)
        await conn.execute("VACUUM ANALYZE customers, contacts")
        return int(n) + orders
    finally:
        await conn.close()


async def _delete_created_orders(conn: asyncpg.Connection) -> int:
    """The orders the order scenario placed (``notes`` = the bench tag), their lines and
    audit events."""
    if await conn.fetchval("SELECT to_regclass('orders') IS NULL"):
        return 0
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE bench_orders ON COMMIT DROP AS "
            "SELECT id FROM orders WHERE notes = $1",
            CREATED_TAG,
        )
        n = await conn.fetchval("SELECT count(*) FROM bench_orders")
        if n:
            await conn.execute(
                "DELETE FROM audit_events a USING bench_orders b WHERE a.resource_id = b.id"
            )
            await conn.execute("DELETE FROM orders o USING bench_orders b WHERE o.id = b.id")
    if n:
        await conn.execute("VACUUM ANALYZE orders, order_lines")
    return int(n)


# --- profiling ----------------------------------------------------------------------------
def start_py_spy(runner: Runner, sc: Scenario, seconds: float) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists() and not shutil.which(spy):
        print("  (py-spy not found: pip install py-spy)")
        return None
    assert runner.server is not None and runner.server.proc is not None
    out = RESULTS / f"py-spy-{sc.name}-{runner.run_id}"
    cmd = [
        spy,
        "record",
        "-p",
        str(runner.server.proc.pid),
        "-d",
        str(int(seconds)),
        "-r",
        "200",
        "-f",
        "raw",
        "-o",
        f"{out}.txt",
        "--nonblocking",
    ]
    print(f"  py-spy → {out}.txt")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_py_spy(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- the table ----------------------------------------------------------------------------
TARGETS = {
    "list": 0.35,
    "list_admin": 0.35,
    "list_manager": 0.35,
    "list_rep": 0.35,
    "get": 0.50,
    "get_rep": 0.50,
}


def markdown_table(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = [
        f"concurrency {c['concurrency']}, {c['duration_s']:.0f} s per run after "
        f"{c['warmup_s']:.0f} s warm-up, median of {c['repeat']} run(s), pool {c['pool_size']}; "
        "app / floor = median of the per-round ratios",
        "",
        "| scenario | req/s | p50 ms | p99 ms | errors | floor q/s | floor p50 ms "
        "| floor p99 ms | app / floor | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, e in results["scenarios"].items():
        a, f = e.get("app"), e.get("floor")
        if a is None:
            lines.append(f"| {name} | skipped: {e.get('skipped', '')[:80]} | | | | | | | | |")
            continue
        if not a["requests"]:
            lines.append(
                f"| {name} | 0: no response within the {c['duration_s']:.0f} s run "
                "| | | | | | | | |"
            )
            continue
        ratio = e.get("app_over_floor")
        target = TARGETS.get(name)
        verdict = ""
        if ratio is not None and target is not None:
            verdict = f"≥ {target:.0%}: {'met' if ratio >= target else 'MISSED'}"
        if name.startswith("list"):
            verdict += (
                "; " if verdict else ""
            ) + f"p99 < 100 ms: {'met' if a['p99_ms'] < 100 else 'MISSED'}"
        lines.append(
            f"| {name} | {a['rps']:,.0f} | {a['p50_ms']:.1f} | {a['p99_ms']:.1f} | "
            f"{a['errors']} | "
            + (f"{f['rps']:,.0f} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | " if f else "| | | ")
            + (f"{ratio:.0%} | " if ratio is not None else " | ")
            + f"{verdict} |"
        )

    def ms(d: dict[str, Any] | None, key: str) -> str:
        v = (d or {}).get(key)
        return f"{v:.3f}" if v is not None else ""

    lines += [
        "",
        "CPU per request (median; server process or bench process, and the "
        "PostgreSQL backends they used):",
        "",
        "| scenario | app: python ms | app: postgres ms | floor: python ms | floor: postgres ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, e in results["scenarios"].items():
        if e.get("app"):
            lines.append(
                f"| {name} | {ms(e['app'], 'cpu_ms_per_req')} | "
                f"{ms(e['app'], 'pg_cpu_ms_per_req')} | "
                f"{ms(e.get('floor'), 'cpu_ms_per_req')} | "
                f"{ms(e.get('floor'), 'pg_cpu_ms_per_req')} |"
            )
    off = {
        n: e["app_pre_ping_off"] for n, e in results["scenarios"].items() if "app_pre_ping_off" in e
    }
    if off:
        lines += [
            "",
            "| scenario | pre-ping on req/s | pre-ping off req/s "
            "| change (median of rounds) "
            "| p50 on → off ms | p99 on → off ms | python+pg CPU ms/req on → off |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for n, o in off.items():
            a = results["scenarios"][n]["app"]

            def cpu(d: dict[str, Any]) -> str:
                if d.get("cpu_ms_per_req") is None:
                    return "?"
                return f"{d['cpu_ms_per_req'] + (d.get('pg_cpu_ms_per_req') or 0):.3f}"

            rounds = results["scenarios"][n].get("pre_ping_off_over_on_rounds") or [
                o["rps"] / a["rps"]
            ]
            change = statistics.median(rounds) - 1
            lines.append(
                f"| {n} | {a['rps']:,.0f} | {o['rps']:,.0f} | {change:+.0%} | "
                f"{a['p50_ms']:.1f} → {o['p50_ms']:.1f} | {a['p99_ms']:.1f} → {o['p99_ms']:.1f} "
                f"| {cpu(a)} → {cpu(o)} |"
            )
    return "\n".join(lines)
