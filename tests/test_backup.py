"""Backup and restore drill: data written through the API, ``crm-api backup``, the schema
wiped, ``crm-api restore``; then an export of every resource through the API (live lists
and trash, every page) is byte-for-byte what it was, and an ``Idempotency-Key`` still
replays its original response instead of creating a second record.

The commands run as an operator runs them (``python -m crm_api`` in a subprocess, pointed
at the test database by ``CRM_DATABASE_URL``), so the choice of pg_dump/pg_restore binaries
is the real one: PostgreSQL 15 in CI (the machine's client), 16 for the embedded cluster
(the pgserver wheel's).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import count_rows

#: Every list the API has, and its trash where there is one.
LISTS = [
    ("/v1/customers", {}),
    ("/v1/customers", {"deleted": "true"}),
    ("/v1/contacts", {}),
    ("/v1/contacts", {"deleted": "true"}),
    ("/v1/users", {}),
    ("/v1/org-units", {}),
    ("/v1/roles", {}),
    ("/v1/api-clients", {}),
    ("/v1/audit-events", {}),
    ("/v1/me/tokens", {"include_revoked": "true"}),
]


async def _all_pages(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, params=query)
        assert response.status_code == 200, (path, response.text)
        body = response.json()
        items.extend(body["data"])
        if not body["has_more"]:
            return items
        cursor = body["next_cursor"]


async def export(client: httpx.AsyncClient) -> dict[str, Any]:
    """Everything the API shows an administrator, list by list, page by page (pages of 2,
    so cursors are exercised), with each role's grants and each customer's contacts."""
    out: dict[str, Any] = {}
    for path, params in LISTS:
        out[f"{path}?{sorted(params.items())}"] = await _all_pages(client, path, params)
    for role in out["/v1/roles?[]"]:
        grants = f"/v1/roles/{role['id']}/grants"
        out[grants] = await _all_pages(client, grants, {})
    for customer in out["/v1/customers?[]"]:
        contacts = f"/v1/customers/{customer['id']}/contacts"
        out[contacts] = await _all_pages(client, contacts, {})
        out[f"/v1/customers/{customer['id']}"] = (
            await client.get(f"/v1/customers/{customer['id']}")
        ).json()
    return out


def digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def crm_api(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "CRM_DATABASE_URL": database_url, "CRM_ENV": "development"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crm_api",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _make_data(client: httpx.AsyncClient, admin: dict[str, Any]) -> dict[str, Any]:
    owner = str(admin["id"])
    customers = []
    for i, name in enumerate(["上海明远贸易有限公司", "Acme Ltd.", "华信科技", "Globex Inc."]):
        response = await client.post(
            "/v1/customers",
            json={
                "name": name,
                "owner_id": owner,
                "tags": ["vip"] if i % 2 else [],
                "bank_account": f"622200001234{i:04d}",
                "tax_number": f"9131000012345{i:05d}",
                "custom_fields": {"n": i, "note": "备注"},
            },
        )
        assert response.status_code == 201, response.text
        customers.append(response.json())
        for j in range(2):
            contact = await client.post(
                f"/v1/customers/{customers[-1]['id']}/contacts",
                json={
                    "name": f"联系人 {i}-{j}",
                    "email": f"c{i}-{j}@example.com",
                },
            )
            assert contact.status_code == 201, contact.text
    # An update, a soft-deleted customer (with its contacts) and a soft-deleted contact.
    patched = await client.patch(
        f"/v1/customers/{customers[0]['id']}",
        json={"region": "华东"},
        headers={"If-Match": f'"{customers[0]["version"]}"'},
    )
    assert patched.status_code == 200, patched.text
    deleted = await client.delete(f"/v1/customers/{customers[1]['id']}")
    assert deleted.status_code == 204, deleted.text
    contacts = (await client.get(f"/v1/customers/{customers[2]['id']}/contacts")).json()["data"]
    removed = await client.delete(f"/v1/contacts/{contacts[0]['id']}")
    assert removed.status_code == 204, removed.text
    # A write made with an Idempotency-Key: its stored response must survive the restore.
    keyed = await client.post(
        "/v1/customers",
        json={"name": "Storefront order customer", "owner_id": owner},
        headers={"Idempotency-Key": "drill-key-0001"},
    )
    assert keyed.status_code == 201, keyed.text
    return {
        "status": keyed.status_code,
        "body": keyed.json(),
        "location": keyed.headers.get("location"),
    }


async def _replay(client: httpx.AsyncClient, admin: dict[str, Any]) -> httpx.Response:
    return await client.post(
        "/v1/customers",
        json={"name": "Storefront order customer", "owner_id": str(admin["id"])},
        headers={"Idempotency-Key": "drill-key-0001"},
    )


async def test_backup_wipe_restore_drill(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    admin_user: dict[str, Any],
    tmp_path: Path,
) -> None:
    keyed = await _make_data(client, admin_user)
    before = await export(client)
    assert before["/v1/customers?[('deleted', 'true')]"], "the trash should not be empty"
    assert before["/v1/contacts?[('deleted', 'true')]"]
    before_digest = digest(before)

    archive = tmp_path / "crm.dump"
    code, out, err = await crm_api(database_url, "backup", str(archive))
    assert code == 0, err
    assert archive.stat().st_size > 0 and "backed up" in out
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("*.partial")))

    # Restoring over live data is refused: one line, exit code 2, nothing touched.
    code, out, err = await crm_api(database_url, "restore", str(archive))
    assert code == 2, (out, err)
    assert "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1

    # Disaster: the schema is gone.
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))

    code, out, err = await crm_api(database_url, "restore", str(archive))
    assert code == 0, err
    assert "restored" in out

    after = await export(client)
    assert digest(after) == before_digest, "the restored database differs from the backup"

    # The idempotency key replays the original response; no second customer.
    customers = await count_rows(engine, "customers")
    replay = await _replay(client, admin_user)
    assert replay.status_code == keyed["status"]
    assert replay.json() == keyed["body"]
    assert replay.headers.get("location") == keyed["location"]
    assert await count_rows(engine, "customers") == customers

    # --force replaces a non-empty database (here: with the same contents).
    code, out, err = await crm_api(database_url, "restore", "--force", str(archive))
    assert code == 0, err
    assert digest(await export(client)) == before_digest


async def test_restore_refuses_a_file_that_is_no_backup(
    database_url: str, tmp_path: Path, engine: AsyncEngine
) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a dump\n")
    code, _, err = await crm_api(database_url, "restore", "--force", str(bogus))
    assert code == 1
    assert "not a crm-api backup" in err and "Traceback" not in err
    assert await count_rows(engine, "alembic_version") == 1
