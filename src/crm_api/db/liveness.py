"""Telling a hung server from a slow statement, in seconds.

A server that accepts TCP but never answers (a SIGSTOPped host, a dead proxy or
middlebox) looks, on an established connection, exactly like a slow statement: the kernel
keeps acknowledging, nothing comes back. The per-statement client deadline (asyncpg's
``command_timeout``) must stay above ``statement_timeout`` (15 s) so that legitimate slow
statements finish; alone, it would make every request on a hung server wait that long.

:class:`Watchdog` knows which connections are busy and since when (the read pool marks a
connection for each statement; the SQLAlchemy pools from checkout to checkin, which covers
the checkout ping, every statement and COMMIT). Once one has been busy for
``CRM_DB_LIVENESS_TIMEOUT_S``, it asks the server whether it answers at all, on a fresh
connection bounded by ``CRM_DB_CONNECT_TIMEOUT_S``. Any answer, even a refusal ("too many
clients", "starting up"), means the server is alive and the statement is merely slow: it
runs on. No answer, or no server (connection refused, reset), means it is hung or gone:
the busy connections are terminated, so each request on them fails at once with a
connection error, which the problem handler answers 503 ``database_unavailable`` with
``Retry-After``; a write whose COMMIT was cut this way is never reported as a success.

One probe per check, however many connections are busy, and at most one per
``after_s / 2`` while the server keeps answering; no probe while no connection has been
busy that long (the steady state costs a ``monotonic()`` and two dict operations per
checkout or statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from sqlalchemy import event

logger = logging.getLogger("crm_api.db")


async def probe_fresh(
    dsn: str, server_settings: dict[str, str], sql: str, deadline_s: float
) -> Any:
    """Run ``sql`` on a connection opened for the purpose and closed after, within
    ``deadline_s`` seconds overall (readiness and the liveness probe: they must see what a
    new connection would see, which a pooled connection would hide)."""
    async with asyncio.timeout(deadline_s):
        conn = await asyncpg.connect(
            dsn, timeout=deadline_s, command_timeout=deadline_s, server_settings=server_settings
        )
        try:
            return await conn.fetchval(sql)
        finally:
            conn.terminate()  # no goodbye round trip to a server that may be hung


class Watchdog:
    """Busy connections of one :class:`~crm_api.db.engine.Database`, and the check that
    drops them when the server stops answering. Started on first use (it needs a running
    loop), stopped with the database."""

    def __init__(
        self,
        dsn: str,
        server_settings: dict[str, str],
        *,
        after_s: float,
        probe_s: float,
    ) -> None:
        self._dsn = dsn
        self._server_settings = server_settings
        self.after_s = after_s
        self.probe_s = probe_s
        #: key → (busy since, the driver connection: asyncpg's, with ``terminate()``)
        self._busy: dict[int, tuple[float, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        #: When a probe last got an answer (monotonic): a live server is asked again only
        #: after ``after_s / 2``, so a long statement costs a probe a second, not a tick.
        self._answered_at = float("-inf")
        #: Probes run, and connections terminated because the server did not answer.
        self.probes = 0
        self.terminated = 0

    def busy(self, key: int, driver_connection: Any) -> None:
        self._busy[key] = (time.monotonic(), driver_connection)
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="db-liveness-watchdog"
            )

    def idle(self, key: int) -> None:
        self._busy.pop(key, None)

    async def _run(self) -> None:
        interval = max(0.05, self.after_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:  # never let the watchdog die: log and look again
                logger.warning("database liveness check failed", exc_info=True)

    async def check(self) -> int:
        """Probe the server if a connection has been busy past the deadline; terminate
        those connections when it does not answer. Returns how many were terminated."""
        now = time.monotonic()
        stale: list[tuple[int, float, Any]] = []
        for key, (since, conn) in list(self._busy.items()):
            if conn.is_closed():  # dropped already (its checkin may never come)
                self._busy.pop(key, None)
            elif now - since >= self.after_s:
                stale.append((key, since, conn))
        if not stale or now - self._answered_at < self.after_s / 2:
            return 0
        if await self.server_answers():
            self._answered_at = time.monotonic()
            return 0
        dropped = 0
        for key, since, conn in stale:
            if self._busy.get(key, (None, None))[0] == since:  # still the same busy spell
                self._busy.pop(key, None)
                conn.terminate()
                dropped += 1
        if dropped:
            self.terminated += dropped
            logger.warning(
                "database did not answer within %.1f s: dropped %d busy connection(s)",
                self.after_s + self.probe_s,
                dropped,
            )
        return dropped

    async def server_answers(self) -> bool:
        """Whether the server answers a new connection within ``probe_s``: any answer
        counts, a refusal included (it proves the server is running)."""
        self.probes += 1
        try:
            await probe_fresh(self._dsn, self._server_settings, "SELECT 1", self.probe_s)
        except asyncpg.PostgresError:
            return True  # "too many clients", "starting up": an answer all the same
        except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError):
            return False
        return True

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def watch_engine(sync_engine: Any, watchdog: Watchdog) -> None:
    """Mark an SQLAlchemy engine's connections busy from checkout to checkin. Listen before
    any other checkout listener (the ping): a ping that hangs is covered too."""

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        watchdog.busy(id(record), dbapi_connection.driver_connection)

    def checkin(_dbapi_connection: Any, record: Any) -> None:
        watchdog.idle(id(record))

    event.listen(sync_engine, "checkout", checkout)
    event.listen(sync_engine, "checkin", checkin)
