"""OAuth2 grants end to end: password (with throttling), refresh rotation and reuse
detection, logout, and /v1/me."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from crm_api.auth.passwords import hash_password
from factories.api_clients import bearer
from factories.identity import make_org_unit, make_user

PASSWORD = "correct-horse-42"


@pytest.fixture
async def person(app, engine):
    unit = await make_org_unit(engine, "Sales")
    user = await make_user(
        engine,
        roles=("sales_rep",),
        org_unit=unit,
        email="Rep@Example.com",
        password_hash=hash_password(PASSWORD),
    )
    await app.state.policy.load(engine)
    return user


async def _login(http, username: str, password: str):
    return await http.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": username, "password": password},
    )


async def _refresh(http, token: str):
    return await http.post("/v1/auth/refresh", json={"refresh_token": token})


# --- password grant -------------------------------------------------------------------------


async def test_password_grant_issues_working_tokens(anon_client, person):
    response = await _login(anon_client, "rep@example.com", PASSWORD)  # e-mail case-insensitive
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    assert body["refresh_token"].startswith("rt_")
    assert response.headers["cache-control"] == "no-store"
    me = await anon_client.get("/v1/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["id"] == str(person["id"])


async def test_json_body_works_too(anon_client, person):
    response = await anon_client.post(
        "/v1/auth/token",
        json={
            "grant_type": "password",
            "username": person["email"],
            "password": PASSWORD,
        },
    )
    assert response.status_code == 200, response.text


async def test_wrong_password_and_unknown_user_look_the_same(anon_client, person):
    started = time.perf_counter()
    wrong = await _login(anon_client, person["email"], "wrong-password-1")
    wrong_s = time.perf_counter() - started
    started = time.perf_counter()
    unknown = await _login(anon_client, "nobody@example.com", "wrong-password-1")
    unknown_s = time.perf_counter() - started
    a, b = problem(wrong, 401, "invalid_grant"), problem(unknown, 401, "invalid_grant")
    strip = {"request_id"}
    assert {k: v for k, v in a.items() if k not in strip} == {
        k: v for k, v in b.items() if k not in strip
    }
    assert wrong.headers.get("www-authenticate") == unknown.headers.get("www-authenticate")
    # Both paths run argon2 (a dummy hash for unknown users): neither is a fast reject.
    assert wrong_s > 0.005 and unknown_s > 0.005


async def test_inactive_user_cannot_log_in(anon_client, engine, person):
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET active = false WHERE id = :id"), {"id": person["id"]}
        )
    problem(await _login(anon_client, person["email"], PASSWORD), 401, "invalid_grant")


async def test_service_accounts_cannot_use_the_password_grant(anon_client, engine):
    user = await make_user(engine, email="svc@example.com", password_hash=hash_password(PASSWORD))
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET kind = 'service' WHERE id = :id"), {"id": user["id"]}
        )
    problem(await _login(anon_client, "svc@example.com", PASSWORD), 401, "invalid_grant")


@pytest.mark.parametrize(
    "data",
    [
        {"grant_type": "password", "username": "a@b.c"},
        {"grant_type": "password", "password": "x"},
        {"grant_type": "implicit"},
        {"grant_type": "client_credentials", "client_id": "x"},
        {"grant_type": "refresh_token"},
        {"grant_type": "password", "username": "a@b.c", "password": "x", "extra": "1"},
    ],
)
async def test_incomplete_token_requests_are_422(anon_client, engine, data):
    problem(await anon_client.post("/v1/auth/token", data=data), 422)
    assert await count_rows(engine, "refresh_tokens") == 0


async def test_malformed_token_requests(anon_client):
    problem(
        await anon_client.post(
            "/v1/auth/token", content=b"{nope", headers={"content-type": "application/json"}
        ),
        400,
        "malformed_json",
    )
    problem(await anon_client.post("/v1/auth/token", json=["password"]), 422)
    empty = await anon_client.post("/v1/auth/token")
    assert empty.status_code == 400 and empty.json()["code"] == "malformed_json"
    problem(
        await anon_client.post(
            "/v1/auth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": "Basic !!!not-base64"},
        ),
        400,
        "invalid_client",
    )


# --- throttling -----------------------------------------------------------------------------


async def test_throttle_locks_unknown_usernames_too(app, anon_client):
    limit = app.state.settings.login_max_failures
    for _ in range(limit):
        problem(await _login(anon_client, "ghost@example.com", "wrong-password-1"), 401)
    locked = await _login(anon_client, "ghost@example.com", "wrong-password-1")
    problem(locked, 429, "too_many_attempts")
    assert int(locked.headers["retry-after"]) > 0


async def test_throttle_locks_a_real_user_even_with_the_right_password(app, anon_client, person):
    for _ in range(app.state.settings.login_max_failures):
        await _login(anon_client, person["email"], "wrong-password-1")
    locked = await _login(anon_client, person["email"].upper(), PASSWORD)
    problem(locked, 429, "too_many_attempts")
    assert int(locked.headers["retry-after"]) > 0
    # Other usernames are not affected.
    problem(await _login(anon_client, "else@example.com", "wrong-password-1"), 401)


async def test_success_resets_the_failure_count(app, anon_client, person):
    below = app.state.settings.login_max_failures - 1
    for _ in range(below):
        problem(await _login(anon_client, person["email"], "wrong-password-1"), 401)
    assert (await _login(anon_client, person["email"], PASSWORD)).status_code == 200
    for _ in range(below):
        problem(await _login(anon_client, person["email"], "wrong-password-1"), 401)
    assert (await _login(anon_client, person["email"], PASSWORD)).status_code == 200


# --- refresh tokens ---------------------------------------------------------------------------


async def test_refresh_rotates(anon_client, person):
    first = (await _login(anon_client, person["email"], PASSWORD)).json()
    second = await _refresh(anon_client, first["refresh_token"])
    assert second.status_code == 200, second.text
    assert second.json()["refresh_token"] != first["refresh_token"]
    me = await anon_client.get("/v1/me", headers=bearer(second.json()["access_token"]))
    assert me.status_code == 200
    # The grant form works the same way.
    third = await anon_client.post(
        "/v1/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": second.json()["refresh_token"],
        },
    )
    assert third.status_code == 200, third.text


async def test_reusing_a_spent_refresh_token_revokes_the_family(anon_client, engine, person):
    first = (await _login(anon_client, person["email"], PASSWORD)).json()
    other_session = (await _login(anon_client, person["email"], PASSWORD)).json()
    second = (await _refresh(anon_client, first["refresh_token"])).json()
    problem(await _refresh(anon_client, first["refresh_token"]), 401, "invalid_grant")
    # The thief's reuse also kills the legitimate newer token of that session...
    problem(await _refresh(anon_client, second["refresh_token"]), 401, "invalid_grant")
    # ...but not the user's other sessions.
    assert (await _refresh(anon_client, other_session["refresh_token"])).status_code == 200
    live = "revoked_at IS NULL AND used_at IS NULL"
    assert await count_rows(engine, "refresh_tokens", live) == 1  # the other session's newest


async def test_logout_revokes_and_is_idempotent(anon_client, person):
    first = (await _login(anon_client, person["email"], PASSWORD)).json()
    second = (await _refresh(anon_client, first["refresh_token"])).json()
    out = await anon_client.post("/v1/auth/logout", json={"refresh_token": first["refresh_token"]})
    assert out.status_code == 204
    problem(await _refresh(anon_client, second["refresh_token"]), 401, "invalid_grant")
    again = await anon_client.post("/v1/auth/logout", json={"refresh_token": "rt_unknown"})
    assert again.status_code == 204
    problem(await anon_client.post("/v1/auth/logout", json={}), 422)
    problem(await anon_client.post("/v1/auth/logout", json={"refresh_token": ""}), 422)


async def test_expired_or_unknown_refresh_token(anon_client, engine, person):
    first = (await _login(anon_client, person["email"], PASSWORD)).json()
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE refresh_tokens SET expires_at = now() - interval '1 s'"))
    problem(await _refresh(anon_client, first["refresh_token"]), 401, "invalid_grant")
    problem(await _refresh(anon_client, "rt_made_up"), 401, "invalid_grant")
    problem(await _refresh(anon_client, "x" * 300), 422)


async def test_refresh_refused_after_deactivation(anon_client, engine, person):
    first = (await _login(anon_client, person["email"], PASSWORD)).json()
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET active = false WHERE id = :id"), {"id": person["id"]}
        )
    problem(await _refresh(anon_client, first["refresh_token"]), 401, "invalid_grant")


async def test_refresh_token_is_not_a_bearer_token(anon_client, person):
    first = (await _login(anon_client, person["email"], PASSWORD)).json()
    problem(
        await anon_client.get("/v1/me", headers=bearer(first["refresh_token"])),
        401,
        "invalid_token",
    )


# --- /v1/me ---------------------------------------------------------------------------------


async def test_me_returns_roles_and_permissions(client_for, person):
    me = await (await client_for(person)).get("/v1/me")
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["kind"] == "user" and body["email"] == "Rep@Example.com"
    assert body["roles"] == ["sales_rep"] and body["token_permissions"] is None
    assert body["org_unit_id"] == str(person["org_unit_id"])
    grants = {(g["resource"], g["action"], g["scope"]) for g in body["permissions"]}
    assert ("customers", "read", "own") in grants and ("users", "read", "org_unit") in grants
    assert all(g["role"] == "sales_rep" for g in body["permissions"])


async def test_me_for_an_admin(client):
    body = (await client.get("/v1/me")).json()
    assert body["roles"] == ["admin"]
    assert {(g["resource"], g["action"], g["scope"]) for g in body["permissions"]} == {
        ("*", "*", "all")
    }
