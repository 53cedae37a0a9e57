"""Engine and session factories.

Two ways into the database, by purpose:

* writes use an :class:`AsyncSession` whose transaction the request owns (one commit after
  the handler, see :mod:`crm_api.db.session`);
* reads use :mod:`crm_api.db.reader`: statements compiled by SQLAlchemy, run on an asyncpg
  pool of their own in autocommit (no BEGIN/ROLLBACK round trips, no ORM layers); with
  ``CRM_READ_PATH=engine``, run by an autocommit ``AsyncEngine`` of their own instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import await_

from crm_api.config import Settings
from crm_api.db.embedded import start_embedded
from crm_api.db.liveness import Watchdog, watch_engine
from crm_api.db.reader import EngineReadPool, ReadPath, ReadPool
from crm_api.db.reader import _loads as json_loads

logger = logging.getLogger("crm_api.db")


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        url = settings.database_url
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        return url
    return start_embedded(settings.data_dir)


class IdleReaper:
    """Closes the write pool's idle connections once no write has used the pool for
    ``idle_s``: SQLAlchemy's queue pool keeps ``pool_size`` connections forever, so every
    idle worker would hold its share of ``max_connections`` (the read pool closes its own
    idle connections: asyncpg's ``max_inactive_connection_lifetime``).

    ``dispose()`` swaps in a fresh pool; a connection checked out at that moment is closed
    when it is returned, so reaping never disturbs a request."""

    def __init__(self, engine: AsyncEngine, idle_s: float) -> None:
        self.engine = engine
        self.idle_s = idle_s
        self.last_used = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        event.listen(engine.sync_engine, "checkout", self._touch)
        event.listen(engine.sync_engine, "checkin", self._touch)

    def _touch(self, *_: object) -> None:
        self.last_used = time.monotonic()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        interval = max(0.05, min(self.idle_s / 4, 15.0))
        while True:
            await asyncio.sleep(interval)
            await self.reap()

    async def reap(self) -> bool:
        """Close the idle connections if the pool has been idle long enough."""
        pool = self.engine.pool
        if not isinstance(pool, QueuePool) or pool.checkedin() == 0 or pool.checkedout():
            return False
        if time.monotonic() - self.last_used < self.idle_s:
            return False
        try:
            await self.engine.dispose()
        except Exception:  # closing a connection to a dead server: it is gone anyway
            logger.warning("closing idle write connections failed", exc_info=True)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def checkout_ping(timeout_s: float) -> Callable[[Any, Any, Any], None]:
    """The write pool's liveness check: one simple query (``SELECT 1``), one round trip,
    answered within ``timeout_s`` (``CRM_DB_LIVENESS_TIMEOUT_S``: on a hung server the ping
    gives up after that, not after the statement deadline). A connection that fails it
    (closed by a restart or a terminated backend, left mid-error by one, or silent) is
    replaced: SQLAlchemy retries the checkout on :class:`InvalidatePoolError` (a
    DisconnectionError), and opening the replacement is bounded by the connect timeout.

    SQLAlchemy's own ``pool_pre_ping`` on asyncpg sends BEGIN, the ping and ROLLBACK (for
    pgbouncer's transaction mode): three round trips before each write request's first
    statement, half of a create's round trips. A connection asyncpg already knows is
    closed costs no round trip at all."""

    def _ping_on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        # InvalidatePoolError, as SQLAlchemy's own pre-ping raises: every connection pooled
        # before this one is replaced on its next checkout instead of being pinged (after a
        # restart all of them are dead; pinging them one by one exhausts the checkout's
        # three attempts — "This connection is closed", a 500 — found by test_faults)
        if driver.is_closed():
            raise InvalidatePoolError("the server closed this pooled connection")
        try:
            await_(driver.execute("SELECT 1", timeout=timeout_s))
        except Exception as exc:
            driver.terminate()  # see _terminate_on_invalidate
            raise InvalidatePoolError(f"ping failed: {type(exc).__name__}: {exc}") from exc

    return _ping_on_checkout


def _terminate_on_invalidate(dbapi_connection: Any, _record: Any, _exception: Any) -> None:
    """Close an invalidated connection's socket at once. SQLAlchemy closes an invalidated
    asyncpg connection gracefully first (a goodbye message, up to 2 s): on a hung server
    that is 2 s more per request that already failed — the write session invalidates
    its connection on every "database unavailable" error (``crm_api.db.session``).
    Invalidated means distrusted: nothing is lost by not saying goodbye (the server rolls
    back whatever the connection had open)."""
    if dbapi_connection is not None:
        dbapi_connection.driver_connection.terminate()


@dataclass(slots=True)
class Database:
    engine: AsyncEngine
    reads: ReadPath
    sessionmaker: async_sessionmaker[AsyncSession]
    url: str
    reaper: IdleReaper
    watchdog: Watchdog

    async def dispose(self) -> None:
        await self.watchdog.stop()
        await self.reaper.stop()
        await self.reads.close()
        await self.engine.dispose()


def create_database(settings: Settings, url: str | None = None) -> Database:
    url = url or resolve_database_url(settings)
    server_settings = {
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "lock_timeout": str(settings.db_lock_timeout_ms),
        "idle_in_transaction_session_timeout": "60000",
        "application_name": "crm-api",
        "timezone": "UTC",
        "max_parallel_workers_per_gather": str(settings.db_parallel_workers_per_gather),
        "jit": "on" if settings.db_jit else "off",
    }
    # asyncpg waits 60 s by default for a server that accepts but never answers (a hung
    # host, a dead proxy): bound opening a connection. command_timeout: the client-side
    # deadline of every statement, a little past the server's own statement_timeout; a
    # server that stops answering mid-query is found sooner by the watchdog.
    connect_args = {
        "server_settings": server_settings,
        "timeout": settings.db_connect_timeout_s,
        "command_timeout": settings.db_command_timeout_s,
    }
    watchdog = Watchdog(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
        server_settings,
        after_s=settings.db_liveness_timeout_s,
        probe_s=settings.db_connect_timeout_s,
    )
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_recycle=settings.db_pool_recycle_s,
        # the liveness check on checkout is checkout_ping (one round trip, not three)
        pool_pre_ping=False,
        echo=settings.db_echo,
        connect_args=connect_args,
        # jsonb decoded as every read path decodes it: json.loads would turn 1e20 (stored
        # by jsonb as 100000000000000000000) into an int orjson cannot render (a 500)
        json_deserializer=json_loads,
    )
    watch_engine(engine.sync_engine, watchdog)  # before the ping: a hung ping is watched
    event.listen(engine.sync_engine, "invalidate", _terminate_on_invalidate)
    if settings.db_pool_pre_ping:
        event.listen(engine.sync_engine, "checkout", checkout_ping(settings.db_liveness_timeout_s))
    reads: ReadPath
    if settings.read_path == "engine":
        # Autocommit: each read is one statement, with no BEGIN/ROLLBACK around it (the
        # asyncpg driver starts no transaction on an autocommit connection).
        read_engine = create_async_engine(
            url,
            isolation_level="AUTOCOMMIT",
            pool_size=settings.db_read_pool_size,
            max_overflow=0,
            pool_timeout=settings.db_pool_timeout_s,
            pool_recycle=settings.db_pool_recycle_s,
            pool_pre_ping=settings.db_pool_pre_ping,
            echo=settings.db_echo,
            connect_args=connect_args,
            # JSON decoded as on the asyncpg path (orjson; see reader._loads)
            json_deserializer=json_loads,
        )
        watch_engine(read_engine.sync_engine, watchdog)
        event.listen(read_engine.sync_engine, "invalidate", _terminate_on_invalidate)
        reads = EngineReadPool(
            read_engine,
            url,
            server_settings=server_settings,
            reaper=IdleReaper(read_engine, settings.db_idle_timeout_s),
        )
    else:
        reads = ReadPool(
            url,
            engine.dialect,
            size=settings.db_read_pool_size,
            acquire_timeout=settings.db_pool_timeout_s,
            connect_timeout=settings.db_connect_timeout_s,
            idle_s=settings.db_idle_timeout_s,
            command_timeout=settings.db_command_timeout_s,
            server_settings=server_settings,
            watchdog=watchdog,
        )
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
    return Database(
        engine=engine,
        reads=reads,
        sessionmaker=sessionmaker,
        url=url,
        reaper=IdleReaper(engine, settings.db_idle_timeout_s),
        watchdog=watchdog,
    )
