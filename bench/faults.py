"""``python3 dev.py bench faults``: real PostgreSQL restarts under write load, with a ledger.

(Or ``.venv/bin/python -m bench.faults``: it needs the checkout's .venv.)

Starts a **private** PostgreSQL cluster (the pgserver wheel, in a temporary directory: the
machine's shared server is never touched), migrates it, and runs the app in-process
against it. Concurrent clients create customers with ``Idempotency-Key`` and retry on 503
after ``Retry-After`` (shortened to 0.2 s to keep the run short), while the cluster is
restarted with ``pg_ctl restart -m fast`` again and again. Afterwards it checks what
docs/operations.md promises and prints the figures:

* only 201 and 503 (with ``Retry-After``) were answered, never a 500;
* the app recovered after each restart without being restarted itself;
* every acknowledged key exists exactly once, and a retried key replays its response.

Exit status 0 when all of that held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

PASSWORD = "Fault-injection-pass-42!"


def _restart(server: Any) -> float:
    from pgserver._commands import pg_ctl

    started = time.monotonic()
    pg_ctl(
        ["-w", "-m", "fast", "-l", str(server.log), "restart"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=60,
    )
    return time.monotonic() - started


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from crm_api.db.embedded import _servers, start_embedded

    url = start_embedded(workdir, database="faults")
    server = _servers[(workdir / "pg").resolve()]
    try:
        return await _load(args, url, server)
    finally:
        # pgserver's own cleanup stops the postmaster it started, which a restart replaced:
        # stop the cluster here, before its temporary directory is deleted
        from pgserver._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60
        )
        server.cleanup()


async def _load(args: argparse.Namespace, url: str, server: Any) -> dict[str, Any]:
    from crm_api.auth.bootstrap import ensure_admin
    from crm_api.config import Environment, Settings
    from crm_api.db.migrate import upgrade
    from crm_api.main import create_app

    await asyncio.to_thread(upgrade, url)
    admin = await ensure_admin(url, "faults@bench.crm", PASSWORD, "Faults")
    settings = Settings(
        env=Environment.test,
        database_url=url,
        log_level="ERROR",
        jwt_signing_key="bench-faults-signing-key-0123456789-abcdefghijkl",
        max_inflight_per_principal=0,
        db_pool_timeout_s=2.0,
    )
    app = create_app(settings, url)
    ledger: dict[str, str] = {}
    statuses: dict[int, int] = {}
    bad: list[str] = []
    restarts: list[float] = []
    stop = asyncio.Event()

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            token = await http.post(
                "/v1/auth/token",
                data={
                    "grant_type": "password",
                    "username": "faults@bench.crm",
                    "password": PASSWORD,
                },
            )
            token.raise_for_status()
            http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            owner = str(admin.user_id)

            async def client(n: int) -> None:
                while not stop.is_set():
                    key = str(uuid.uuid4())
                    body = {"name": f"ledger-{key}", "owner_id": owner}
                    while True:
                        r = await http.post(
                            "/v1/customers", json=body, headers={"Idempotency-Key": key}
                        )
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        if r.status_code == 201:
                            ledger[key] = r.json()["id"]
                            break
                        if r.status_code != 503 or "retry-after" not in r.headers:
                            bad.append(f"{r.status_code} {r.text[:200]}")
                            break
                        await asyncio.sleep(0.2)

            async def restarter() -> None:
                for _ in range(args.restarts):
                    await asyncio.sleep(args.interval)
                    restarts.append(await asyncio.to_thread(_restart, server))
                await asyncio.sleep(args.interval)
                stop.set()

            started = time.monotonic()
            await asyncio.gather(restarter(), *(client(n) for n in range(args.clients)))
            elapsed = time.monotonic() - started

            replayed = 0
            for key in list(ledger)[:: max(1, len(ledger) // 20)]:
                r = await http.post(
                    "/v1/customers",
                    json={"name": f"ledger-{key}", "owner_id": owner},
                    headers={"Idempotency-Key": key},
                )
                if (
                    r.status_code == 201
                    and r.headers.get("idempotent-replayed") == "true"
                    and r.json()["id"] == ledger[key]
                ):
                    replayed += 1
                else:
                    bad.append(f"replay of {key}: {r.status_code}")
            ready = (await http.get("/readyz")).status_code

    engine = create_async_engine(url)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT name, count(*) FROM customers WHERE name LIKE 'ledger-%' GROUP BY name"
                )
            )
        ).all()
    await engine.dispose()
    stored = {name.removeprefix("ledger-"): n for name, n in rows}
    lost = [k for k in ledger if stored.get(k) != 1]
    duplicated = [k for k, n in stored.items() if n > 1]
    return {
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "restarts": len(restarts),
        "restart_s": [round(r, 2) for r in restarts],
        "acknowledged": len(ledger),
        "stored": len(stored),
        "statuses": statuses,
        "lost_or_duplicated": len(lost) + len(duplicated),
        "replayed_ok": replayed,
        "ready_after": ready,
        "bad": bad[:10],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 dev.py bench faults", description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between restarts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crm-faults-") as tmp:
        result = asyncio.run(_run(args, Path(tmp)))
    print(json.dumps(result, indent=2))
    ok = (
        not result["bad"]
        and result["lost_or_duplicated"] == 0
        and set(result["statuses"]) <= {201, 503}
        and result["ready_after"] == 200
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
