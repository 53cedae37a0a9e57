"""Ending a session ends its access tokens too (issue 7, item 5).

Access tokens of a password login carry the session (refresh-token family) as ``sid``.
Logout and refresh-token reuse detection revoke the session; every worker refuses its
access tokens after its next policy poll, the revoking worker at once, and no request pays
a query for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt

from conftest import count_rows, problem
from crm_api.auth import clock
from crm_api.auth.clock import ManualClock
from crm_api.auth.passwords import hash_password
from crm_api.authz.state import settle
from crm_api.main import create_app
from factories.api_clients import bearer
from factories.identity import make_org_unit, make_user

PASSWORD = "correct-horse-42"


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


@pytest.fixture
async def person(app, engine):
    unit = await make_org_unit(engine, "Sales")
    user = await make_user(
        engine, roles=("sales_rep",), org_unit=unit, password_hash=hash_password(PASSWORD)
    )
    await app.state.policy.load(engine)
    return user


async def _login(http: httpx.AsyncClient, user: dict) -> dict:
    response = await http.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": user["email"], "password": PASSWORD},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _refresh(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/v1/auth/refresh", json={"refresh_token": token})


async def _logout(http: httpx.AsyncClient, token: str) -> None:
    response = await http.post("/v1/auth/logout", json={"refresh_token": token})
    assert response.status_code == 204, response.text


async def _me(http: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await http.get("/v1/me", headers=bearer(access_token))


async def test_access_tokens_carry_their_session(anon_client, person):
    first = await _login(anon_client, person)
    rotated = (await _refresh(anon_client, first["refresh_token"])).json()
    sid = jwt.get_unverified_claims(first["access_token"])["sid"]
    assert jwt.get_unverified_claims(rotated["access_token"])["sid"] == sid
    other = await _login(anon_client, person)
    assert jwt.get_unverified_claims(other["access_token"])["sid"] != sid


async def test_logout_ends_the_access_tokens_of_the_session(anon_client, person):
    first = await _login(anon_client, person)
    rotated = (await _refresh(anon_client, first["refresh_token"])).json()
    other_session = await _login(anon_client, person)
    assert (await _me(anon_client, rotated["access_token"])).status_code == 200

    await _logout(anon_client, rotated["refresh_token"])

    for token in (first["access_token"], rotated["access_token"]):
        problem(await _me(anon_client, token), 401, "invalid_token")
    # The user's other sessions go on.
    assert (await _me(anon_client, other_session["access_token"])).status_code == 200
    assert (await _refresh(anon_client, other_session["refresh_token"])).status_code == 200


async def test_refresh_token_reuse_ends_the_newest_access_token(anon_client, person):
    first = await _login(anon_client, person)
    newest = (await _refresh(anon_client, first["refresh_token"])).json()
    assert (await _me(anon_client, newest["access_token"])).status_code == 200

    problem(await _refresh(anon_client, first["refresh_token"]), 401, "invalid_grant")

    for token in (newest["access_token"], first["access_token"]):
        problem(await _me(anon_client, token), 401, "invalid_token")
    problem(await _refresh(anon_client, newest["refresh_token"]), 401, "invalid_grant")


async def test_a_failed_logout_request_revokes_nothing(anon_client, engine, person):
    session = await _login(anon_client, person)
    problem(await anon_client.post("/v1/auth/logout", json={"refresh_token": ""}), 422)
    await _logout(anon_client, "rt_unknown")
    assert await count_rows(engine, "revoked_sessions") == 0
    assert (await _me(anon_client, session["access_token"])).status_code == 200


async def test_revoked_sessions_expire_after_the_access_token_lifetime(app, anon_client, person):
    ttl = app.state.settings.access_token_ttl_s
    revoked = app.state.principals.revoked_sessions
    manual = ManualClock(clock.now_us())
    with clock.use(manual):
        first = await _login(anon_client, person)
        await _logout(anon_client, first["refresh_token"])
        sid = jwt.get_unverified_claims(first["access_token"])["sid"]
        assert sid in revoked
        manual.advance(ttl + 1)
        await revoked.load(app.state.db.engine)
        assert sid in revoked  # the verifier's leeway: a token is accepted 5 s past exp
        manual.advance(5)
        await revoked.load(app.state.db.engine)
        assert sid not in revoked
        # The row goes with the next revocation.
        second = await _login(anon_client, person)
        await _logout(anon_client, second["refresh_token"])
    engine = app.state.db.engine
    assert await count_rows(engine, "revoked_sessions", f"session_id = '{sid}'") == 0
    assert await count_rows(engine, "revoked_sessions") == 1


# --- other workers --------------------------------------------------------------------------

DEADLINE_S = 1.0
POLL_EVERY_S = 0.05


@asynccontextmanager
async def _instance(settings, database_url) -> AsyncIterator[FastAPI]:
    """A separate app: its own engine, poller, principal cache and revoked-session set."""
    app = create_app(settings.model_copy(update={"authz_poll_interval_s": 0.2}), database_url)
    async with app.router.lifespan_context(app):
        yield app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def _until_refused(http: httpx.AsyncClient, access_token: str) -> float:
    started = time.monotonic()
    while True:
        response = await _me(http, access_token)
        elapsed = time.monotonic() - started
        if response.status_code == 401:
            return elapsed
        assert response.status_code == 200, response.text
        assert elapsed < DEADLINE_S, f"instance B still accepts the token after {elapsed:.2f} s"
        await asyncio.sleep(POLL_EVERY_S)


@pytest.mark.parametrize("end", ["logout", "reuse"])
async def test_another_instance_refuses_the_session_within_a_second(
    settings, database_url, engine, person, end
):
    async with AsyncExitStack() as stack:
        app_a = await stack.enter_async_context(_instance(settings, database_url))
        app_b = await stack.enter_async_context(_instance(settings, database_url))
        on_a = await stack.enter_async_context(_client(app_a))
        on_b = await stack.enter_async_context(_client(app_b))
        first = await _login(on_a, person)
        newest = (await _refresh(on_a, first["refresh_token"])).json()
        assert (await _me(on_b, newest["access_token"])).status_code == 200  # B is warm

        if end == "logout":
            await _logout(on_a, newest["refresh_token"])
        else:
            problem(await _refresh(on_a, first["refresh_token"]), 401, "invalid_grant")

        problem(await _me(on_a, newest["access_token"]), 401, "invalid_token")  # at once
        await _until_refused(on_b, newest["access_token"])


async def test_one_poll_is_enough(settings, database_url, engine, person):
    """The structural half of the above, free of timing: B refuses after one poll."""
    async with AsyncExitStack() as stack:
        app_a = await stack.enter_async_context(_instance(settings, database_url))
        app_b = await stack.enter_async_context(_instance(settings, database_url))
        await app_b.state.policy.stop()  # no background poll: this test polls by hand
        on_a = await stack.enter_async_context(_client(app_a))
        on_b = await stack.enter_async_context(_client(app_b))
        session = await _login(on_a, person)
        assert (await _me(on_b, session["access_token"])).status_code == 200
        await _logout(on_a, session["refresh_token"])
        assert (await _me(on_b, session["access_token"])).status_code == 200  # not yet polled
        await app_b.state.policy.refresh_if_changed(app_b.state.db.engine)
        problem(await _me(on_b, session["access_token"]), 401, "invalid_token")
