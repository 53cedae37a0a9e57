"""Fault injection under load, with a ledger of every acknowledged write.

Concurrent clients create customers with ``Idempotency-Key`` while every connection the
app holds to this test database is terminated (``pg_terminate_backend``: what clients see
of a server restart, a failover or an operator killing sessions) round after round; the
proxy-driven faults (frozen server, refused connections) are in ``test_db_faults.py``.
The shared PostgreSQL itself is never restarted (other test runs use it);
``bench/faults.py`` does a true restart on a private cluster.

What must hold: only 201 or 503 with ``Retry-After`` (never a 500), the app recovers by
itself, every acknowledged key exists exactly once, and retrying a key replays it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import text

from conftest import problem
from factories.identity import make_org_unit, make_user

CLIENTS = 6
KEYS_PER_CLIENT = 3
ROUNDS = 6
MAX_TRIES = 20


async def _terminate_app_backends(engine) -> int:
    """Every backend the app under test holds on this database (other engineers' apps use
    the same application_name on their own databases: never theirs)."""
    async with engine.connect() as conn:
        killed = (
            await conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'crm-api' AND datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            )
        ).scalar_one()
        await conn.commit()
    return int(killed)


class Ledger:
    def __init__(self) -> None:
        self.acknowledged: dict[str, str] = {}  # key -> customer id from its 201
        self.statuses: dict[int, int] = {}
        self.bad: list[str] = []

    def record(self, response: httpx.Response) -> None:
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.status_code == 503:
            problem(response, 503)
            if response.headers.get("retry-after") != "1":
                self.bad.append(f"503 without Retry-After: {response.text}")
        elif response.status_code != 201:
            self.bad.append(f"{response.status_code}: {response.text}")


async def _create(
    http: httpx.AsyncClient, ledger: Ledger, key: str, owner_id: str, tries: int
) -> None:
    """POST with ``key`` until acknowledged (or ``tries`` run out), as a client would."""
    body = {"name": f"ledger-{key}", "owner_id": owner_id}
    for _ in range(tries):
        response = await http.post("/v1/customers", json=body, headers={"Idempotency-Key": key})
        ledger.record(response)
        if response.status_code == 201:
            customer_id = response.json()["id"]
            previous = ledger.acknowledged.setdefault(key, customer_id)
            if previous != customer_id:
                ledger.bad.append(f"key {key} acknowledged as {previous} and {customer_id}")
            return
        await asyncio.sleep(0.01)


async def test_terminated_connections_under_load_lose_and_duplicate_nothing(
    client, client_for, engine, app
):
    unit = await make_org_unit(engine)
    owner = await make_user(engine, org_unit=unit)
    owner_id = str(owner["id"])
    # one principal per client, as in real life (and under the per-principal cap)
    https = [
        await client_for(await make_user(engine, roles=("admin",), org_unit=unit))
        for _ in range(CLIENTS)
    ]
    ledger = Ledger()
    keys: list[str] = []
    sender: dict[str, httpx.AsyncClient] = {}  # keys belong to the principal that sent them
    killed_total = 0
    reads_ok = reads_503 = 0

    for _ in range(ROUNDS):
        batch = [str(uuid.uuid4()) for _ in range(CLIENTS * KEYS_PER_CLIENT)]
        keys += batch
        sender.update({k: https[i % CLIENTS] for i, k in enumerate(batch)})
        writers = [
            asyncio.create_task(_create(sender[k], ledger, k, owner_id, MAX_TRIES)) for k in batch
        ]
        readers = [asyncio.create_task(client.get("/v1/customers")) for _ in range(CLIENTS)]
        for _ in range(3):  # let the batch get going: requests in flight hold connections
            await asyncio.sleep(0)
        killed_total += await _terminate_app_backends(engine)
        await asyncio.gather(*writers)
        for r in await asyncio.gather(*readers):
            if r.status_code == 200:
                reads_ok += 1
            else:
                problem(r, 503, "database_unavailable")
                assert r.headers["retry-after"] == "1"
                reads_503 += 1
        killed_total += await _terminate_app_backends(engine)  # kill the idle pools too

    assert killed_total > 0, "the faults never hit a connection"
    assert not ledger.bad, ledger.bad[:5]
    assert set(ledger.statuses) <= {201, 503}, ledger.statuses

    # recovered without a restart: every key not yet acknowledged goes through now
    for key in keys:
        if key not in ledger.acknowledged:
            await _create(sender[key], ledger, key, owner_id, tries=3)
    assert set(ledger.acknowledged) == set(keys), "a key never got through after the faults"
    assert not ledger.bad, ledger.bad[:5]

    # retried keys replay the acknowledged response
    for key in keys[:: max(1, len(keys) // 10)]:
        replay = await sender[key].post(
            "/v1/customers",
            json={"name": f"ledger-{key}", "owner_id": owner_id},
            headers={"Idempotency-Key": key},
        )
        assert replay.status_code == 201, replay.text
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json()["id"] == ledger.acknowledged[key]

    # every acknowledged write exists exactly once, nothing else was created
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT name, id::text FROM customers WHERE name LIKE 'ledger-%'")
            )
        ).all()
    stored: dict[str, list[str]] = {}
    for name, customer_id in rows:
        stored.setdefault(name.removeprefix("ledger-"), []).append(customer_id)
    duplicated = {k: v for k, v in stored.items() if len(v) != 1}
    assert not duplicated, duplicated
    assert {k: v[0] for k, v in stored.items()} == ledger.acknowledged

    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    summary: dict[str, Any] = {
        "keys": len(keys),
        "killed": killed_total,
        "statuses": ledger.statuses,
        "reads_ok": reads_ok,
        "reads_503": reads_503,
    }
    print("fault ledger:", summary)  # shown with -s / on failure
