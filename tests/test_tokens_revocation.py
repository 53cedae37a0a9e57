"""Revocation is exact: a token minted before a revocation is refused, one minted after it is
accepted, even when both fall in the same whole second (``iat`` has whole seconds).

The steps run under a manual identity clock (``crm_api.auth.clock``) fixed inside one second,
so the outcome does not depend on how fast a busy machine runs them."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from jose import jwt
from sqlalchemy import text

from conftest import problem, token_for
from crm_api.auth import clock
from crm_api.auth.clock import ManualClock
from crm_api.authz.state import settle
from factories.api_clients import bearer, client_access_token, create_api_client, policy_settled

URL = "/v1/customers"
PASSWORD = "correct-horse-42"


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


@contextmanager
def _one_second() -> Iterator[ManualClock]:
    """Every reading of the identity clock inside one whole second (the next one, so it
    follows whatever the test made before), 1 µs apart: a whole-second clock cannot tell
    the events apart, and a busy machine cannot push them into the next second."""
    start = (int(time.time()) + 1) * clock.US + 1_000
    with clock.use(ManualClock(start)) as manual:
        yield manual  # type: ignore[misc]


def _same_second(*tokens: str) -> None:
    """The steps really did share one ``iat`` second (what these tests are about)."""
    assert len({jwt.get_unverified_claims(t)["iat"] for t in tokens}) == 1


async def _valid_after(engine, user_id) -> int:
    async with engine.connect() as conn:
        when = (
            await conn.execute(
                text("SELECT tokens_valid_after FROM users WHERE id = :id"), {"id": user_id}
            )
        ).scalar_one()
    return clock.to_us(when)


async def _person(app, client) -> dict[str, Any]:
    body = {
        "email": f"u-{uuid.uuid4().hex[:8]}@example.com",
        "display_name": "U",
        "password": PASSWORD,
        "roles": ["sales_rep"],
    }
    response = await client.post("/v1/users", json=body)
    assert response.status_code == 201, response.text
    await policy_settled(app)
    return {**response.json(), "id": uuid.UUID(response.json()["id"])}


async def _change_password(client, user) -> None:
    changed = await client.patch(f"/v1/users/{user['id']}", json={"password": "new-secret-99"})
    assert changed.status_code == 200, changed.text


async def _deactivate_and_reactivate(client, user) -> None:
    for action in ("deactivate", "activate"):
        response = await client.post(f"/v1/users/{user['id']}/{action}")
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("revoke", [_change_password, _deactivate_and_reactivate])
async def test_token_minted_just_before_revocation_in_same_second_is_refused(
    app, engine, client, anon_client, revoke
):
    user = await _person(app, client)
    with _one_second():
        token = token_for(app, user)
        await revoke(client, user)
        after = token_for(app, user)
    _same_second(token, after)
    revoked_us = await _valid_after(engine, user["id"])
    assert jwt.get_unverified_claims(token)["iat_us"] < revoked_us
    assert revoked_us // clock.US == jwt.get_unverified_claims(token)["iat"]
    await policy_settled(app)
    problem(await anon_client.get(URL, headers=bearer(token)), 401, "invalid_token")
    assert (await anon_client.get(URL, headers=bearer(after))).status_code == 200


async def test_token_minted_just_after_revocation_in_same_second_is_accepted(
    app, engine, client, anon_client
):
    user = await _person(app, client)
    with _one_second():
        await _deactivate_and_reactivate(client, user)
        await _change_password(client, user)
        login = await anon_client.post(
            "/v1/auth/token",
            data={
                "grant_type": "password",
                "username": user["email"],
                "password": "new-secret-99",
            },
        )
        assert login.status_code == 200, login.text
        minted, logged_in = token_for(app, user), login.json()["access_token"]
    _same_second(minted, logged_in)
    assert (await _valid_after(engine, user["id"])) // clock.US == (
        jwt.get_unverified_claims(minted)["iat"]
    )
    await policy_settled(app)
    for token in (minted, logged_in):
        assert (await anon_client.get(URL, headers=bearer(token))).status_code == 200


async def test_api_client_token_after_reactivation_in_same_second_is_accepted(
    app, client, anon_client
):
    created = await create_api_client(client)
    await policy_settled(app)
    path = f"/v1/api-clients/{created['id']}"
    with _one_second():
        before = await client_access_token(anon_client, created)
        for active in (False, True):
            response = await client.patch(path, json={"active": active})
            assert response.status_code == 200, response.text
        after = await client_access_token(anon_client, created)
    _same_second(before, after)
    await policy_settled(app)
    problem(await anon_client.get(URL, headers=bearer(before)), 401, "invalid_token")
    assert (await anon_client.get(URL, headers=bearer(after))).status_code == 200


def _signed(app, user, **claims: Any) -> str:
    settings = app.state.settings
    now = int(time.time())
    body = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": f"user:{user['id']}",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "typ": "access",
        **claims,
    }
    key = app.state.keyring.current
    return jwt.encode(body, key.signing, algorithm=key.algorithm, headers={"kid": key.kid})


async def test_sub_second_issue_time_must_agree_with_iat(app, client, anon_client):
    """The private sub-second issue time is checked against ``iat``; a token without it
    (minted before it existed) counts from the start of its ``iat`` second."""
    user = await _person(app, client)
    # A second after the account's, without waiting for it (``nbf`` allows 5 s of skew).
    now = int(time.time()) + 1
    good = _signed(app, user, iat=now, nbf=now)
    assert (await anon_client.get(URL, headers=bearer(good))).status_code == 200
    for bad in (now * 1_000_000 - 1, (now + 1) * 1_000_000, "soon", 1.5):
        token = _signed(app, user, iat=now, nbf=now, iat_us=bad)
        problem(await anon_client.get(URL, headers=bearer(token)), 401, "invalid_token")
