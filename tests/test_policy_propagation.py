"""A grant changed through one app instance is enforced by another within a second: each
worker polls ``authz_state.version`` (``CRM_AUTHZ_POLL_INTERVAL_S``, 0.5 s by default)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from conftest import token_for
from crm_api.authz.state import settle
from crm_api.main import create_app
from factories.identity import make_org_unit, make_user


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    """Policy reloads are over (and none is due) before the next test empties the tables:
    a reload racing that TRUNCATE can deadlock with it."""
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


DEADLINE_S = 1.0
POLL_EVERY_S = 0.05


@asynccontextmanager
async def _instance(settings, database_url) -> AsyncIterator[FastAPI]:
    """A separate app: its own engine, policy engine, poller and principal cache."""
    app = create_app(settings.model_copy(update={"authz_poll_interval_s": 0.5}), database_url)
    async with app.router.lifespan_context(app):
        yield app


def _client(app: FastAPI, user: dict) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {token_for(app, user)}"},
    )


async def _wait_for(client: httpx.AsyncClient, path: str, status: int) -> float:
    """Seconds until ``path`` answers ``status``; fails after the deadline."""
    started = time.monotonic()
    while True:
        response = await client.get(path)
        elapsed = time.monotonic() - started
        if response.status_code == status:
            return elapsed
        assert elapsed < DEADLINE_S, (
            f"instance B still answers {response.status_code} after {elapsed:.2f} s"
        )
        await asyncio.sleep(POLL_EVERY_S)


async def test_grant_changes_reach_another_instance_within_a_second(settings, database_url, engine):
    unit = await make_org_unit(engine, "Head office", kind="group")
    admin = await make_user(engine, roles=("admin",), org_unit=unit)
    clerk = await make_user(engine, roles=(), org_unit=unit)
    async with AsyncExitStack() as stack:
        app_a = await stack.enter_async_context(_instance(settings, database_url))
        app_b = await stack.enter_async_context(_instance(settings, database_url))
        admin_on_a = await stack.enter_async_context(_client(app_a, admin))
        clerk_on_b = await stack.enter_async_context(_client(app_b, clerk))
        role = await admin_on_a.post("/v1/roles", json={"name": "clerk"})
        assert role.status_code == 201, role.text
        assigned = await admin_on_a.patch(f"/v1/users/{clerk['id']}", json={"roles": ["clerk"]})
        assert assigned.status_code == 200, assigned.text
        await asyncio.sleep(0.6)  # B has reloaded: the role holds nothing yet
        assert (await clerk_on_b.get("/v1/customers")).status_code == 403

        grant = await admin_on_a.post(
            f"/v1/roles/{role.json()['id']}/grants",
            json={"resource": "customers", "action": "read", "scope": "own"},
        )
        assert grant.status_code == 201, grant.text
        await _wait_for(clerk_on_b, "/v1/customers", 200)

        removed = await admin_on_a.delete(
            f"/v1/roles/{role.json()['id']}/grants/{grant.json()['id']}"
        )
        assert removed.status_code == 204
        await _wait_for(clerk_on_b, "/v1/customers", 403)


async def test_deactivation_reaches_another_instance_within_a_second(
    settings, database_url, engine
):
    unit = await make_org_unit(engine, "Head office", kind="group")
    admin = await make_user(engine, roles=("admin",), org_unit=unit)
    rep = await make_user(engine, roles=("sales_rep",), org_unit=unit)
    async with AsyncExitStack() as stack:
        app_a = await stack.enter_async_context(_instance(settings, database_url))
        app_b = await stack.enter_async_context(_instance(settings, database_url))
        admin_on_a = await stack.enter_async_context(_client(app_a, admin))
        rep_on_b = await stack.enter_async_context(_client(app_b, rep))
        assert (await rep_on_b.get("/v1/me")).status_code == 200
        response = await admin_on_a.post(f"/v1/users/{rep['id']}/deactivate")
        assert response.status_code == 200, response.text
        await _wait_for(rep_on_b, "/v1/me", 401)


async def test_a_poll_overtaken_by_a_load_does_not_reload_again(engine):
    """A poll reads the version; before it compares, the worker that made a change reloads
    at once. The poll's older reading must not trigger a second load, which would also
    empty the principal cache (a warm request then paid a user lookup: round-trip counts
    were flaky on a busy machine)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from crm_api.authz.enforcer import PolicyEngine
    from crm_api.authz.state import bump_policy_version

    policy = PolicyEngine()
    await policy.load(engine)
    stale = await policy.current_versions(engine)
    async with engine.begin() as conn, AsyncSession(bind=conn) as session:
        await bump_policy_version(session)
        await session.flush()

    async def read_overtaken_by_a_load(eng):
        await PolicyEngine.load(policy, eng)  # completes while the poll's read is in flight
        return stale  # what the poll read before it

    policy.current_versions = read_overtaken_by_a_load  # type: ignore[method-assign]
    loads = policy._loads
    assert await policy.refresh_if_changed(engine) is False
    assert policy._loads == loads + 1  # the concurrent load only, no second one
