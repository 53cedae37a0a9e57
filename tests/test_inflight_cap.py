"""One principal cannot hold more than its share of a worker: past
``CRM_MAX_INFLIGHT_PER_PRINCIPAL`` requests in flight it gets 429, others are unaffected.

Requests are held inside the handler by a gate on the read path, so exactly N are in
flight when the next one arrives: no timing involved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import problem
from crm_api.middleware import InflightCap
from factories.identity import make_org_unit, make_user

CAP = 3


@pytest.fixture
async def gate(app, monkeypatch) -> AsyncIterator[dict[str, Any]]:
    """Reads wait for ``state["open"]``; ``state["entered"]`` counts those waiting."""
    reads = app.state.db.reads
    # the asyncpg read pool's fetch, or the engine read path's execute (CRM_READ_PATH)
    name = "fetch" if hasattr(reads, "fetch") else "execute"
    real = getattr(reads, name)
    state: dict[str, Any] = {"open": asyncio.Event(), "entered": 0}

    async def gated(*args: Any) -> Any:
        state["entered"] += 1
        await state["open"].wait()
        return await real(*args)

    monkeypatch.setattr(reads, name, gated)
    real_cap = app.state.inflight  # (monkeypatch would delete a State attribute on undo)
    app.state.inflight = InflightCap(CAP)
    yield state
    state["open"].set()
    app.state.inflight = real_cap


async def _until(check: Any, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def test_the_request_past_the_cap_gets_429_and_others_are_unaffected(
    app, engine, client_for, gate
):
    unit = await make_org_unit(engine)
    alice = await make_user(engine, roles=("admin",), org_unit=unit, email="alice@test.crm")
    bob = await make_user(engine, roles=("admin",), org_unit=unit, email="bob@test.crm")
    as_alice, as_bob = await client_for(alice), await client_for(bob)

    held = [asyncio.create_task(as_alice.get("/v1/customers")) for _ in range(CAP)]
    await _until(lambda: gate["entered"] == CAP)

    async with asyncio.timeout(30):  # admitted, it would wait at the gate: fail, not hang
        refused = await as_alice.get("/v1/customers")
    body = problem(refused, 429, "too_many_concurrent_requests")
    assert refused.headers["retry-after"] == "1"
    assert str(CAP) in body["detail"]

    bobs = asyncio.create_task(as_bob.get("/v1/customers"))  # another principal: admitted
    await _until(lambda: gate["entered"] == CAP + 1)

    gate["open"].set()
    responses = await asyncio.gather(*held, bobs)
    assert [r.status_code for r in responses] == [200] * (CAP + 1)
    assert app.state.inflight.counts == {}  # every slot given back
    assert (await as_alice.get("/v1/customers")).status_code == 200


async def test_failed_and_cancelled_requests_give_their_slot_back(app, engine, client_for, gate):
    unit = await make_org_unit(engine)
    user = await make_user(engine, roles=("admin",), org_unit=unit)
    http = await client_for(user)
    gate["open"].set()
    for _ in range(CAP * 3):  # errors release too
        problem(await http.get("/v1/customers/00000000-0000-0000-0000-000000000000"), 404)
        problem(await http.get("/v1/customers", params={"limit": 0}), 422)
    assert app.state.inflight.counts == {}

    gate["open"].clear()
    gate["entered"] = 0
    stuck = [asyncio.create_task(http.get("/v1/customers")) for _ in range(CAP)]
    await _until(lambda: gate["entered"] == CAP)
    for task in stuck:  # the client goes away mid-request
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)
    await _until(lambda: app.state.inflight.counts == {})
    gate["open"].set()
    assert (await http.get("/v1/customers")).status_code == 200


async def test_no_cap_when_zero(app, engine, client_for, gate):
    app.state.inflight = InflightCap(0)  # the gate fixture restores the real one
    unit = await make_org_unit(engine)
    user = await make_user(engine, roles=("admin",), org_unit=unit)
    http = await client_for(user)
    held = [asyncio.create_task(http.get("/v1/customers")) for _ in range(CAP * 2)]
    await _until(lambda: gate["entered"] == CAP * 2)
    gate["open"].set()
    assert {r.status_code for r in await asyncio.gather(*held)} == {200}
