"""Migrations: one head, every step reversible, and the models agree with the migrated schema.

Runs on a scratch database of its own (created and dropped here), so the shared test
database and other sessions on the server are never touched. Plain (sync) tests: Alembic's
environment runs its own event loop.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from crm_api.db.migrate import alembic_config, downgrade, migrations_dir, upgrade
from crm_api.models import Base


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("postgresql+asyncpg://"))


async def _admin(url: str, sql: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture
def scratch_url(database_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server; dropped afterwards."""
    name = f"crm_migrations_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(database_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql))).all()]
    finally:
        await engine.dispose()


_SCHEMA = {
    "columns": """SELECT table_name, column_name, data_type, is_nullable, column_default,
                  character_maximum_length FROM information_schema.columns
                  WHERE table_schema = 'public' ORDER BY 1, 2""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes"
    " WHERE schemaname = 'public' ORDER BY 1, 2",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                      ORDER BY 1, 2""",
    "types": "SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace"
    " AND typtype IN ('e', 'd', 'c') AND typrelid = 0 ORDER BY 1",
    "sequences": "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1",
    "functions": "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
    " ORDER BY 1",
}


def _schema(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {k: asyncio.run(_query(url, sql)) for k, sql in _SCHEMA.items()}


def test_single_head_and_linear_history():
    script = _script()
    heads = script.get_heads()
    assert len(heads) == 1, f"several alembic heads: {heads} (merge them)"
    revisions = list(script.walk_revisions())
    assert len(revisions) >= 1
    assert sum(1 for r in revisions if r.down_revision is None) == 1, "several roots"
    for rev in revisions:
        assert not rev.is_merge_point or rev.revision in heads
        assert isinstance(rev.down_revision, str | None), f"{rev.revision} merges branches"
    # dated file names (STYLE.md): YYYYMMDD_NNNN_slug.py
    names = sorted(p.name for p in (migrations_dir() / "versions").glob("*.py"))
    assert len(names) == len(revisions), names
    for name in names:
        assert re.fullmatch(r"\d{8}_\d{4}_[a-z0-9_]+\.py", name), name


def test_upgrade_downgrade_round_trip(scratch_url):
    upgrade(scratch_url)
    migrated = _schema(scratch_url)
    head = _script().get_current_head()
    assert asyncio.run(_query(scratch_url, "SELECT version_num FROM alembic_version")) == [(head,)]
    # the seed data a migration writes comes back with it
    seeded = asyncio.run(_query(scratch_url, "SELECT count(*) FROM authz_rules"))[0][0]
    assert seeded > 0

    downgrade(scratch_url, "base")
    empty = _schema(scratch_url)
    leftovers = {  # everything but Alembic's own bookkeeping table
        kind: [row for row in rows if row[0] != "alembic_version"] for kind, rows in empty.items()
    }
    assert not any(leftovers.values()), f"downgrade to base left behind: {leftovers}"

    # back up one revision at a time, each step down and up again (a "stairway"): every
    # downgrade undoes exactly its upgrade
    for rev in reversed(list(_script().walk_revisions())):
        upgrade(scratch_url, rev.revision)
        at_rev = _schema(scratch_url)
        downgrade(scratch_url, rev.down_revision or "base")
        upgrade(scratch_url, rev.revision)
        assert _schema(scratch_url) == at_rev, f"{rev.revision} does not round-trip"
    assert _schema(scratch_url) == migrated
    assert asyncio.run(_query(scratch_url, "SELECT count(*) FROM authz_rules"))[0][0] == seeded


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "compare_server_default": True},
    )
    return compare_metadata(context, Base.metadata)


def test_models_match_migrations(scratch_url):
    """No pending autogenerate diff: every model change comes with its migration."""
    upgrade(scratch_url)

    async def run() -> list[Any]:
        engine = create_async_engine(scratch_url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(_diff)
        finally:
            await engine.dispose()

    diff = asyncio.run(run())
    assert diff == [], "models and migrations disagree:\n" + "\n".join(map(str, diff))


def test_migrations_never_import_application_code():
    """A migration that imports live code changes meaning whenever that code changes (fresh
    databases get today's defaults, upgraded ones keep yesterday's): data is literal."""
    offenders = [
        path.name
        for path in (migrations_dir() / "versions").glob("*.py")
        if re.search(r"^\s*(from|import)\s+crm_api\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []


def test_migrated_grants_and_roles_equal_the_live_defaults(scratch_url):
    """A database built (or upgraded) by the migrations holds exactly the default grants and
    built-in roles the code declares: changing the defaults needs a data migration."""
    from crm_api.authz.defaults import BUILTIN_ROLES, default_policy_rows

    upgrade(scratch_url)
    rules = asyncio.run(
        _query(scratch_url, "SELECT ptype, v0, v1, v2, v3, v4 FROM authz_rules WHERE ptype = 'p'")
    )
    expected = [
        (row["ptype"], row["v0"], row["v1"], row["v2"], row["v3"], row["v4"])
        for row in default_policy_rows()
    ]
    assert sorted(rules) == sorted(expected)
    roles = asyncio.run(
        _query(scratch_url, "SELECT name, description FROM roles WHERE builtin ORDER BY name")
    )
    assert roles == sorted(BUILTIN_ROLES.items())


def test_api_clients_get_their_placement_on_upgrade(scratch_url):
    """0011 places existing clients: their service account's unit, and as owner whoever
    the audit trail says created them (a client without such an event keeps none)."""
    upgrade(scratch_url, "0005")
    unit, person, made, orphan = (uuid.uuid4() for _ in range(4))
    accounts = {made: uuid.uuid4(), orphan: uuid.uuid4()}

    async def seed() -> None:
        engine = create_async_engine(scratch_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO org_units (id, name, kind, path, depth, active)"
                        " VALUES (:id, 'Shop', 'team', :path, 0, true)"
                    ),
                    {"id": unit, "path": f"/{unit}/"},
                )
                users = [(person, "person", None)] + [
                    (a, "service", unit) for a in accounts.values()
                ]
                for user_id, kind, org_unit in users:
                    await conn.execute(
                        text(
                            "INSERT INTO users (id, email, display_name, org_unit_id,"
                            " manager_path, kind, active)"
                            " VALUES (:id, :email, 'x', :unit, :path, :kind, true)"
                        ),
                        {
                            "id": user_id,
                            "email": f"{user_id}@example.cn",
                            "unit": org_unit,
                            "path": f"/{user_id}/",
                            "kind": kind,
                        },
                    )
                for client, account in accounts.items():
                    await conn.execute(
                        text(
                            "INSERT INTO api_clients (id, client_id, name, secret_hash, user_id,"
                            " active) VALUES (:id, :cid, 'x', 'h', :user, true)"
                        ),
                        {"id": client, "cid": f"cli_{client.hex[:12]}", "user": account},
                    )
                await conn.execute(
                    text(
                        "INSERT INTO audit_events (id, occurred_at, actor_type, actor_id, action,"
                        " resource_type, resource_id, changes)"
                        " VALUES (:id, now(), 'user', :actor, 'create', 'api_clients', :client,"
                        " '{}')"
                    ),
                    {"id": uuid.uuid4(), "actor": person, "client": made},
                )
        finally:
            await engine.dispose()

    asyncio.run(seed())
    upgrade(scratch_url)
    rows = dict(
        (r[0], (r[1], r[2]))
        for r in asyncio.run(
            _query(scratch_url, "SELECT id, owner_id, org_unit_id FROM api_clients")
        )
    )
    assert rows == {made: (person, unit), orphan: (None, unit)}


def test_customers_hold_their_keys_on_upgrade_and_duplicates_give_them_up(scratch_url):
    """0012_fixes: every live customer holds its e-mail and phone keys, except the younger
    of those sharing one (the one an upsert keyed by it wins over an older one); the trash
    keeps its flags; the unique indexes are built over what is held."""
    upgrade(scratch_url, "0008")
    owner = uuid.uuid4()
    a, b, c, d, e, f = (uuid.uuid4() for _ in range(6))
    # (id, email, phone, key_kind, age in days, deleted)
    rows = [
        (a, "x@example.cn", "+86 21 5555 0000", None, 9, False),
        (b, " X@Example.cn", "0086 21-5555-0000", None, 8, False),
        (c, "x@example.cn ", None, "email", 1, False),  # an upsert's own key: it wins
        (d, "y@example.cn", "+86 21 5555 0000", None, 7, False),
        (e, "x@example.cn", None, None, 20, True),  # in the trash
        (f, None, None, None, 5, False),
    ]

    async def seed() -> None:
        engine = create_async_engine(scratch_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO users (id, email, display_name, manager_path, kind, active)"
                        " VALUES (:id, 'o@example.cn', 'o', :path, 'person', true)"
                    ),
                    {"id": owner, "path": f"/{owner}/"},
                )
                for id_, email, phone, kind, age, deleted in rows:
                    await conn.execute(
                        text(
                            "INSERT INTO customers (id, name, type, owner_id, email, phone,"
                            " key_kind, created_at, updated_at, deleted_at, version)"
                            " VALUES (:id, 'c', 'company', :owner, :email, :phone, :kind,"
                            " now() - make_interval(days => :age), now(),"
                            " CASE WHEN :deleted THEN now() END, 1)"
                        ),
                        {
                            "id": id_,
                            "owner": owner,
                            "email": email,
                            "phone": phone,
                            "kind": kind,
                            "age": age,
                            "deleted": deleted,
                        },
                    )
        finally:
            await engine.dispose()

    asyncio.run(seed())
    upgrade(scratch_url)
    held = {
        r[0]: (r[1], r[2])
        for r in asyncio.run(
            _query(scratch_url, "SELECT id, email_held, phone_held FROM customers")
        )
    }
    assert held == {
        a: (False, True),  # the oldest phone; its e-mail went to the upserted c
        b: (False, False),
        c: (True, True),
        d: (True, False),
        e: (True, True),
        f: (True, True),
    }
    downgrade(scratch_url, "0008")
    upgrade(scratch_url)
