"""/v1/me/tokens: personal access tokens, from creation to revocation, used for real."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from jose import jwt
from sqlalchemy import text

from conftest import count_rows, problem
from factories.api_clients import (
    bearer,
    client_access_token,
    create_api_client,
    create_pat,
    policy_settled,
)
from factories.identity import make_user


@pytest.fixture
async def rep(engine):
    return await make_user(engine, roles=("sales_rep",))


async def test_outsider_cannot_see_or_revoke_others_tokens(client_for, engine, rep):
    pat = await create_pat(await client_for(rep), ("customers", "read"))
    other = await client_for(await make_user(engine, roles=("sales_rep",)))
    assert (await other.get("/v1/me/tokens")).json()["data"] == []
    problem(await other.get(f"/v1/me/tokens/{pat['id']}"), 404, "token_not_found")
    problem(await other.delete(f"/v1/me/tokens/{pat['id']}"), 404, "token_not_found")
    assert await count_rows(engine, "personal_access_tokens", "revoked_at IS NULL") == 1


async def test_anonymous_gets_401(anon_client):
    problem(await anon_client.get("/v1/me/tokens"), 401, "missing_token")
    problem(await anon_client.post("/v1/me/tokens", json={}), 401, "missing_token")


async def test_read_only_token_reads_but_cannot_write(app, anon_client, client_for, engine, rep):
    owner = await client_for(rep)
    response = await owner.post(
        "/v1/me/tokens",
        json={
            "name": "export",
            "permissions": [{"resource": "customers", "action": "read"}],
        },
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/me/tokens/{created['id']}"
    assert response.headers["cache-control"] == "no-store"
    assert created["permissions"] == [{"resource": "customers", "action": "read"}]
    lifetime = datetime.fromisoformat(created["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=364) < lifetime <= timedelta(days=365)
    claims = jwt.get_unverified_claims(created["token"])
    assert claims["typ"] == "pat" and claims["jti"] == created["id"]
    assert claims["sub"] == f"user:{rep['id']}"

    pat = bearer(created["token"])
    assert (await anon_client.get("/v1/customers", headers=pat)).status_code == 200
    problem(
        await anon_client.post("/v1/customers", json={"name": "n"}, headers=pat),
        403,
        "permission_denied",
    )
    me = (await anon_client.get("/v1/me", headers=pat)).json()
    assert me["token_permissions"] == [["customers", "read"]]
    assert {(g["resource"], g["action"]) for g in me["permissions"]} == {("customers", "read")}
    # The same user's session token is not narrowed.
    assert (await owner.post("/v1/customers", json={"name": "n"})).status_code == 201

    await app.state.principals.flush_last_used()
    got = (await owner.get(f"/v1/me/tokens/{created['id']}")).json()
    assert got["last_used_at"] is not None and "token" not in got
    listed = (await owner.get("/v1/me/tokens")).json()
    assert [t["id"] for t in listed["data"]] == [created["id"]]
    assert "token" not in listed["data"][0]


async def test_revoke_stops_the_token_at_once(anon_client, client_for, engine, rep):
    owner = await client_for(rep)
    created = await create_pat(owner, ("customers", "read"), ("customers", "create"))
    pat = bearer(created["token"])
    assert (await anon_client.get("/v1/customers", headers=pat)).status_code == 200
    assert (await owner.delete(f"/v1/me/tokens/{created['id']}")).status_code == 204
    problem(await anon_client.get("/v1/customers", headers=pat), 401, "invalid_token")
    assert (await owner.delete(f"/v1/me/tokens/{created['id']}")).status_code == 204
    assert (await owner.get("/v1/me/tokens")).json()["data"] == []
    revoked = (await owner.get("/v1/me/tokens", params={"include_revoked": "true"})).json()
    assert revoked["data"][0]["revoked_at"] is not None
    async with engine.connect() as conn:
        events = (
            await conn.execute(
                text(
                    "SELECT action, changes::text FROM audit_events"
                    " WHERE resource_type = 'personal_access_tokens' ORDER BY occurred_at"
                )
            )
        ).all()
    assert [e.action for e in events] == ["create", "revoke"]
    assert not any(created["token"] in e.changes for e in events)


async def test_permissions_must_be_held_now(client_for, engine, rep):
    owner = await client_for(rep)
    for perms in (
        [("api_clients", "read")],
        [("customers", "read"), ("customers", "purge")],
        [("customers", "*")],
        [("nothing", "read")],
    ):
        body = problem(
            await owner.post(
                "/v1/me/tokens",
                json={
                    "name": "x",
                    "permissions": [{"resource": r, "action": a} for r, a in perms],
                },
            ),
            403,
            "grant_not_allowed",
        )
        assert body["errors"][0]["field"] == f"permissions.{len(perms) - 1}"
    assert await count_rows(engine, "personal_access_tokens") == 0


async def test_wildcard_action_for_an_admin(client, anon_client):
    created = await create_pat(client, ("customers", "*"))
    pat = bearer(created["token"])
    assert (await anon_client.get("/v1/customers", headers=pat)).status_code == 200
    problem(await anon_client.get("/v1/api-clients", headers=pat), 403, "permission_denied")


async def test_token_loses_what_the_user_loses(app, anon_client, client_for, engine, rep):
    created = await create_pat(await client_for(rep), ("customers", "read"))
    pat = bearer(created["token"])
    assert (await anon_client.get("/v1/customers", headers=pat)).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM authz_rules WHERE ptype = 'g' AND v0 = :sub"),
            {"sub": f"user:{rep['id']}"},
        )
        await conn.execute(text("UPDATE authz_state SET version = version + 1"))
    await policy_settled(app)
    problem(await anon_client.get("/v1/customers", headers=pat), 403, "permission_denied")


async def test_expiry_in_days_and_expired_rows(app, anon_client, client_for, engine, rep):
    created = await create_pat(await client_for(rep), ("customers", "read"), expires_in_days=7)
    claims = jwt.get_unverified_claims(created["token"])
    assert abs(claims["exp"] - (time.time() + 7 * 86_400)) < 60
    expires_at = datetime.fromisoformat(created["expires_at"])
    assert abs(expires_at.timestamp() - claims["exp"]) < 2
    at = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    explicit = await create_pat(
        await client_for(rep), ("customers", "read"), expires_at=at.isoformat()
    )
    assert datetime.fromisoformat(explicit["expires_at"]) == at
    # A row that has expired stops the token even while its JWT is still unexpired.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE personal_access_tokens SET expires_at = now() - interval '1 second'"
                " WHERE id = :id"
            ),
            {"id": created["id"]},
        )
        await conn.execute(text("UPDATE authz_state SET version = version + 1"))
    await policy_settled(app)
    problem(await anon_client.get("/v1/customers", headers=bearer(created["token"])), 401)
    ok = await anon_client.get("/v1/customers", headers=bearer(explicit["token"]))
    assert ok.status_code == 200


async def test_a_token_cannot_mint_tokens(anon_client, client_for, engine, rep):
    created = await create_pat(await client_for(rep), ("customers", "read"))
    response = await anon_client.post(
        "/v1/me/tokens",
        headers=bearer(created["token"]),
        json={"name": "wider", "permissions": [{"resource": "customers", "action": "create"}]},
    )
    problem(response, 403, "pat_not_allowed")
    # Listing and revoking its own kind still work with it.
    listed = await anon_client.get("/v1/me/tokens", headers=bearer(created["token"]))
    assert listed.status_code == 200
    assert await count_rows(engine, "personal_access_tokens") == 1


async def test_api_clients_have_no_personal_tokens(app, client, anon_client, engine):
    created = await create_api_client(client)
    await policy_settled(app)
    token = await client_access_token(anon_client, created)
    response = await anon_client.post(
        "/v1/me/tokens",
        headers=bearer(token),
        json={"name": "x", "permissions": [{"resource": "customers", "action": "read"}]},
    )
    problem(response, 403, "pat_not_allowed")
    assert await count_rows(engine, "personal_access_tokens") == 0


def _in(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x"},
        {"name": "x", "permissions": []},
        {"name": "", "permissions": [{"resource": "customers", "action": "read"}]},
        {"name": "x", "permissions": [{"resource": "customers"}]},
        {"name": "x", "permissions": [{"resource": "*", "action": "read"}]},
        {"name": "x", "permissions": [{"resource": "customers", "action": "READ"}]},
        {"name": "x", "permissions": [{"resource": "customers", "action": "read", "scope": "all"}]},
        {"name": "x", "permissions": [["customers", "read"]]},
        {"name": "x", "permissions": [{"resource": "customers", "action": "read"}], "user_id": 1},
        {
            "name": "x",
            "permissions": [{"resource": "customers", "action": "read"}],
            "expires_in_days": 0,
        },
        {
            "name": "x",
            "permissions": [{"resource": "customers", "action": "read"}],
            "expires_in_days": 5000,
        },
        {
            "name": "x",
            "permissions": [{"resource": "customers", "action": "read"}],
            "expires_in_days": 3,
            "expires_at": _in(3),
        },
        {
            "name": "x",
            "permissions": [{"resource": "customers", "action": "read"}],
            "expires_at": _in(-1),
        },
        {
            "name": "x",
            "permissions": [{"resource": "customers", "action": "read"}],
            "expires_at": _in(4000),
        },
        {
            "name": "x",
            "permissions": [{"resource": "customers", "action": "read"}],
            "expires_at": "2030-01-01T00:00:00",
        },
        {
            "name": "x",
            "permissions": [{"resource": "customers", "action": "read"}],
            "expires_at": "soon",
        },
    ],
)
async def test_bad_input_writes_nothing(client_for, engine, rep, body):
    problem(await (await client_for(rep)).post("/v1/me/tokens", json=body), 422)
    assert await count_rows(engine, "personal_access_tokens") == 0
    assert await count_rows(engine, "audit_events") == 0


async def test_bad_ids_and_queries(client_for, rep):
    owner = await client_for(rep)
    problem(await owner.get("/v1/me/tokens/not-a-uuid"), 422)
    problem(await owner.delete("/v1/me/tokens/not-a-uuid"), 422)
    problem(await owner.get(f"/v1/me/tokens/{uuid.uuid4()}"), 404, "token_not_found")
    problem(await owner.get("/v1/me/tokens", params={"sort": "token"}), 422)
    problem(await owner.get("/v1/me/tokens", params={"cursor": "x"}), 400)


async def test_list_pages(client_for, rep):
    owner = await client_for(rep)
    for name in ("a", "b", "c"):
        await create_pat(owner, ("customers", "read"), name=name)
    first = (await owner.get("/v1/me/tokens", params={"limit": 2, "sort": "name"})).json()
    rest = (
        await owner.get(
            "/v1/me/tokens",
            params={
                "limit": 2,
                "sort": "name",
                "cursor": first["next_cursor"],
            },
        )
    ).json()
    assert [t["name"] for t in first["data"] + rest["data"]] == ["a", "b", "c"]
