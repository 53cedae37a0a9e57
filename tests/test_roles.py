"""Roles and grants: validation, protection of built-ins, and grants that take effect."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from crm_api.authz.defaults import BUILTIN_ROLES
from crm_api.authz.state import settle
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    """Policy reloads are over (and none is due) before the next test empties the tables:
    a reload racing that TRUNCATE can deadlock with it."""
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def _version(engine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT version FROM authz_state"))).scalar_one())


async def _role(client, name):
    roles = (await client.get("/v1/roles", params={"limit": 200})).json()["data"]
    return next(r for r in roles if r["name"] == name)


async def _grant(client, role, **body):
    response = await client.post(f"/v1/roles/{role['id']}/grants", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def test_outsiders_cannot_read_or_edit_roles(client, client_for, engine):
    unit = await make_org_unit(engine)
    rep = await make_user(engine, roles=("sales_rep",), org_unit=unit)
    problem(await (await client_for(rep)).get("/v1/roles"), 403, "permission_denied")
    executive = await make_user(engine, roles=("executive",), org_unit=unit)
    as_exec = await client_for(executive)
    listed = await as_exec.get("/v1/roles")
    assert listed.status_code == 200
    admin = next(r for r in listed.json()["data"] if r["name"] == "admin")
    problem(await as_exec.post("/v1/roles", json={"name": "sneaky"}), 403)
    problem(
        await as_exec.post(
            f"/v1/roles/{admin['id']}/grants", json={"resource": "*", "action": "*", "scope": "all"}
        ),
        403,
    )


async def test_create_update_delete_role(client, engine):
    created = await client.post("/v1/roles", json={"name": "key_account", "description": "KA"})
    assert created.status_code == 201, created.text
    role = created.json()
    assert role["builtin"] is False and created.headers["location"] == f"/v1/roles/{role['id']}"
    problem(await client.post("/v1/roles", json={"name": "key_account"}), 409, "role_exists")
    for bad in ("Key", "k", "1abc", "a-b", "x" * 65):
        problem(await client.post("/v1/roles", json={"name": bad}), 422)
    problem(await client.post("/v1/roles", json={"name": "ok_name", "builtin": True}), 422)
    patched = await client.patch(
        f"/v1/roles/{role['id']}", json={"description": "Top 50"}, headers={"If-Match": '"1"'}
    )
    assert patched.status_code == 200 and patched.json()["description"] == "Top 50"
    problem(await client.patch(f"/v1/roles/{role['id']}", json={"name": "renamed"}), 422)
    builtin = await client.get("/v1/roles", params={"builtin": "true"})
    assert len(builtin.json()["data"]) == len(BUILTIN_ROLES)
    assert (await client.delete(f"/v1/roles/{role['id']}")).status_code == 204
    problem(await client.get(f"/v1/roles/{role['id']}"), 404, "role_not_found")
    assert await count_rows(engine, "audit_events", "resource_type = 'roles'") == 3


async def test_builtin_and_held_roles_cannot_be_deleted(client, engine):
    sales_rep = await _role(client, "sales_rep")
    problem(await client.delete(f"/v1/roles/{sales_rep['id']}"), 409, "role_builtin")
    role = (await client.post("/v1/roles", json={"name": "temp"})).json()
    await _grant(client, role, resource="customers", action="read", scope="own")
    await make_user(engine, roles=("temp",))
    body = problem(await client.delete(f"/v1/roles/{role['id']}"), 409, "role_in_use")
    assert body["holders"] == 1
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM authz_rules WHERE ptype = 'g' AND v1 = 'temp'"))
    assert (await client.delete(f"/v1/roles/{role['id']}")).status_code == 204
    assert await count_rows(engine, "authz_rules", "v0 = 'temp'") == 0


async def test_grant_validation_writes_nothing(client, engine):
    role = (await client.post("/v1/roles", json={"name": "checker"})).json()
    rules = await count_rows(engine, "authz_rules")
    version = await _version(engine)
    url = f"/v1/roles/{role['id']}/grants"
    cases = [
        ({"resource": "spaceships", "action": "read", "scope": "all"}, "unknown_resource"),
        ({"resource": "customers", "action": "fly", "scope": "all"}, "unknown_action"),
        ({"resource": "customers", "action": "read", "scope": "galaxy"}, "validation_error"),
        ({"resource": "customers", "action": "read", "scope": "custom"}, "validation_error"),
        (
            {
                "resource": "customers",
                "action": "read",
                "scope": "own",
                "org_unit_ids": [str(uuid.uuid4())],
            },
            "validation_error",
        ),
        (
            {
                "resource": "customers",
                "action": "read",
                "scope": "custom",
                "org_unit_ids": [str(uuid.uuid4())],
            },
            "invalid_org_unit",
        ),
        (
            {"resource": "customers", "action": "read", "scope": "all", "role": "admin"},
            "validation_error",
        ),
    ]
    for body, code in cases:
        problem(await client.post(url, json=body), 422, code)
    problem(
        await client.post(
            f"/v1/roles/{uuid.uuid4()}/grants",
            json={"resource": "customers", "action": "read", "scope": "all"},
        ),
        404,
        "role_not_found",
    )
    await _grant(client, role, resource="customers", action="read", scope="all")
    problem(
        await client.post(url, json={"resource": "customers", "action": "read", "scope": "all"}),
        409,
        "grant_exists",
    )
    assert await count_rows(engine, "authz_rules") == rules + 1
    assert await _version(engine) == version + 1
    listed = (await client.get(url)).json()
    assert [(g["resource"], g["action"], g["scope"]) for g in listed["data"]] == [
        ("customers", "read", "all")
    ]


async def test_grants_take_effect_and_can_be_withdrawn(client, client_for, app, engine):
    unit = await make_org_unit(engine)
    other_unit = await make_org_unit(engine, "Other")
    owner = await make_user(engine, org_unit=unit)
    stranger = await make_user(engine, org_unit=other_unit)
    await create_customer(client, owner, name="Ours")
    await create_customer(client, stranger, name="Theirs")
    role = (await client.post("/v1/roles", json={"name": "auditor"})).json()
    user = await make_user(engine, roles=("auditor",), org_unit=unit)
    as_user = await client_for(user)
    problem(await as_user.get("/v1/customers"), 403, "permission_denied")
    grant = await _grant(
        client,
        role,
        resource="customers",
        action="read",
        scope="custom",
        org_unit_ids=[str(unit["id"])],
    )
    assert grant["org_unit_ids"] == [str(unit["id"])]
    await app.state.policy.refresh_if_changed(engine)
    seen = (await as_user.get("/v1/customers")).json()["data"]
    assert [c["name"] for c in seen] == ["Ours"]
    problem(await as_user.post("/v1/customers", json={"name": "X"}), 403)
    removed = await client.delete(f"/v1/roles/{role['id']}/grants/{grant['id']}")
    assert removed.status_code == 204
    await app.state.policy.refresh_if_changed(engine)
    problem(await as_user.get("/v1/customers"), 403, "permission_denied")
    problem(
        await client.delete(f"/v1/roles/{role['id']}/grants/{grant['id']}"), 404, "grant_not_found"
    )
    events = await count_rows(
        engine, "audit_events", "resource_type = 'roles' AND action LIKE 'grant_%'"
    )
    assert events == 2


async def test_builtin_grants_are_editable_but_admin_keeps_everything(
    client, client_for, app, engine
):
    unit = await make_org_unit(engine)
    rep = await make_user(engine, roles=("sales_rep",), org_unit=unit)
    as_rep = await client_for(rep)
    assert (await as_rep.get("/v1/customers")).status_code == 200
    sales_rep = await _role(client, "sales_rep")
    grants = (
        await client.get(
            f"/v1/roles/{sales_rep['id']}/grants", params={"resource": "customers", "limit": 200}
        )
    ).json()["data"]
    read = next(g for g in grants if g["action"] == "read")
    assert (
        await client.delete(f"/v1/roles/{sales_rep['id']}/grants/{read['id']}")
    ).status_code == 204
    await app.state.policy.refresh_if_changed(engine)
    problem(await as_rep.get("/v1/customers"), 403)
    admin = await _role(client, "admin")
    full = (await client.get(f"/v1/roles/{admin['id']}/grants")).json()["data"]
    assert [(g["resource"], g["action"], g["scope"]) for g in full] == [("*", "*", "all")]
    problem(
        await client.delete(f"/v1/roles/{admin['id']}/grants/{full[0]['id']}"),
        409,
        "grant_protected",
    )
    # grants on other roles cannot be removed through the wrong role
    await client.post(
        f"/v1/roles/{admin['id']}/grants",
        json={"resource": "customers", "action": "export", "scope": "own"},
    )
    problem(
        await client.delete(f"/v1/roles/{sales_rep['id']}/grants/{full[0]['id']}"),
        404,
        "grant_not_found",
    )


async def test_demo_seed_roles_match_role_assignments(
    app, client, engine, database_url, anon_client
):
    from crm_api.seed import DEMO_PASSWORD, seed_demo

    created = await seed_demo(database_url, customers=5)
    assert created["users"] == 8 and created["customers"] == 5
    orphans = await count_rows(
        engine, "authz_rules", "ptype = 'g' AND v1 NOT IN (SELECT name FROM roles)"
    )
    assert orphans == 0
    await app.state.policy.refresh_if_changed(engine)
    token = await anon_client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": "manager@demo.crm", "password": DEMO_PASSWORD},
    )
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    me = (await anon_client.get("/v1/me", headers=headers)).json()
    assert me["roles"] == ["sales_manager"]
    users = (await client.get("/v1/users", params={"role": "sales_rep"})).json()["data"]
    assert [u["email"] for u in users] == ["rep@demo.crm"]
