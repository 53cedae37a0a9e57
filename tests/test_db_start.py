"""A worker starts without its database and becomes ready by itself (``crm_api.warmup``).

The app is started (its lifespan run) with its database URL pointing at a proxy the test
controls (``tests/pgproxy.py``) that refuses new connections or never answers; never by
stopping the PostgreSQL other test runs share. While the database is away: ``/healthz``
200, ``/readyz`` and every API route 503 with ``Retry-After``, never a 500 and never an
allow; once the proxy lets traffic through, the same app serves, with no restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conftest import _http_client, problem, token_for
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.types import Principal, PrincipalKind
from crm_api.config import Settings
from crm_api.errors import ServiceUnavailable
from crm_api.main import create_app
from factories.identity import make_org_unit, make_user
from pgproxy import PgProxy

#: The bound of every wait for the app to become ready: a safety net against a hang, not
#: a timing assertion (the retries are capped at crm_api.warmup.MAX_DELAY_S).
READY_WITHIN_S = 60.0


@asynccontextmanager
async def _started(settings: Settings, url: str) -> AsyncIterator[FastAPI]:
    """An app on ``url``, its lifespan running (as uvicorn runs it)."""
    app = create_app(settings, url)
    async with asyncio.timeout(READY_WITHIN_S):  # start-up must not wait for the database
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
    try:
        yield app
    finally:
        async with asyncio.timeout(READY_WITHIN_S):  # nor shutdown
            await lifespan.__aexit__(None, None, None)


async def _until_ready(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while (response := await http.get("/readyz")).status_code != 200:
        problem(response, 503)
        assert response.headers["retry-after"] == "1"
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)


async def _admin(engine) -> dict[str, Any]:
    unit = await make_org_unit(engine, "Start-up office", kind="group")
    return await make_user(engine, roles=("admin",), org_unit=unit)


async def _assert_unavailable(app: FastAPI, admin: dict[str, Any]) -> None:
    """Health up; readiness and the API 503 with Retry-After, the API before any auth."""
    async with _http_client(app) as anon:
        assert (await anon.get("/healthz")).json() == {"status": "ok"}
        ready = await anon.get("/readyz")
        problem(ready, 503)
        assert ready.headers["retry-after"] == "1"
        login = await anon.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": admin["email"], "password": "x"},
        )
        problem(login, 503, "database_unavailable")
        assert login.headers["retry-after"] == "1"
    headers = {"Authorization": f"Bearer {token_for(app, admin)}"}
    async with _http_client(app, headers) as http:
        for response in (
            await http.get("/v1/customers"),
            await http.post("/v1/customers", json={"name": "While down"}),
            await http.get("/v1/me"),
        ):
            problem(response, 503, "database_unavailable")
            assert response.headers["retry-after"] == "1"


async def _assert_serving(app: FastAPI, admin: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {token_for(app, admin)}"}
    async with _http_client(app, headers) as http:
        await _until_ready(http)
        created = await http.post("/v1/customers", json={"name": "After start-up"})
        assert created.status_code == 201, created.text
        listed = await http.get("/v1/customers")
        assert listed.status_code == 200, listed.text
        assert [c["id"] for c in listed.json()["data"]] == [created.json()["id"]]
        problem(await http.get("/v1/customers", params={"limit": 0}), 422)
    async with _http_client(app) as anon:
        problem(await anon.get("/v1/customers"), 401, "missing_token")


@pytest.mark.parametrize("sqlstate", ["53300", "57P03"])
async def test_started_while_the_database_refuses_connections(
    settings, database_url, engine, sqlstate
):
    admin = await _admin(engine)
    async with PgProxy(database_url) as proxy:
        proxy.refuse(sqlstate)
        async with _started(settings, proxy.url) as app:
            assert app.state.warm_up.ready is False
            await _assert_unavailable(app, admin)
            await asyncio.sleep(0.5)  # a few retries, still refused: still 503, no crash
            await _assert_unavailable(app, admin)
            proxy.refuse(None)
            await _assert_serving(app, admin)
            assert app.state.warm_up.attempts > 1


async def test_started_while_the_database_hangs(settings, database_url, engine):
    """A server that accepts but never answers: start-up waits one connect timeout at
    most, then serves 503 until the server answers again."""
    admin = await _admin(engine)
    async with PgProxy(database_url) as proxy:
        proxy.freeze()
        started = time.monotonic()
        async with _started(settings, proxy.url) as app:
            elapsed = time.monotonic() - started
            assert app.state.warm_up.ready is False
            # one attempt, bounded by the connect timeout (2 s), not asyncpg's 60 s default
            # (the freeze lasts until thaw: starting at all means the deadline fired)
            assert elapsed < 15, elapsed
            await _assert_unavailable(app, admin)
            proxy.thaw()
            await _assert_serving(app, admin)


async def test_readiness_says_the_worker_is_still_loading(settings, database_url, engine):
    """The database answers and is migrated, but the worker has not loaded its policy
    yet (its next retry is still to come): /readyz 503 ``starting``, the API 503."""
    admin = await _admin(engine)
    async with PgProxy(database_url) as proxy:
        proxy.refuse("53300")
        async with _started(settings, proxy.url) as app:
            task = app.state.warm_up._task
            assert task is not None
            task.cancel()  # no retry will come: the state stays "not loaded"
            await asyncio.gather(task, return_exceptions=True)
            proxy.refuse(None)
            async with _http_client(app) as anon:
                body = problem(await anon.get("/readyz"), 503, "starting")
                assert "53300" in body["detail"] or "too many clients" in body["detail"]
            await _assert_unavailable(app, admin)


async def test_shutdown_while_still_waiting_is_clean(settings, database_url):
    async with PgProxy(database_url) as proxy:
        proxy.freeze()
        async with _started(settings, proxy.url) as app:
            task = app.state.warm_up._task
            assert task is not None and not task.done()
        assert task.done()  # cancelled by the shutdown, which did not wait for it
        assert app.state.warm_up.ready is False


async def test_an_unloaded_policy_allows_nothing():
    """Default deny below the gate too: a policy engine that never loaded refuses to
    decide (503), where an empty enforcer would have answered 403 as if by policy."""
    import uuid

    policy = PolicyEngine()
    principal = Principal(
        kind=PrincipalKind.user,
        id=uuid.uuid4(),
        name="nobody",
        roles=frozenset(),
        org_unit_id=None,
        org_path=None,
        manager_path="",
    )
    with pytest.raises(ServiceUnavailable) as raised:
        policy.scope_for(principal, "customers", "read")
    assert raised.value.code == "database_unavailable"
    assert raised.value.headers["Retry-After"] == "1"
