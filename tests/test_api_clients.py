"""/v1/api-clients: administration, the client-credentials grant, secret rotation and
deactivation, end to end on a real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from factories.api_clients import (
    bearer,
    client_access_token,
    client_credentials,
    create_api_client,
    policy_settled,
)
from factories.identity import make_org_unit, make_user

# --- who may administer clients ----------------------------------------------------------


async def test_outsider_sees_and_changes_nothing(client, client_for, engine):
    created = await create_api_client(client)
    rep = await client_for(await make_user(engine, roles=("sales_rep",)))
    problem(await rep.get("/v1/api-clients"), 403, "permission_denied")
    problem(await rep.get(f"/v1/api-clients/{created['id']}"), 403, "permission_denied")
    problem(await rep.post("/v1/api-clients", json={"name": "x", "roles": ["partner"]}), 403)
    problem(await rep.patch(f"/v1/api-clients/{created['id']}", json={"name": "y"}), 403)
    problem(await rep.delete(f"/v1/api-clients/{created['id']}"), 403)
    problem(await rep.post(f"/v1/api-clients/{created['id']}/rotate-secret"), 403)
    assert await count_rows(engine, "api_clients") == 1


async def test_executive_reads_but_cannot_create(client, client_for, engine):
    await create_api_client(client)
    executive = await client_for(await make_user(engine, roles=("executive",)))
    listed = await executive.get("/v1/api-clients")
    assert listed.status_code == 200 and len(listed.json()["data"]) == 1
    assert "client_secret" not in listed.json()["data"][0]
    problem(await executive.post("/v1/api-clients", json={"name": "x", "roles": ["partner"]}), 403)


async def test_no_token_is_401(anon_client):
    problem(await anon_client.get("/v1/api-clients"), 401, "missing_token")


# --- lifecycle ---------------------------------------------------------------------------


async def test_create_returns_secret_once_and_stores_only_a_hash(client, engine):
    unit = await make_org_unit(engine, "Partners")
    response = await client.post(
        "/v1/api-clients",
        json={
            "name": "Storefront",
            "roles": ["partner", "partner"],
            "org_unit_id": str(unit["id"]),
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["client_id"].startswith("cli_") and body["client_secret"].startswith("cs_")
    assert body["roles"] == ["partner"] and body["active"] is True
    assert body["org_unit_id"] == str(unit["id"]) and body["version"] == 1
    assert response.headers["location"] == f"/v1/api-clients/{body['id']}"
    assert response.headers["etag"] == '"1"' and response.headers["cache-control"] == "no-store"
    got = await client.get(f"/v1/api-clients/{body['id']}")
    assert got.status_code == 200 and "client_secret" not in got.json()
    assert got.json() == {k: v for k, v in body.items() if k != "client_secret"}
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT c.secret_hash, u.kind, u.password_hash, u.active, u.display_name "
                    "FROM api_clients c JOIN users u ON u.id = c.user_id WHERE c.id = :id"
                ),
                {"id": body["id"]},
            )
        ).one()
        grants = (
            (
                await conn.execute(
                    text("SELECT v1 FROM authz_rules WHERE ptype = 'g' AND v0 = :sub"),
                    {"sub": f"client:{body['user_id']}"},
                )
            )
            .scalars()
            .all()
        )
        events = (
            (
                await conn.execute(
                    text(
                        "SELECT changes::text FROM audit_events WHERE resource_type = 'api_clients'"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert row.secret_hash.startswith("$argon2") and body["client_secret"] not in row.secret_hash
    assert (row.kind, row.password_hash, row.active, row.display_name) == (
        "service",
        None,
        True,
        "Storefront",
    )
    assert grants == ["partner"]
    assert len(events) == 1 and body["client_secret"] not in events[0]


async def test_client_credentials_form_and_basic_then_me(app, client, anon_client):
    created = await create_api_client(client, roles=["partner", "marketer"])
    await policy_settled(app)
    form = await client_credentials(anon_client, created["client_id"], created["client_secret"])
    basic = await client_credentials(
        anon_client, created["client_id"], created["client_secret"], basic=True
    )
    for response in (form, basic):
        assert response.status_code == 200, response.text
        assert response.json()["refresh_token"] is None
    me = await anon_client.get("/v1/me", headers=bearer(form.json()["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["kind"] == "api_client" and me.json()["id"] == created["user_id"]
    assert me.json()["roles"] == ["marketer", "partner"] and me.json()["email"] is None
    assert {"resource": "customers", "action": "export"} in [
        {k: g[k] for k in ("resource", "action")} for g in me.json()["permissions"]
    ]
    customers = await anon_client.get("/v1/customers", headers=bearer(form.json()["access_token"]))
    assert customers.status_code == 200
    got = await client.get(f"/v1/api-clients/{created['id']}")
    assert got.json()["last_used_at"] is not None


async def test_wrong_secret_and_unknown_client_are_the_same_401(client, anon_client):
    created = await create_api_client(client)
    wrong = await client_credentials(anon_client, created["client_id"], "cs_wrong")
    unknown = await client_credentials(anon_client, "cli_nope", created["client_secret"])
    basic_wrong = await client_credentials(anon_client, created["client_id"], "x", basic=True)
    bodies = [problem(r, 401, "invalid_client") for r in (wrong, unknown, basic_wrong)]
    assert len({b["detail"] for b in bodies}) == 1


async def test_update_name_roles_and_etag(app, client, anon_client, engine):
    created = await create_api_client(client)
    token = await client_access_token(anon_client, created)
    stale = await client.patch(
        f"/v1/api-clients/{created['id']}", json={"name": "X"}, headers={"If-Match": '"9"'}
    )
    problem(stale, 412, "version_mismatch")
    patched = await client.patch(
        f"/v1/api-clients/{created['id']}",
        json={"roles": ["marketer"]},
        headers={"If-Match": '"1"'},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["roles"] == ["marketer"] and patched.json()["version"] == 2
    assert patched.headers["etag"] == '"2"'
    # The new roles reach the token the client already has within the policy poll interval.
    await policy_settled(app)
    me = await anon_client.get("/v1/me", headers=bearer(token))
    assert me.json()["roles"] == ["marketer"]
    problem(
        await anon_client.post(
            "/v1/customers",
            json={"name": "n", "owner_id": created["user_id"]},
            headers=bearer(token),
        ),
        403,
        "permission_denied",
    )
    renamed = await client.patch(f"/v1/api-clients/{created['id']}", json={"name": "Shop 2"})
    assert renamed.json()["name"] == "Shop 2" and renamed.json()["version"] == 3
    unchanged = await client.patch(f"/v1/api-clients/{created['id']}", json={"name": "Shop 2"})
    assert unchanged.json()["version"] == 3
    async with engine.connect() as conn:
        name = (
            await conn.execute(
                text("SELECT display_name FROM users WHERE id = :id"), {"id": created["user_id"]}
            )
        ).scalar_one()
    assert name == "Shop 2"
    assert await count_rows(engine, "audit_events", "resource_type = 'api_clients'") == 3


async def test_delete_deactivates_and_kills_tokens_then_restore(app, client, anon_client, engine):
    created = await create_api_client(client)
    await policy_settled(app)
    token = await client_access_token(anon_client, created)
    assert (await anon_client.get("/v1/customers", headers=bearer(token))).status_code == 200
    version_before = await _policy_version(engine)
    deleted = await client.delete(f"/v1/api-clients/{created['id']}")
    assert deleted.status_code == 204
    assert await _policy_version(engine) == version_before + 1
    problem(await anon_client.get("/v1/customers", headers=bearer(token)), 401, "invalid_token")
    problem(
        await client_credentials(anon_client, created["client_id"], created["client_secret"]),
        401,
        "invalid_client",
    )
    got = (await client.get(f"/v1/api-clients/{created['id']}")).json()
    assert got["active"] is False
    assert (await client.delete(f"/v1/api-clients/{created['id']}")).status_code == 204
    assert await count_rows(engine, "audit_events", "action = 'delete'") == 1
    listed = (await client.get("/v1/api-clients", params={"active": "false"})).json()
    assert [c["id"] for c in listed["data"]] == [created["id"]]
    restored = await client.patch(f"/v1/api-clients/{created['id']}", json={"active": True})
    assert restored.json()["active"] is True
    await policy_settled(app)
    # The old access token stays dead, even one issued in the second of the deactivation;
    # a token issued right after the reactivation works (compared to the microsecond).
    problem(await anon_client.get("/v1/customers", headers=bearer(token)), 401, "invalid_token")
    fresh = await client_access_token(anon_client, created)
    assert (await anon_client.get("/v1/customers", headers=bearer(fresh))).status_code == 200


async def test_rotate_secret_with_grace_then_without(client, anon_client, engine):
    created = await create_api_client(client)
    old = created["client_secret"]
    rotated = await client.post(
        f"/v1/api-clients/{created['id']}/rotate-secret", json={"grace_period_s": 3600}
    )
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["client_secret"]
    assert second != old and rotated.json()["previous_secret_expires_at"] is not None
    assert rotated.headers["cache-control"] == "no-store"
    for secret in (old, second):
        response = await client_credentials(anon_client, created["client_id"], secret)
        assert response.status_code == 200
    # The grace period ends: the old secret stops.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_clients SET previous_secret_expires_at = now() - interval '1 second'")
        )
    problem(await client_credentials(anon_client, created["client_id"], old), 401)
    assert (await client_credentials(anon_client, created["client_id"], second)).status_code == 200
    # Without a grace period the replaced secret stops at once.
    third = (await client.post(f"/v1/api-clients/{created['id']}/rotate-secret")).json()
    assert third["previous_secret_expires_at"] is None
    problem(await client_credentials(anon_client, created["client_id"], second), 401)
    ok = await client_credentials(anon_client, created["client_id"], third["client_secret"])
    assert ok.status_code == 200
    async with engine.connect() as conn:
        events = (
            (
                await conn.execute(
                    text("SELECT changes::text FROM audit_events WHERE action = 'rotate_secret'")
                )
            )
            .scalars()
            .all()
        )
    assert len(events) == 2
    assert not any(s in e for e in events for s in (old, second, third["client_secret"]))


async def test_list_paginates_filters_and_sorts(client):
    for name in ("Charlie", "alpha", "Bravo"):
        await create_api_client(client, name=name)
    first = (await client.get("/v1/api-clients", params={"limit": 2, "sort": "name"})).json()
    assert first["has_more"] is True and len(first["data"]) == 2
    rest = (
        await client.get(
            "/v1/api-clients", params={"limit": 2, "sort": "name", "cursor": first["next_cursor"]}
        )
    ).json()
    names = [c["name"] for c in first["data"] + rest["data"]]
    assert sorted(names) == sorted(["Charlie", "alpha", "Bravo"]) and len(set(names)) == 3
    assert rest["has_more"] is False
    found = (await client.get("/v1/api-clients", params={"q": "rav"})).json()
    assert [c["name"] for c in found["data"]] == ["Bravo"]
    problem(await client.get("/v1/api-clients", params={"sort": "secret_hash"}), 422)
    problem(await client.get("/v1/api-clients", params={"limit": 1000}), 422)
    problem(await client.get("/v1/api-clients", params={"cursor": "garbage"}), 400)
    problem(await client.get("/v1/api-clients", params={"bogus": 1}), 422)


# --- bad input changes nothing ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x"},
        {"name": "", "roles": ["partner"]},
        {"name": "x", "roles": []},
        {"name": "x", "roles": "partner"},
        {"name": "x", "roles": ["partner"], "client_secret": "mine"},
        {"name": "x", "roles": ["partner"], "active": False},
        {"name": "x", "roles": ["partner"], "org_unit_id": "not-a-uuid"},
        {"name": "x" * 201, "roles": ["partner"]},
        [],
    ],
)
async def test_create_rejects_bad_input(client, engine, body):
    problem(await client.post("/v1/api-clients", json=body), 422)
    assert await count_rows(engine, "api_clients") == 0
    assert await count_rows(engine, "users", "kind = 'service'") == 0


async def test_create_rejects_unknown_role_and_org_unit(client, engine):
    body = problem(
        await client.post("/v1/api-clients", json={"name": "x", "roles": ["partner", "wizard"]}),
        422,
        "unknown_role",
    )
    assert body["errors"][0]["message"] == "wizard"
    problem(
        await client.post(
            "/v1/api-clients",
            json={
                "name": "x",
                "roles": ["partner"],
                "org_unit_id": str(uuid.uuid4()),
            },
        ),
        422,
        "invalid_org_unit",
    )
    malformed = await client.post(
        "/v1/api-clients", content=b"{not json", headers={"content-type": "application/json"}
    )
    problem(malformed, 400)
    assert await count_rows(engine, "api_clients") == 0
    assert await count_rows(engine, "authz_rules", "v0 LIKE 'client:%'") == 0


async def test_update_and_rotate_reject_bad_input(client, engine):
    created = await create_api_client(client)
    url = f"/v1/api-clients/{created['id']}"
    for body in (
        {"name": None},
        {"roles": []},
        {"active": None},
        {"client_id": "cli_x"},
        {"roles": ["nope"]},
        {"version": 5},
    ):
        problem(await client.patch(url, json=body), 422)
    for body in ({"grace_period_s": -1}, {"grace_period_s": 10**9}, {"extra": 1}):
        problem(await client.post(f"{url}/rotate-secret", json=body), 422)
    problem(await client.get("/v1/api-clients/not-a-uuid"), 422)
    missing = uuid.uuid4()
    problem(await client.get(f"/v1/api-clients/{missing}"), 404, "api_client_not_found")
    problem(await client.patch(f"/v1/api-clients/{missing}", json={"name": "x"}), 404)
    problem(await client.delete(f"/v1/api-clients/{missing}"), 404)
    problem(await client.post(f"/v1/api-clients/{missing}/rotate-secret"), 404)
    got = (await client.get(url)).json()
    assert got["version"] == 1 and got["roles"] == ["partner"]
    assert await count_rows(engine, "audit_events", "resource_type = 'api_clients'") == 1
    # The secret from creation still works: no failed rotation touched it.
    async with engine.connect() as conn:
        prev = (await conn.execute(text("SELECT previous_secret_hash FROM api_clients"))).scalar()
    assert prev is None


async def test_role_escalation_is_refused(client, client_for, engine):
    """A caller with api_clients:create can only hand out roles whose every grant it holds
    (see test_delegation.py for the whole rule)."""
    await _make_role(
        engine, "ops", ("api_clients", "create", "all"), ("api_clients", "read", "all")
    )
    unit = await make_org_unit(engine, "Shop", kind="team")
    ops = await client_for(await make_user(engine, roles=("ops", "sales_manager"), org_unit=unit))
    denied = await ops.post("/v1/api-clients", json={"name": "x", "roles": ["admin"]})
    problem(denied, 403, "role_not_grantable")
    assert await count_rows(engine, "api_clients") == 0
    # the client's `own` records must lie within the caller's reach: placed in its unit
    allowed = await ops.post(
        "/v1/api-clients", json={"name": "x", "roles": ["partner"], "org_unit_id": str(unit["id"])}
    )
    assert allowed.status_code == 201, allowed.text


async def test_org_scoped_reader_sees_only_its_subtree(client, client_for, engine):
    root = await make_org_unit(engine, "Root", kind="group")
    east = await make_org_unit(engine, "East", parent=root)
    west = await make_org_unit(engine, "West", parent=root)
    mine = await create_api_client(client, name="east shop", org_unit_id=str(east["id"]))
    other = await create_api_client(client, name="west shop", org_unit_id=str(west["id"]))
    await _make_role(engine, "lead", ("api_clients", "read", "org_subtree"))
    lead = await client_for(await make_user(engine, roles=("lead",), org_unit=east))
    listed = (await lead.get("/v1/api-clients")).json()
    assert [c["id"] for c in listed["data"]] == [mine["id"]]
    problem(await lead.get(f"/v1/api-clients/{other['id']}"), 404, "api_client_not_found")


async def _policy_version(engine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT version FROM authz_state"))).scalar_one())


async def _make_role(engine, name: str, *grants: tuple[str, str, str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO roles (id, name, builtin, version)"
                " VALUES (gen_random_uuid(), :name, false, 1)"
            ),
            {"name": name},
        )
        await conn.execute(
            text(
                "INSERT INTO authz_rules (id, ptype, v0, v1, v2, v3, v4, v5)"
                " VALUES (gen_random_uuid(), 'p', :role, :res, :act, :scope, '', '')"
            ),
            [{"role": name, "res": r, "act": a, "scope": sc} for r, a, sc in grants],
        )
        await conn.execute(text("UPDATE authz_state SET version = version + 1"))


async def test_own_scope_reaches_the_clients_one_created(client, client_for, engine):
    """A client is owned by whoever created it: with ``own`` grants on api_clients a person
    reads and changes the clients they made, and another person with the same grants in
    the same unit reaches none of them (404, not 403); the administrator sees all. No read
    carries the secret, its hash, or the owner column."""
    await _make_role(
        engine,
        "integrator",
        *[("api_clients", a, "own") for a in ("read", "create", "update", "delete")],
    )
    unit = await make_org_unit(engine, "Shop", kind="team")
    alice = await client_for(
        await make_user(engine, roles=("integrator", "sales_manager"), org_unit=unit)
    )
    bob = await client_for(
        await make_user(engine, roles=("integrator", "sales_manager"), org_unit=unit)
    )
    body = {"name": "alice's shop", "roles": ["partner"], "org_unit_id": str(unit["id"])}
    made = await alice.post("/v1/api-clients", json=body)
    assert made.status_code == 201, made.text
    created = made.json()
    other = await create_api_client(client, name="admin's", org_unit_id=str(unit["id"]))
    url = f"/v1/api-clients/{created['id']}"

    listed = (await alice.get("/v1/api-clients")).json()["data"]
    assert [c["id"] for c in listed] == [created["id"]]
    got = await alice.get(url)
    assert got.status_code == 200
    for record in (*listed, got.json()):
        assert not {"client_secret", "secret_hash", "previous_secret_hash", "owner_id"} & set(
            record
        ), record
    renamed = await alice.patch(
        url, json={"name": "renamed"}, headers={"If-Match": got.headers["etag"]}
    )
    assert renamed.status_code == 200, renamed.text

    assert (await bob.get("/v1/api-clients")).json()["data"] == []
    problem(await bob.get(url), 404, "api_client_not_found")
    problem(await bob.patch(url, json={"name": "mine now"}), 404, "api_client_not_found")
    problem(await bob.delete(url), 404, "api_client_not_found")
    problem(await alice.get(f"/v1/api-clients/{other['id']}"), 404, "api_client_not_found")

    everything = (await client.get("/v1/api-clients")).json()["data"]
    assert {c["id"] for c in everything} == {created["id"], other["id"]}
    assert (await client.get(url)).json()["name"] == "renamed"
