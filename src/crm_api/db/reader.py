"""The read path: SQLAlchemy builds and compiles statements, asyncpg runs them.

Reads are single autocommit statements. Running them through SQLAlchemy's
``AsyncConnection`` cost more CPU than the query itself (docs/benchmarks.md: pool
checkout in a greenlet, connection events, the execution context and result rows,
~0.6 ms per get and ~0.9 ms per list against 0.12 / 0.5 ms for asyncpg alone). Here the
statement is still built with SQLAlchemy and compiled through its compiled cache, exactly
as an ``execute()`` would, and then run on a plain asyncpg pool:

* asyncpg's pool is a FIFO queue, checks liveness without a round trip (a connection the
  server closed is replaced on acquire) and, with the reset below, releases without one;
* statements use asyncpg's per-connection prepared statement cache;
* ``jsonb`` is decoded with orjson.

:class:`ReadResult` offers the part of SQLAlchemy's ``Result`` the repositories use, so a
repository function runs unchanged on a :class:`Reader` (requests that only read) or on
an ``AsyncSession`` (inside a write transaction).

Compiling outside ``execute()`` uses six private SQLAlchemy APIs (:data:`PRIVATE_API`);
pyproject.toml caps SQLAlchemy below 2.2 for them, and :func:`check_private_api` runs when a
:class:`ReadPool` is built, so a release that changed them stops the app at start-up with
a message naming what is missing, instead of failing requests. ``CRM_READ_PATH=engine``
(:class:`EngineReadPool`) runs the same statements through SQLAlchemy's ``AsyncEngine``
instead (public API only, slower), behind the same :class:`Reader` interface.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, TypeVar, cast
from weakref import WeakKeyDictionary

import asyncpg
import orjson
import sqlalchemy
from sqlalchemy import (
    ARRAY,
    Executable,
    Float,
    Integer,
    Numeric,
    String,
    TypeDecorator,
    bindparam,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.util import LRUCache

from crm_api.db.liveness import Watchdog, probe_fresh
from crm_api.errors import is_database_unavailable


def _loads(data: str | bytes | memoryview) -> Any:
    """JSON from the database, as every read path decodes it (``EngineReadPool`` passes this
    to its engine too). orjson reads a number past 64 bits as a float, where ``json`` would
    return an int: responses are rendered by orjson, which cannot write such an int (a 500),
    and jsonb turns a float such as ``1e20`` into the integer literal
    ``100000000000000000000``, so a float is the faithful reading here."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # what orjson refuses and json takes
        return json.loads(data if isinstance(data, str) else bytes(data))


async def _init_connection(conn: asyncpg.Connection) -> None:
    # The same wire formats as SQLAlchemy's asyncpg dialect sets up (its bind processors
    # hand JSON over as text), decoded with orjson.
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="binary",
        encoder=lambda text: b"\x01" + text.encode(),
        decoder=lambda raw: _loads(raw[1:]),
    )
    await conn.set_type_codec(
        "json",
        schema="pg_catalog",
        format="binary",
        encoder=str.encode,
        decoder=_loads,
    )


async def _reset(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET
    ALL: a round trip per request). A reader runs single autocommit statements and sets
    no session state; a connection left in a transaction (a cancelled request) is reset
    the thorough way."""
    if conn.is_in_transaction():
        await conn.reset()


@dataclass(frozen=True, slots=True)
class _Plan:
    """What running one compiled statement needs, worked out once per compiled form."""

    sql: str
    positions: tuple[str, ...]
    bind: dict[str, Callable[[Any], Any]]
    keys: tuple[str, ...]
    results: tuple[tuple[int, Callable[[Any], Any]], ...]
    expanding: bool


class Statements:
    """Compiles statements the way ``Connection.execute`` does (same dialect, same cache
    keys), for execution by asyncpg. One per database."""

    def __init__(self, dialect: Dialect, size: int = 500) -> None:
        self.dialect = dialect
        self._compiled: LRUCache[Any, Any] = LRUCache(size)
        self._plans: WeakKeyDictionary[SQLCompiler, _Plan] = WeakKeyDictionary()

    def prepare(
        self, stmt: Executable, values: Mapping[str, Any] | None = None
    ) -> tuple[str, list[Any], _Plan]:
        """SQL, positional arguments and plan of ``stmt``; ``values`` are the values of
        its named bind parameters (as in ``Connection.execute(stmt, values)``)."""
        element = cast(ClauseElement, stmt)
        compiled, extracted, collected, _ = element._compile_w_cache(
            self.dialect, compiled_cache=self._compiled, column_keys=[]
        )
        compiled = cast(SQLCompiler, compiled)
        plan = self._plans.get(compiled)
        if plan is None:
            plan = self._plans[compiled] = self._plan(compiled)
        params = compiled.construct_params(
            values,
            extracted_parameters=extracted,
            escape_names=False,
            _collected_params=collected,
        )
        sql, positions, bind = plan.sql, plan.positions, plan.bind
        if plan.expanding:  # IN (...) lists: rendered per parameter set
            state = compiled._process_parameters_for_postcompile(params)
            # state.parameters is typed Mapping (a dict at runtime); params is only read below
            sql, params = state.statement, state.parameters  # type: ignore[assignment]
            positions = tuple(state.positiontup or ())
            bind = {**bind, **state.processors}
        args = [bind[k](params[k]) if k in bind else params[k] for k in positions]
        return sql, args, plan

    def _plan(self, compiled: SQLCompiler) -> _Plan:
        dialect = self.dialect
        results = []
        for i, column in enumerate(compiled._result_columns):
            if _native_array(column.type, dialect):
                continue  # asyncpg returns the list the processor would rebuild
            processor = _result_processor(column.type, dialect)
            if processor is not None:
                results.append((i, processor))
        return _Plan(
            sql=compiled.string,
            positions=tuple(compiled.positiontup or ()),
            bind={k: v for k, v in compiled._bind_processors.items() if callable(v)},
            keys=tuple(c.keyname for c in compiled._result_columns),
            results=tuple(results),
            expanding=bool(compiled.literal_execute_params or compiled.post_compile_params),
        )


#: PostgreSQL type OIDs: ``numeric`` and ``float8``.
_NUMERIC_OID, _FLOAT8_OID = 1700, 701


def _is_numeric(type_: Any) -> bool:
    impl = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
    return isinstance(impl, Numeric | Float)


def _result_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """``type_``'s result processor. The asyncpg dialect's numeric types pick theirs by the
    column's wire type, which ``execute()`` reads from the cursor description and a compiled
    statement does not know (``None`` there raises): decide per value instead, as asyncpg
    returns ``float`` for float4/float8 and ``Decimal``/``int`` for numeric and integers."""
    if isinstance(type_, ARRAY) and _is_numeric(type_.item_type):
        return _numeric_array_processor(type_, dialect)
    if not _is_numeric(type_):
        processor: Callable[[Any], Any] | None = type_._cached_result_processor(dialect, None)
        return processor
    from_float = type_._cached_result_processor(dialect, _FLOAT8_OID)
    from_numeric = type_._cached_result_processor(dialect, _NUMERIC_OID)
    if from_float is None and from_numeric is None:
        return None

    def process(value: Any) -> Any:
        convert = from_float if isinstance(value, float) else from_numeric
        return value if convert is None else convert(value)

    return process


def _numeric_array_processor(type_: ARRAY[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """An array of numerics: its items processed per value (see :func:`_result_processor`),
    nested lists as SQLAlchemy's ARRAY returns them (tuples with ``as_tuple``)."""
    item = _result_processor(type_.item_type, dialect)
    if item is None and not type_.as_tuple:
        return None
    collection: Callable[[Any], Any] = tuple if type_.as_tuple else list

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return collection(walk(v) for v in value)
        return value if item is None else item(value)

    def process(value: Any) -> Any:
        return None if value is None else walk(value)

    return process


def _native_array(type_: Any, dialect: Dialect) -> bool:
    """An ARRAY of a type without a result processor of its own, read as a list."""
    if not isinstance(type_, ARRAY) or type_.as_tuple or type_.dimensions not in (None, 1):
        return False
    return _result_processor(type_.item_type, dialect) is None


#: The private SQLAlchemy API :class:`Statements` uses, as ``(owner, attribute)``; the sixth
#: is ``construct_params``'s ``_collected_params`` keyword. pyproject.toml caps SQLAlchemy
#: below 2.2 for them; :func:`check_private_api` verifies them at start-up.
PRIVATE_API: tuple[tuple[type[Any], str], ...] = (
    (ClauseElement, "_compile_w_cache"),
    (SQLCompiler, "_process_parameters_for_postcompile"),
    (SQLCompiler, "_bind_processors"),
    (SQLCompiler, "_result_columns"),
    (TypeEngine, "_cached_result_processor"),
)


class ReadPathUnavailable(RuntimeError):
    """The asyncpg read path cannot run on the installed SQLAlchemy (start-up refuses)."""


def _probe_statement() -> Executable:
    """One statement that goes through every private part: bind processors (JSONB), result
    columns (a Numeric, an array), an expanding ``IN`` and a named parameter."""
    return select(
        literal({"a": 1}, JSONB).label("j"),
        literal(Decimal("1.5"), Numeric(18, 4)).label("n"),
        literal(["x"], ARRAY(String)).label("s"),
    ).where(literal(1, Integer).in_([1, 2]), bindparam("b", 3, Integer) > 0)


def check_private_api(dialect: Dialect) -> None:
    """Fail loudly, naming what is missing, when the installed SQLAlchemy no longer has the
    private API :class:`Statements` relies on (or it no longer behaves as used here).

    Raises :class:`ReadPathUnavailable`; ``CRM_READ_PATH=engine`` needs none of it."""
    version = sqlalchemy.__version__

    def unavailable(what: str) -> ReadPathUnavailable:
        return ReadPathUnavailable(
            f"crm-api's asyncpg read path (crm_api/db/reader.py) relies on private SQLAlchemy "
            f"API: {what}, which does not work with the installed SQLAlchemy {version}. "
            "Set CRM_READ_PATH=engine to read through SQLAlchemy's AsyncEngine instead "
            "(public API only, slower), or install the SQLAlchemy version requirements.lock "
            "pins (pyproject.toml allows < 2.2)."
        )

    for owner, name in PRIVATE_API:
        if not hasattr(owner, name):
            raise unavailable(f"{owner.__name__}.{name} is missing")
    if "_collected_params" not in inspect.signature(SQLCompiler.construct_params).parameters:
        raise unavailable("SQLCompiler.construct_params(_collected_params=...) is missing")
    try:
        sql, args, plan = Statements(dialect, size=4).prepare(_probe_statement())
    except Exception as exc:
        raise unavailable(
            f"compiling through ClauseElement._compile_w_cache and "
            f"SQLCompiler.construct_params failed ({type(exc).__name__}: {exc})"
        ) from exc
    numbers = sorted({int(n) for n in re.findall(r"\$(\d+)", sql)})
    if (
        plan.keys != ("j", "n", "s")
        or "POSTCOMPILE" in sql
        or numbers != list(range(1, len(args) + 1))
        or len(args) != 8
        or '{"a": 1}' not in args
    ):
        raise unavailable(
            f"a probe statement compiled unexpectedly (keys {plan.keys}, {len(args)} "
            f"arguments, SQL {sql!r})"
        )


T = TypeVar("T")


def _at_most_one(rows: Sequence[object]) -> None:
    if len(rows) > 1:
        raise MultipleResultsFound("Multiple rows were found when one or none was required")


def _required(row: T | None) -> T:
    if row is None:
        raise NoResultFound("No row was found when one was required")
    return row


class ReadResult:
    """Rows of one statement, with the subset of SQLAlchemy's ``Result`` API the
    repositories use: ``keys``, ``all``, ``first``, ``one``, ``one_or_none``, ``scalar``,
    ``scalar_one``, ``scalar_one_or_none``, ``scalars().all()``, ``mappings()`` and
    iteration. Rows are tuples that also answer by column name (``row.email``)."""

    __slots__ = ("_keys", "_rows")

    def __init__(self, keys: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        self._keys = keys
        self._rows = rows

    def keys(self) -> tuple[str, ...]:
        return self._keys

    def _row_type(self) -> type[Row]:
        return _row_class(self._keys)

    def all(self) -> list[Row]:
        cls = self._row_type()
        return [cls(r) for r in self._rows]

    def __iter__(self) -> Iterator[Row]:
        return iter(self.all())

    def first(self) -> Row | None:
        return self._row_type()(self._rows[0]) if self._rows else None

    def one_or_none(self) -> Row | None:
        _at_most_one(self._rows)
        return self.first()

    def one(self) -> Row:
        return _required(self.one_or_none())

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return row[0] if row is not None else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> _Scalars:
        return _Scalars([r[0] for r in self._rows])

    def mappings(self) -> _Mappings:
        keys = self._keys
        return _Mappings([dict(zip(keys, r, strict=True)) for r in self._rows])


class Row(tuple[Any, ...]):
    """A result row: a tuple whose columns are also attributes."""

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._index[name]]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return {k: self[i] for k, i in self._index.items()}


_ROW_CLASSES: dict[tuple[str, ...], type[Row]] = {}


def _row_class(keys: tuple[str, ...]) -> type[Row]:
    cls = _ROW_CLASSES.get(keys)
    if cls is None:
        if len(_ROW_CLASSES) > 1000:
            _ROW_CLASSES.clear()
        index = {k: i for i, k in reversed(list(enumerate(keys)))}
        cls = _ROW_CLASSES[keys] = type("Row", (Row,), {"__slots__": (), "_index": index})
    return cls


@dataclass(frozen=True, slots=True)
class _Scalars:
    values: list[Any]

    def all(self) -> list[Any]:
        return self.values

    def first(self) -> Any:
        return self.values[0] if self.values else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)


@dataclass(frozen=True, slots=True)
class _Mappings:
    rows: list[dict[str, Any]]

    def all(self) -> list[dict[str, Any]]:
        return self.rows

    def first(self) -> dict[str, Any] | None:
        return self.rows[0] if self.rows else None

    def one_or_none(self) -> dict[str, Any] | None:
        _at_most_one(self.rows)
        return self.first()

    def one(self) -> dict[str, Any]:
        return _required(self.one_or_none())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)


class Reader:
    """Runs read statements, each on a connection borrowed from the read pool for just
    that statement (reads are single autocommit statements: holding a connection across a
    request's other work would only make the small pool wait).

    What repositories read through, whichever ``CRM_READ_PATH`` is configured: the asyncpg
    path (:class:`AsyncpgReader`) or SQLAlchemy's engine (:class:`EngineReader`). Errors are
    the driver's or SQLAlchemy's own (``errors.classify_database_error`` maps both)."""

    __slots__ = ()

    async def execute(
        self, stmt: Executable, values: Mapping[str, Any] | None = None
    ) -> ReadResult:
        raise NotImplementedError


class AsyncpgReader(Reader):
    """The default path: compiled by :class:`Statements`, run on :class:`ReadPool`."""

    __slots__ = ("_pool",)

    def __init__(self, pool: ReadPool) -> None:
        self._pool = pool

    async def execute(
        self, stmt: Executable, values: Mapping[str, Any] | None = None
    ) -> ReadResult:
        sql, args, plan = self._pool.statements.prepare(stmt, values)
        records = await self._pool.fetch(sql, args)
        if plan.results:
            rows = [_processed(r, plan.results) for r in records]
        else:
            rows = [tuple(r) for r in records]
        keys = plan.keys if plan.keys else (tuple(records[0].keys()) if records else ())
        return ReadResult(keys, rows)


def _processed(
    record: Sequence[Any], processors: tuple[tuple[int, Callable[[Any], Any]], ...]
) -> tuple[Any, ...]:
    values = list(record)
    for i, processor in processors:
        values[i] = processor(values[i])
    return tuple(values)


class ReadPool:
    """An asyncpg pool for reads, opened on first use (so building a :class:`Database`
    needs no running loop and no reachable server) and closed with the database."""

    def __init__(
        self,
        url: str,
        dialect: Dialect,
        *,
        size: int,
        acquire_timeout: float,
        connect_timeout: float,
        idle_s: float,
        command_timeout: float | None,
        server_settings: dict[str, str],
        watchdog: Watchdog | None = None,
    ) -> None:
        sa_url = make_url(url)
        self._dsn = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._size = size
        self._acquire_timeout = acquire_timeout
        self._connect_timeout = connect_timeout
        self._watchdog = watchdog
        self._idle_s = idle_s
        self._command_timeout = command_timeout
        self._server_settings = server_settings
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._turns = asyncio.Semaphore(size)
        check_private_api(dialect)  # at start-up: refuse now rather than fail every read
        self.statements = Statements(dialect)
        #: Stateless: one per pool, handed to every request (``ReadConnection``).
        self.reader: Reader = AsyncpgReader(self)

    async def _open(self) -> asyncpg.Pool:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self._size,
                    init=_init_connection,
                    reset=_reset,
                    timeout=self._connect_timeout,  # opening one connection
                    # idle connections go back to the server (min_size=0: all of them)
                    max_inactive_connection_lifetime=self._idle_s,
                    # the client-side deadline per statement (a hung server: 503, no hang)
                    command_timeout=self._command_timeout,
                    server_settings=self._server_settings,
                )
        return self._pool

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[asyncpg.Record]:
        pool = self._pool or await self._open()
        # Waiting happens here, first come first served: asyncio.Queue, which asyncpg's
        # pool waits on, hands a freed connection to whoever asks next, and a waiter that
        # loses it goes to the back of the line (p99 several times p50 under load).
        if not self._turns.locked():
            await self._turns.acquire()  # free: no wait, no timer
        else:
            try:
                async with asyncio.timeout(self._acquire_timeout):
                    await self._turns.acquire()
            except TimeoutError:
                raise TimeoutError("no read connection became free in time") from None
        try:
            # A turn means a pooled connection is free (the turns are as many as the pool's
            # connections), so no acquire timeout: asyncpg wraps one in a task per call.
            # Opening a new connection is bounded by the connect timeout.
            async with pool.acquire() as conn:
                watchdog = self._watchdog
                if watchdog is not None:
                    # the server has this long to show it is alive (crm_api.db.liveness)
                    watchdog.busy(id(conn), conn)
                try:
                    return await conn.fetch(sql, *args)  # type: ignore[no-any-return]
                except TimeoutError:
                    # Past the command timeout: the server did not answer. Releasing would
                    # wait for the cancellation asyncpg sends to that same server; drop the
                    # connection instead (the pool opens a new one when asked).
                    conn.terminate()
                    raise
                finally:
                    if watchdog is not None:
                        watchdog.idle(id(conn))
        finally:
            self._turns.release()

    async def probe(self, sql: str, deadline_s: float) -> Any:
        """Run ``sql`` on a connection of its own, opened for the purpose and closed after,
        within ``deadline_s`` seconds overall: readiness must see what a new worker would see
        (a server refusing new connections, too many clients, a hung host), which a pooled
        connection would hide."""
        return await probe_fresh(self._dsn, self._server_settings, sql, deadline_s)

    def open_connections(self) -> int:
        """Connections the pool holds open, idle or lent out."""
        return self._pool.get_size() if self._pool is not None else 0

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except (TimeoutError, OSError):
                pool.terminate()


# --- CRM_READ_PATH=engine ------------------------------------------------------------------
class _Reaper(Protocol):
    """Closes an engine's idle pooled connections (``crm_api.db.engine.IdleReaper``)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class EngineReader(Reader):
    """The fallback path: the same statements, run by SQLAlchemy's ``AsyncEngine`` on an
    autocommit connection (no BEGIN/ROLLBACK round trips), public API only."""

    __slots__ = ("_pool",)

    def __init__(self, pool: EngineReadPool) -> None:
        self._pool = pool

    async def execute(
        self, stmt: Executable, values: Mapping[str, Any] | None = None
    ) -> ReadResult:
        return await self._pool.execute(stmt, values)


class EngineReadPool:
    """``CRM_READ_PATH=engine``: reads through an ``AsyncEngine`` of their own, built with
    ``isolation_level="AUTOCOMMIT"`` and sized like the asyncpg read pool, for when the
    asyncpg path cannot run on the installed SQLAlchemy (:func:`check_private_api`).

    Slower (SQLAlchemy's execution context, result and pool events per statement) but
    independent of SQLAlchemy's internals. Same interface as :class:`ReadPool`: ``reader``,
    ``probe``, ``open_connections``, ``close``; same errors for the same faults (SQLAlchemy's
    wrappers, which ``errors.classify_database_error`` reads through)."""

    def __init__(
        self,
        engine: AsyncEngine,
        url: str,
        *,
        server_settings: dict[str, str],
        reaper: _Reaper,
    ) -> None:
        self.engine = engine
        sa_url = make_url(url)
        self._dsn = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._server_settings = server_settings
        self._reaper = reaper
        self._reaping = False
        self._closed = False
        #: Stateless: one per pool, handed to every request (``ReadConnection``).
        self.reader: Reader = EngineReader(self)

    async def execute(
        self, stmt: Executable, values: Mapping[str, Any] | None = None
    ) -> ReadResult:
        if not self._reaping and not self._closed:
            self._reaping = True
            self._reaper.start()  # needs a running loop: started on first use
        async with self.engine.connect() as conn:
            try:
                result = await conn.execute(stmt, dict(values) if values else None)
                keys = tuple(result.keys())
                rows = [tuple(r) for r in result.all()]
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) or is_database_unavailable(exc):
                    # lost, hung (past the command timeout) or cancelled mid-statement: drop
                    # the connection without a round trip, as the asyncpg path does
                    await conn.invalidate()
                raise
        return ReadResult(keys, rows)

    async def probe(self, sql: str, deadline_s: float) -> Any:
        """As :meth:`ReadPool.probe`: a fresh connection, within ``deadline_s``."""
        return await probe_fresh(self._dsn, self._server_settings, sql, deadline_s)

    def open_connections(self) -> int:
        """Connections the pool holds open, idle or lent out."""
        pool = self.engine.pool
        checkedin = getattr(pool, "checkedin", None)
        checkedout = getattr(pool, "checkedout", None)
        if checkedin is None or checkedout is None:
            return 0
        return int(checkedin()) + int(checkedout())

    async def close(self) -> None:
        self._closed = True
        await self._reaper.stop()
        await self.engine.dispose()


#: What ``Database.reads`` holds, by ``CRM_READ_PATH``.
ReadPath = ReadPool | EngineReadPool

#: What a read runs on: the read path's connection, or the request's write session (a read
#: inside a write). Here, below the kit and every domain, so both can name it.
Executor = Reader | AsyncSession
