"""Order POSTs through a real uvicorn server (two workers) on PostgreSQL, the way a
storefront sends them: 1,000 requests at concurrency 50, one in ten a retry of an earlier
Idempotency-Key — some while the first is still in flight, some long after. Exactly one
order per key, no duplicate numbers, every retry answered with the original response."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
from sqlalchemy import text

from crm_api.auth.passwords import hash_password
from factories.identity import make_org_unit, make_user
from factories.orders import make_product
from test_uvicorn import BIN, _env, _free_port, _log, _process, _wait_ready

PASSWORD = "Uvicorn-orders-test-42!"
REQUESTS = 1000
CONCURRENCY = 50
RETRY_EVERY = 10  # one request in ten repeats an earlier key


def _schedule(seed: int = 7) -> list[int]:
    """Which key each request sends: new keys 0, 1, 2 … except every tenth request, which
    repeats an earlier key — half of them the key sent just before (still in flight), half
    any earlier one (mostly long answered)."""
    rng = random.Random(seed)
    plan: list[int] = []
    fresh = 0
    for i in range(REQUESTS):
        if i % RETRY_EVERY == RETRY_EVERY - 1 and fresh > 0:
            # the key just sent: the next worker to free up picks this retry while the
            # first request is still being answered (at concurrency 50 each takes tens of ms)
            plan.append(fresh - 1 if rng.random() < 0.5 else rng.randrange(0, fresh))
        else:
            plan.append(fresh)
            fresh += 1
    return plan


async def test_a_thousand_order_posts_with_retries(engine, database_url, tmp_path):
    unit = await make_org_unit(engine)
    admin = await make_user(
        engine,
        roles=("admin",),
        org_unit=unit,
        email="uvicorn-orders@test.crm",
        password_hash=hash_password(PASSWORD),
    )
    products = [await make_product(engine, price=p) for p in ("19.99", "5.00", "1299.00")]
    customer_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO customers (id, name, type, owner_id, org_unit_id) "
                "VALUES (:id, '网店买家', 'individual', :owner, :unit)"
            ),
            {"id": customer_id, "owner": admin["id"], "unit": unit["id"]},
        )
    plan = _schedule()
    keys = sorted(set(plan))

    def body(key: int) -> dict[str, Any]:
        return {
            "customer_id": str(customer_id),
            "channel": "storefront",
            "external_ref": f"web-{key}",
            "lines": [
                {"product_id": str(p["id"]), "quantity": str(1 + (key + i) % 3)}
                for i, p in enumerate(products)
            ],
        }

    run = uuid.uuid4().hex[:8]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "uvicorn.log"
    env = _env(
        CRM_DATABASE_URL=database_url,
        CRM_LOG_LEVEL="WARNING",
        CRM_DATA_DIR=str(tmp_path / "data"),
        # one principal sends all 50 at once (the default cap of 8 would answer 429s)
        CRM_MAX_INFLIGHT_PER_PRINCIPAL="64",
    )
    args = [
        str(BIN / "python"),
        "-m",
        "uvicorn",
        "crm_api.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    answers: dict[int, list[httpx.Response]] = defaultdict(list)
    spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
    with _process(args, env, log) as proc:
        await _wait_ready(base, proc, log, within_s=90)
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
            token = await http.post(
                "/v1/auth/token",
                data={"grant_type": "password", "username": admin["email"], "password": PASSWORD},
            )
            assert token.status_code == 200, token.text
            http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            queue: asyncio.Queue[int] = asyncio.Queue()
            for key in plan:
                queue.put_nowait(key)

            async def worker() -> None:
                while not queue.empty():
                    key = queue.get_nowait()
                    started = time.monotonic()
                    response = await http.post(
                        "/v1/orders",
                        json=body(key),
                        headers={"Idempotency-Key": f"{run}-{key}"},
                    )
                    answers[key].append(response)
                    spans[key].append((started, time.monotonic()))

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        assert proc.poll() is None, _log(log)

    statuses = {r.status_code for rs in answers.values() for r in rs}
    assert statuses == {201}, [
        r.text for rs in answers.values() for r in rs if r.status_code != 201
    ][:3]
    retried = 0
    for key in keys:
        first = [r for r in answers[key] if "idempotent-replayed" not in r.headers]
        replays = [r for r in answers[key] if "idempotent-replayed" in r.headers]
        assert len(first) == 1, (key, [r.headers for r in answers[key]])
        for replay in replays:
            retried += 1
            assert replay.content == first[0].content
            assert replay.headers["location"] == first[0].headers["location"]
            assert replay.headers["etag"] == first[0].headers["etag"]
    assert retried == REQUESTS - len(keys)
    # some retries were sent while another request with their key was still unanswered
    overlapping = sum(
        1
        for key in keys
        for i, (start, _) in enumerate(spans[key])
        if any(s < start < e for j, (s, e) in enumerate(spans[key]) if j != i)
    )
    assert overlapping > 0
    async with engine.connect() as conn:
        orders, numbers, refs = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT number), count(DISTINCT external_ref) "
                    "FROM orders"
                )
            )
        ).one()
        lines = (await conn.execute(text("SELECT count(*) FROM order_lines"))).scalar_one()
    assert orders == numbers == refs == len(keys)
    assert lines == 3 * len(keys)
    posted = {r.json()["number"] for key in keys for r in answers[key][:1]}
    assert len(posted) == len(keys)
