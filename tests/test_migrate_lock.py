"""Two processes migrating one database at once (two containers starting together): the
advisory lock makes the second wait, then find the schema at head. Without it both run the
same DDL and one fails half-way.

Runs on a scratch database of its own, like test_migrations.py. Plain (sync) tests:
Alembic's environment runs its own event loop, here one per thread.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from crm_api.db.migrate import MIGRATION_LOCK, head_revision, migration_lock, upgrade

_THIS_DB = "SELECT oid FROM pg_database WHERE datname = current_database()"


async def _admin(url: str, sql: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def _scalar(url: str, sql: str) -> object:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar()
    finally:
        await engine.dispose()


@pytest.fixture
def scratch_url(database_url: str) -> Iterator[str]:
    name = f"crm_migrate_lock_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(database_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_concurrent_upgrades_both_succeed(scratch_url: str) -> None:
    """Both threads start only once the lock is held elsewhere, so they are guaranteed to
    overlap (no reliance on timing): while this test holds the lock, neither may migrate;
    released, both finish without an error and the schema is at head, migrated once."""
    errors: list[BaseException] = []
    started = threading.Barrier(3)

    def migrate() -> None:
        try:
            started.wait(timeout=30)
            upgrade(scratch_url)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    with migration_lock(scratch_url):
        for t in threads:
            t.start()
        started.wait(timeout=30)
        # Both are now queued on the lock (or about to be): nothing may be migrated yet.
        waiting = 0
        for _ in range(600):  # wait until both block on the lock: up to 60 s on a busy box
            waiting = int(
                asyncio.run(
                    _scalar(
                        scratch_url,
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                        f" AND database = ({_THIS_DB}) AND objid = {MIGRATION_LOCK & 0xFFFFFFFF}",
                    )
                )
                or 0
            )
            if waiting == 2:
                break
            threading.Event().wait(0.1)
        assert waiting == 2, "both upgrades should be waiting for the migration lock"
        assert asyncio.run(_scalar(scratch_url, "SELECT to_regclass('alembic_version')")) is None
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert asyncio.run(_scalar(scratch_url, "SELECT version_num FROM alembic_version")) == (
        head_revision()
    )
    # The lock is released: nobody holds it any more.
    held = asyncio.run(
        _scalar(
            scratch_url,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            f" AND database = ({_THIS_DB}) AND objid = {MIGRATION_LOCK & 0xFFFFFFFF}",
        )
    )
    assert held == 0
