"""A quick look at whether the database can be reached, so commands and the test suite can
say so in one line instead of failing deep inside a pool or a migration with a traceback."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import asyncpg
from sqlalchemy.engine import make_url


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened; the message is one line for a human."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "no answer (timed out)"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a database is, in the terms libpq's tools take (``-h -p -U -d``)."""

    host: str | None
    port: int | None
    user: str | None
    password: str | None
    database: str
    sslmode: str | None = None

    @classmethod
    def from_url(cls, url: str) -> Target:
        parsed = make_url(url)
        host = parsed.host or parsed.query.get("host")  # a Unix socket directory: ?host=/dir
        if isinstance(host, tuple):
            host = host[0]
        ssl = parsed.query.get("sslmode") or parsed.query.get("ssl")
        if isinstance(ssl, tuple):
            ssl = ssl[0]
        if not parsed.database:
            raise DatabaseUnavailable(f"the database URL names no database: {parsed!r}")
        return cls(
            host=host,
            port=parsed.port,
            user=parsed.username,
            password=parsed.password,
            database=parsed.database,
            sslmode=ssl,
        )

    def tool_args(self) -> list[str]:
        args = ["--no-password"]
        if self.host:
            args += ["-h", self.host]
        if self.port:
            args += ["-p", str(self.port)]
        if self.user:
            args += ["-U", self.user]
        return args

    def tool_env(self) -> dict[str, str]:
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
        if self.password:
            env["PGPASSWORD"] = self.password
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        return env

    async def connect(self, within_s: float) -> asyncpg.Connection:
        """An asyncpg connection, or :class:`DatabaseUnavailable` saying why not."""
        try:
            return await asyncpg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                database=self.database,
                timeout=within_s,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL ({self.describe()}): {_reason(exc)}"
            ) from exc

    def describe(self) -> str:
        where = self.host or "localhost"
        return f"{self.database} on {where}" + (f":{self.port}" if self.port else "")


async def probe(url: str, within_s: float = 10.0) -> int:
    """Connect to ``url``, run one query and return the server's major version.

    Raises :class:`DatabaseUnavailable` (server down, name unknown, database missing,
    credentials refused, no answer within ``within_s`` seconds)."""
    target = Target.from_url(url)
    conn = await target.connect(within_s)
    try:
        return int(await asyncio.wait_for(conn.fetchval("SHOW server_version_num"), within_s))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(
            f"PostgreSQL ({target.describe()}) does not answer: {_reason(exc)}"
        ) from exc
    finally:
        conn.terminate()


def check_database(url: str, within_s: float = 10.0) -> int:
    """:func:`probe` for synchronous callers (the CLI, pytest's start-up)."""
    return asyncio.run(probe(url, within_s)) // 10000
