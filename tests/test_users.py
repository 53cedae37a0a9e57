"""Users: scoped lists, creation rules (unique e-mail, password policy, roles), reporting
lines, and deactivation that ends every session at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
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


PASSWORD = "correct-horse-42"


async def _create(client, **fields):
    body = {"email": f"u-{uuid.uuid4().hex[:8]}@example.com", "display_name": "U", **fields}
    response = await client.post("/v1/users", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def _scalar(engine, sql, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def test_outsiders_see_nothing(client, client_for, engine):
    mine = await make_org_unit(engine, "Mine")
    other = await make_org_unit(engine, "Other")
    rep = await make_user(engine, roles=("sales_rep",), org_unit=mine)
    colleague = await make_user(engine, roles=("sales_rep",), org_unit=mine)
    stranger = await make_user(engine, roles=("sales_rep",), org_unit=other)
    staff = await make_user(engine, roles=("staff",), org_unit=mine)
    problem(await (await client_for(staff)).get("/v1/users"), 403, "permission_denied")
    as_rep = await client_for(rep)
    listed = (await as_rep.get("/v1/users")).json()["data"]
    assert {u["id"] for u in listed} == {str(rep["id"]), str(colleague["id"]), str(staff["id"])}
    problem(await as_rep.get(f"/v1/users/{stranger['id']}"), 404, "user_not_found")
    problem(
        await as_rep.post("/v1/users", json={"email": "x@example.com", "display_name": "X"}), 403
    )
    problem(await as_rep.post(f"/v1/users/{colleague['id']}/deactivate"), 403)


async def test_create_get_and_log_in(client, engine, anon_client):
    unit = await make_org_unit(engine)
    created = await _create(
        client,
        email="Li.Na@Example.com",
        display_name="李娜 Li Na",
        org_unit_id=str(unit["id"]),
        roles=["sales_rep", "marketer"],
        password=PASSWORD,
        phone="+86 138 0013 8000",
    )
    assert created["roles"] == ["marketer", "sales_rep"] and created["kind"] == "person"
    assert "password_hash" not in created and "password" not in created
    got = await client.get(f"/v1/users/{created['id']}")
    assert got.status_code == 200 and got.headers["etag"] == '"1"'
    assert got.json() == created
    stored = await _scalar(
        engine, "SELECT password_hash FROM users WHERE id = :id", id=created["id"]
    )
    assert stored.startswith("$argon2id$")
    assert (
        await _scalar(engine, "SELECT manager_path FROM users WHERE id = :id", id=created["id"])
        == f"/{created['id']}/"
    )
    token = await anon_client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": "li.na@example.com", "password": PASSWORD},
    )
    assert token.status_code == 200, token.text
    me = await anon_client.get(
        "/v1/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )
    assert me.json()["roles"] == ["marketer", "sales_rep"]
    event = await _scalar(
        engine, "SELECT changes::text FROM audit_events WHERE resource_id = :id", id=created["id"]
    )
    assert "argon2" not in event and '"password": {"after": "***"' in event


async def test_bad_input_is_refused_and_nothing_written(client, engine):
    await _create(client, email="taken@example.com")
    users_before = await count_rows(engine, "users")
    rules_before = await count_rows(engine, "authz_rules")
    problem(
        await client.post("/v1/users", json={"email": "TAKEN@example.com", "display_name": "X"}),
        409,
        "email_taken",
    )
    weak = problem(
        await client.post(
            "/v1/users",
            json={"email": "zhang@example.com", "display_name": "Z", "password": "zhang"},
        ),
        422,
        "weak_password",
    )
    assert {e["message"] for e in weak["errors"]} == {
        "must be at least 10 characters",
        "must contain a letter and a digit",
        "must not contain the e-mail name",
    }
    problem(
        await client.post(
            "/v1/users", json={"email": "a@example.com", "display_name": "A", "roles": ["wizard"]}
        ),
        422,
        "unknown_role",
    )
    problem(
        await client.post(
            "/v1/users", json={"email": "a@example.com", "display_name": "A", "roles": ["Bad Name"]}
        ),
        422,
    )
    problem(
        await client.post(
            "/v1/users",
            json={"email": "a@example.com", "display_name": "A", "org_unit_id": str(uuid.uuid4())},
        ),
        422,
        "invalid_org_unit",
    )
    problem(
        await client.post(
            "/v1/users",
            json={"email": "a@example.com", "display_name": "A", "manager_id": str(uuid.uuid4())},
        ),
        422,
        "invalid_manager",
    )
    problem(
        await client.post("/v1/users", json={"email": "not-an-email", "display_name": "A"}), 422
    )
    problem(
        await client.post(
            "/v1/users", json={"email": "a@example.com", "display_name": "A", "password_hash": "x"}
        ),
        422,
        "validation_error",
    )
    problem(
        await client.post(
            "/v1/users", json={"email": "a@example.com", "display_name": "A", "kind": "service"}
        ),
        422,
        "validation_error",
    )
    assert await count_rows(engine, "users") == users_before
    assert await count_rows(engine, "authz_rules") == rules_before


async def test_list_filters_and_service_accounts(client, engine):
    unit = await make_org_unit(engine)
    rep = await _create(
        client, display_name="Rep Zhang", org_unit_id=str(unit["id"]), roles=["sales_rep"]
    )
    gone = await _create(client, display_name="Gone Wang", roles=["sales_rep"])
    await client.post(f"/v1/users/{gone['id']}/deactivate")
    service_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (id, email, display_name, manager_path, kind, active, version) "
                "VALUES (:id, :email, 'Storefront', :path, 'service', true, 1)"
            ),
            {
                "id": service_id,
                "email": f"client-{service_id}@clients.invalid",
                "path": f"/{service_id}/",
            },
        )
        await conn.execute(
            text(
                "INSERT INTO authz_rules (id, ptype, v0, v1, v2, v3, v4, v5) VALUES "
                "(gen_random_uuid(), 'g', :sub, 'partner', '', '', '', '')"
            ),
            {"sub": f"client:{service_id}"},
        )

    async def names(**params):
        response = await client.get("/v1/users", params=params)
        assert response.status_code == 200, response.text
        return sorted(u["display_name"] for u in response.json()["data"])

    assert "Storefront" not in await names()
    assert await names(org_unit_id=str(unit["id"])) == ["Rep Zhang"]
    assert await names(role="sales_rep") == ["Gone Wang", "Rep Zhang"]
    assert await names(role="sales_rep", active="true") == ["Rep Zhang"]
    assert await names(q="zhang") == ["Rep Zhang"]
    service = (await client.get("/v1/users", params={"kind": "service"})).json()["data"]
    assert [(u["display_name"], u["roles"]) for u in service] == [("Storefront", ["partner"])]
    problem(
        await client.patch(f"/v1/users/{service_id}", json={"display_name": "X"}),
        409,
        "service_account",
    )
    page = (await client.get("/v1/users", params={"limit": 1, "sort": "email"})).json()
    assert page["has_more"] and page["next_cursor"]
    assert rep["id"]


async def test_reporting_lines_and_cycles(client, client_for, engine):
    boss = await _create(client, display_name="Boss")
    lead = await _create(client, display_name="Lead", manager_id=boss["id"])
    rep = await _create(client, display_name="Rep", manager_id=lead["id"])
    other = await _create(client, display_name="Other")
    path = "SELECT manager_path FROM users WHERE id = :id"
    assert await _scalar(engine, path, id=rep["id"]) == f"/{boss['id']}/{lead['id']}/{rep['id']}/"
    for bad in (lead["id"], rep["id"]):
        problem(
            await client.patch(f"/v1/users/{lead['id']}", json={"manager_id": bad}),
            409,
            "invalid_manager",
        )
    problem(
        await client.patch(f"/v1/users/{boss['id']}", json={"manager_id": rep["id"]}),
        409,
        "invalid_manager",
    )
    # the boss sees their whole reporting line's customers through a subordinates grant
    role = (await client.post("/v1/roles", json={"name": "line_manager"})).json()
    await client.post(
        f"/v1/roles/{role['id']}/grants",
        json={"resource": "customers", "action": "read", "scope": "subordinates"},
    )
    await client.patch(f"/v1/users/{boss['id']}", json={"roles": ["line_manager"]})
    await create_customer(client, {"id": rep["id"]}, name="Rep's customer")
    as_boss = await client_for(boss)

    async def visible():
        return [c["name"] for c in (await as_boss.get("/v1/customers")).json()["data"]]

    assert await visible() == ["Rep's customer"]
    moved = await client.patch(
        f"/v1/users/{lead['id']}", json={"manager_id": other["id"]}, headers={"If-Match": '"1"'}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["manager_id"] == other["id"]
    assert await _scalar(engine, path, id=rep["id"]) == (
        f"/{other['id']}/{lead['id']}/{rep['id']}/"
    )
    assert await visible() == []
    top = await client.patch(f"/v1/users/{lead['id']}", json={"manager_id": None})
    assert top.status_code == 200
    assert await _scalar(engine, path, id=rep["id"]) == f"/{lead['id']}/{rep['id']}/"
    stale = await client.patch(
        f"/v1/users/{lead['id']}", json={"display_name": "L"}, headers={"If-Match": '"1"'}
    )
    problem(stale, 412, "version_mismatch")


async def test_roles_replace_and_need_assign(client, client_for, engine):
    unit = await make_org_unit(engine)
    user = await _create(client, org_unit_id=str(unit["id"]), roles=["staff"])
    changed = await client.patch(f"/v1/users/{user['id']}", json={"roles": ["sales_rep"]})
    assert changed.status_code == 200 and changed.json()["roles"] == ["sales_rep"]
    assert await count_rows(engine, "authz_rules", f"ptype = 'g' AND v0 = 'user:{user['id']}'") == 1
    role = (await client.post("/v1/roles", json={"name": "hr"})).json()
    for action in ("read", "update"):
        await client.post(
            f"/v1/roles/{role['id']}/grants",
            json={"resource": "users", "action": action, "scope": "all"},
        )
    hr = await make_user(engine, roles=("hr",), org_unit=unit)
    as_hr = await client_for(hr)
    problem(
        await as_hr.patch(f"/v1/users/{user['id']}", json={"roles": ["admin"]}),
        403,
        "assign_not_allowed",
    )
    ok = await as_hr.patch(f"/v1/users/{user['id']}", json={"display_name": "Renamed"})
    assert ok.status_code == 200 and ok.json()["roles"] == ["sales_rep"]


async def test_deactivation_ends_sessions_at_once(client, client_for, engine):
    unit = await make_org_unit(engine)
    user = await _create(client, org_unit_id=str(unit["id"]), roles=["sales_rep"])
    as_user = await client_for({"id": uuid.UUID(user["id"])})
    assert (await as_user.get("/v1/me")).status_code == 200
    deactivated = await client.post(f"/v1/users/{user['id']}/deactivate")
    assert deactivated.status_code == 200 and deactivated.json()["active"] is False
    problem(await as_user.get("/v1/me"), 401, "invalid_token")
    problem(await as_user.get("/v1/customers"), 401)
    activated = await client.post(f"/v1/users/{user['id']}/activate")
    assert activated.status_code == 200 and activated.json()["active"] is True
    fresh = await client_for({"id": uuid.UUID(user["id"])})
    assert (await fresh.get("/v1/me")).status_code == 200
    me = (await client.get("/v1/me")).json()
    problem(await client.post(f"/v1/users/{me['id']}/deactivate"), 409, "cannot_deactivate_self")
    assert await count_rows(engine, "audit_events", "action IN ('deactivate', 'activate')") == 2


async def test_password_change_revokes_tokens_and_obeys_policy(client, client_for, engine):
    user = await _create(client, email="wang@example.com", password=PASSWORD)
    as_user = await client_for({"id": uuid.UUID(user["id"])})
    assert (await as_user.get("/v1/me")).status_code == 200
    problem(
        await client.patch(f"/v1/users/{user['id']}", json={"password": "wang-12345678"}),
        422,
        "weak_password",
    )
    problem(await client.patch(f"/v1/users/{user['id']}", json={"password": None}), 422)
    changed = await client.patch(f"/v1/users/{user['id']}", json={"password": "new-secret-99"})
    assert changed.status_code == 200, changed.text
    problem(await as_user.get("/v1/me"), 401, "invalid_token")
    event = await _scalar(
        engine,
        "SELECT changes::text FROM audit_events WHERE action = 'update' AND resource_id = :id",
        id=user["id"],
    )
    assert '"password"' in event and "new-secret" not in event


async def test_scoped_writer_cannot_place_users_outside_scope(client, client_for, engine):
    root = await make_org_unit(engine, "Root", kind="group")
    mine = await make_org_unit(engine, "Mine", parent=root)
    other = await make_org_unit(engine, "Other", parent=root)
    role = (await client.post("/v1/roles", json={"name": "branch_hr"})).json()
    for action in ("read", "create", "update"):
        await client.post(
            f"/v1/roles/{role['id']}/grants",
            json={"resource": "users", "action": action, "scope": "org_subtree"},
        )
    hr = await make_user(engine, roles=("branch_hr",), org_unit=mine)
    as_hr = await client_for(hr)
    problem(
        await as_hr.post(
            "/v1/users",
            json={"email": "x@example.com", "display_name": "X", "org_unit_id": str(other["id"])},
        ),
        422,
        "invalid_org_unit",
    )
    created = await as_hr.post(
        "/v1/users",
        json={"email": "y@example.com", "display_name": "Y", "org_unit_id": str(mine["id"])},
    )
    assert created.status_code == 201, created.text
    problem(
        await as_hr.patch(
            f"/v1/users/{created.json()['id']}", json={"org_unit_id": str(other["id"])}
        ),
        422,
        "invalid_org_unit",
    )
