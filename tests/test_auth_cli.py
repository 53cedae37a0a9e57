"""``crm-api create-admin``: run as a real process against the test database (and once
in-process, to drive the prompts)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import count_rows
from crm_api import cli
from crm_api.config import get_settings
from factories.api_clients import bearer, policy_settled
from factories.identity import make_org_unit, make_user

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "Sup3r-secret-pass"


async def _run(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "CRM_DATABASE_URL": database_url, "CRM_LOG_LEVEL": "WARNING"}
    env.pop("CRM_ENV", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crm_api",
        "create-admin",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _admin_rows(engine, email: str) -> list:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text(
                    "SELECT u.id, u.kind, u.active, u.org_unit_id, u.display_name, r.v1 AS role "
                    "FROM users u LEFT JOIN authz_rules r "
                    "ON r.ptype = 'g' AND r.v0 = 'user:' || u.id "
                    "WHERE lower(u.email) = lower(:email)"
                ),
                {"email": email},
            )
        ).all()


async def test_creates_an_admin_who_can_log_in_then_is_idempotent(
    app, anon_client, engine, database_url
):
    root = await make_org_unit(engine, "Group", kind="group")
    await make_org_unit(engine, "Team", parent=root)
    code, out, err = await _run(
        database_url, "--email", "boss@example.com", "--password", PASSWORD, "--name", "Boss"
    )
    assert code == 0, err
    assert "created administrator boss@example.com" in out and PASSWORD not in out + err
    rows = await _admin_rows(engine, "boss@example.com")
    assert [(r.kind, r.active, r.org_unit_id, r.display_name, r.role) for r in rows] == [
        ("person", True, root["id"], "Boss", "admin")
    ]
    assert await count_rows(engine, "audit_events", "resource_type = 'users'") == 2

    await policy_settled(app)
    login = await anon_client.post(
        "/v1/auth/token",
        data={
            "grant_type": "password",
            "username": "boss@example.com",
            "password": PASSWORD,
        },
    )
    assert login.status_code == 200, login.text
    token = bearer(login.json()["access_token"])
    assert (await anon_client.get("/v1/api-clients", headers=token)).status_code == 200

    code, out, err = await _run(
        database_url, "--email", "BOSS@example.com", "--password", "An0ther-password-x"
    )
    assert code == 0, err
    assert "already exists" in out and "already an administrator" in out
    assert len(await _admin_rows(engine, "boss@example.com")) == 1
    # The password was not changed by the second run.
    again = await anon_client.post(
        "/v1/auth/token",
        data={
            "grant_type": "password",
            "username": "boss@example.com",
            "password": PASSWORD,
        },
    )
    assert again.status_code == 200


async def test_existing_person_is_given_the_admin_role(engine, database_url):
    user = await make_user(engine, roles=("sales_rep",), email="rep@example.com")
    code, out, err = await _run(database_url, "--email", "rep@example.com", "--password", PASSWORD)
    assert code == 0, err
    assert "given the admin role" in out
    roles = sorted(r.role for r in await _admin_rows(engine, "rep@example.com"))
    assert roles == ["admin", "sales_rep"]
    assert all(r.id == user["id"] for r in await _admin_rows(engine, "rep@example.com"))


async def test_without_org_units_the_admin_has_none(engine, database_url):
    code, _, err = await _run(database_url, "--email", "solo@example.com", "--password", PASSWORD)
    assert code == 0, err
    (row,) = await _admin_rows(engine, "solo@example.com")
    assert row.org_unit_id is None and row.role == "admin"


@pytest.mark.parametrize(
    "args",
    [
        ("--email", "weak@example.com", "--password", "short1"),
        ("--email", "weak@example.com", "--password", "lettersonlylong"),
        ("--email", "weak@example.com", "--password", "weak-12345-abc"),  # contains "weak"
        ("--email", "not-an-email", "--password", PASSWORD),
    ],
)
async def test_rejects_bad_input_and_writes_nothing(engine, database_url, args):
    code, out, err = await _run(database_url, *args)
    assert code == 2 and out == "" and err
    assert await count_rows(engine, "users") == 0
    assert await count_rows(engine, "authz_rules", "ptype = 'g'") == 0


async def test_prompts_for_what_is_missing(engine, database_url, monkeypatch):
    """Without --email/--password it asks (the password twice, without echo)."""
    answers = iter([PASSWORD, PASSWORD])
    monkeypatch.setattr("builtins.input", lambda prompt="": "asked@example.com")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.setenv("CRM_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        code = await asyncio.to_thread(cli.main, ["create-admin"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert code == 0
    (row,) = await _admin_rows(engine, "asked@example.com")
    assert row.role == "admin" and row.display_name == "asked"


async def test_prompted_passwords_must_match(engine, database_url, monkeypatch):
    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.setenv("CRM_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        code = await asyncio.to_thread(cli.main, ["create-admin", "--email", "x@example.com"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert code == 2
    assert await count_rows(engine, "users") == 0
