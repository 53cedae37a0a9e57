"""Alembic, driven from code (``crm-api migrate``, app start-up, tests).

Upgrades and downgrades hold a PostgreSQL advisory lock for their whole run: two containers
(or ``serve`` and ``migrate``) starting at once would otherwise both read the same
``alembic_version`` and both run the same DDL, and one of them fails half-way (duplicate
table, duplicate version row). With the lock the second waits, then finds the schema at
head and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

logger = logging.getLogger("crm_api.db")

#: Advisory lock key held while migrating (arbitrary, stable: "crm-migr").
MIGRATION_LOCK = 0x63726D2D6D696772


def migrations_dir() -> Path:
    candidates = [
        Path.cwd() / "migrations",
        Path(__file__).resolve().parents[3] / "migrations",
        Path("/app/migrations"),
    ]
    for path in candidates:
        if (path / "env.py").exists():
            return path
    raise RuntimeError("cannot find the migrations directory (run from the project root)")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    script = ScriptDirectory.from_config(alembic_config("postgresql+asyncpg://"))
    return script.get_current_head()


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Hold the migration advisory lock (session level, on a connection of its own) while
    the block runs; wait for it when another process holds it.

    Alembic's environment runs its own event loop (``asyncio.run``), so the lock lives on a
    private loop of this thread that is idle, not closed, while Alembic runs."""
    loop = asyncio.new_event_loop()
    engine = create_async_engine(url, poolclass=pool.NullPool)
    conn: AsyncConnection | None = None
    try:
        conn = loop.run_until_complete(engine.connect())
        got = loop.run_until_complete(
            conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        )
        if not got:
            logger.info("another process is migrating this database: waiting for it")
            loop.run_until_complete(
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            )
        loop.run_until_complete(conn.commit())  # no transaction left open while we wait
        yield
    finally:
        try:
            if conn is not None:
                # Ending the session releases the lock (also when the server already
                # dropped it: then there is nothing to release and nothing to report).
                with suppress(Exception):
                    loop.run_until_complete(conn.close())
            loop.run_until_complete(engine.dispose())
        finally:
            loop.close()


def upgrade(url: str, revision: str = "head") -> None:
    with migration_lock(url):
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    with migration_lock(url):
        command.downgrade(alembic_config(url), revision)
