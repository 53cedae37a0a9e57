"""No escalation through delegation (issue #7, item 2): every path that confers
permissions — user roles, role grants, API client roles, personal access tokens — gives only
what the caller holds, over no wider a scope, and nobody widens their own access."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from crm_api.authz.delegation import covers
from crm_api.authz.state import settle
from crm_api.authz.types import Principal, PrincipalKind, Scope, ScopeKind
from factories.api_clients import create_api_client
from factories.identity import make_org_unit, make_user


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def make_role(engine, name: str, *grants: tuple) -> None:
    """A custom role with ``grants`` ``(resource, action, scope[, units])``."""
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
                " VALUES (gen_random_uuid(), 'p', :role, :res, :act, :scope, :units, '')"
            ),
            [
                {
                    "role": name,
                    "res": g[0],
                    "act": g[1],
                    "scope": g[2],
                    "units": "|".join(str(u) for u in (g[3] if len(g) > 3 else ())),
                }
                for g in grants
            ],
        )
        await conn.execute(text("UPDATE authz_state SET version = version + 1"))


async def roles_in_db(engine, subject: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT v1 FROM authz_rules WHERE ptype = 'g' AND v0 = :s ORDER BY v1"),
            {"s": subject},
        )
        return list(rows.scalars())


async def policy_version(engine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT version FROM authz_state"))).scalar_one())


async def role_id(client, name: str) -> str:
    roles = (await client.get("/v1/roles", params={"limit": 200})).json()["data"]
    return str(next(r["id"] for r in roles if r["name"] == name))


#: The issue's custom role: users read/update/assign over org_subtree.
USERS_ADMIN = [("users", a, "org_subtree") for a in ("read", "update", "assign")]
USERS_ADMIN_CREATE = [*USERS_ADMIN, ("users", "create", "org_subtree")]


@pytest.fixture
async def tree(engine):
    root = await make_org_unit(engine, "Root", kind="group")
    east = await make_org_unit(engine, "East", parent=root)
    east_team = await make_org_unit(engine, "East team", parent=east)
    west = await make_org_unit(engine, "West", parent=root)
    return {"root": root, "east": east, "east_team": east_team, "west": west}


# --- the scope order -----------------------------------------------------------------------
def test_scope_order():
    import uuid

    me = Principal(
        PrincipalKind.user,
        uuid.uuid4(),
        "me",
        frozenset(),
        org_unit_id=uuid.uuid4(),
        org_path="/a/",
    )
    subtree = Scope(frozenset({ScopeKind.org_subtree}))
    for kind in (ScopeKind.own, ScopeKind.subordinates, ScopeKind.org_unit, ScopeKind.org_subtree):
        assert covers(subtree, kind, (), me)
    assert not covers(subtree, ScopeKind.all, (), me)
    assert not covers(Scope(frozenset({ScopeKind.own})), ScopeKind.subordinates, (), me)
    assert not covers(Scope(frozenset({ScopeKind.org_unit})), ScopeKind.org_subtree, (), me)
    inside, outside = uuid.uuid4(), uuid.uuid4()
    assert covers(subtree, ScopeKind.custom, {inside}, me, {inside})
    assert not covers(subtree, ScopeKind.custom, {inside, outside}, me, {inside})
    assert covers(Scope(frozenset({ScopeKind.org_unit})), ScopeKind.custom, {me.org_unit_id}, me)
    custom = Scope(frozenset({ScopeKind.custom}), frozenset({inside}))
    assert covers(custom, ScopeKind.custom, {inside}, me)
    assert not covers(custom, ScopeKind.custom, {outside}, me)
    assert not covers(custom, ScopeKind.own, (), me)  # a unit list is not anchored on anyone
    assert covers(Scope(frozenset({ScopeKind.all})), ScopeKind.custom, {outside}, me)


# --- user roles ----------------------------------------------------------------------------
async def test_issue_reproduction_self_escalation_to_admin(client, client_for, engine, tree):
    """The issue's exact steps: users read/update/assign over org_subtree, then
    ``PATCH /v1/users/<self> {"roles": ["team_lead", "admin"]}``."""
    await make_role(engine, "team_lead", *USERS_ADMIN)
    lead = await make_user(engine, roles=("team_lead",), org_unit=tree["east"])
    as_lead = await client_for(lead)
    version, events = await policy_version(engine), await count_rows(engine, "audit_events")
    body = problem(
        await as_lead.patch(f"/v1/users/{lead['id']}", json={"roles": ["team_lead", "admin"]}),
        403,
        "role_not_grantable",
    )
    assert body["refused"] == ["admin"]
    assert await roles_in_db(engine, f"user:{lead['id']}") == ["team_lead"]
    assert await policy_version(engine) == version
    assert await count_rows(engine, "audit_events") == events
    problem(await as_lead.get("/v1/roles"), 403, "permission_denied")  # still not admin


async def test_nobody_adds_roles_to_themself(client_for, engine, tree):
    """Even a role the caller could give others: adding to yourself is refused."""
    await make_role(engine, "team_lead", *USERS_ADMIN, ("customers", "read", "org_subtree"))
    await make_role(engine, "reader", ("customers", "read", "org_unit"))
    lead = await make_user(engine, roles=("team_lead",), org_unit=tree["east"])
    as_lead = await client_for(lead)
    body = problem(
        await as_lead.patch(f"/v1/users/{lead['id']}", json={"roles": ["team_lead", "reader"]}),
        403,
        "role_not_grantable",
    )
    assert body["reason"] == "self"
    other = await make_user(engine, roles=(), org_unit=tree["east_team"])
    ok = await as_lead.patch(f"/v1/users/{other['id']}", json={"roles": ["reader"]})
    assert ok.status_code == 200, ok.text
    # Dropping one's own role narrows: allowed.
    await make_role(engine, "extra", ("customers", "read", "own"))
    both = await make_user(engine, roles=("team_lead", "extra"), org_unit=tree["east"])
    as_both = await client_for(both)
    dropped = await as_both.patch(f"/v1/users/{both['id']}", json={"roles": ["team_lead"]})
    assert dropped.status_code == 200, dropped.text


async def test_conferring_a_wider_scope_is_refused(client_for, engine, tree):
    await make_role(engine, "team_lead", *USERS_ADMIN_CREATE, ("customers", "read", "org_subtree"))
    await make_role(engine, "all_reader", ("customers", "read", "all"))
    await make_role(engine, "exporter", ("customers", "export", "own"))
    await make_role(engine, "west_reader", ("customers", "read", "custom", [tree["west"]["id"]]))
    lead = await make_user(engine, roles=("team_lead",), org_unit=tree["east"])
    target = await make_user(engine, roles=(), org_unit=tree["east_team"])
    as_lead = await client_for(lead)
    url = f"/v1/users/{target['id']}"
    for role, why in (
        ("all_reader", "read on customers over all"),
        ("exporter", "export on customers over own"),
        ("west_reader", "read on customers over custom"),
    ):
        body = problem(await as_lead.patch(url, json={"roles": [role]}), 403, "role_not_grantable")
        assert body["refused"] == [role] and why in body["detail"]
    # at creation too, and nothing is written
    users = await count_rows(engine, "users")
    problem(
        await as_lead.post(
            "/v1/users",
            json={
                "email": "new@example.com",
                "display_name": "New",
                "org_unit_id": str(tree["east"]["id"]),
                "roles": ["all_reader"],
            },
        ),
        403,
        "role_not_grantable",
    )
    assert await count_rows(engine, "users") == users
    assert await roles_in_db(engine, f"user:{target['id']}") == []


async def test_taking_a_role_needs_the_authority_to_give_it(client_for, engine, tree):
    """A holder of users:assign cannot demote an administrator in its subtree."""
    await make_role(engine, "team_lead", *USERS_ADMIN)
    lead = await make_user(engine, roles=("team_lead",), org_unit=tree["east"])
    admin = await make_user(engine, roles=("admin",), org_unit=tree["east_team"])
    await make_user(engine, roles=("admin",), org_unit=tree["root"])  # not the last admin
    problem(
        await (await client_for(lead)).patch(f"/v1/users/{admin['id']}", json={"roles": []}),
        403,
        "role_not_grantable",
    )
    assert await roles_in_db(engine, f"user:{admin['id']}") == ["admin"]


async def test_legitimate_delegation_still_works(client_for, engine, tree):
    """A branch manager gives a subordinate the narrower built-in sales_rep role, and takes
    it back; a user outside the manager's reach cannot be touched."""
    await make_role(
        engine,
        "branch_lead",
        *USERS_ADMIN_CREATE,
        *[
            (r, a, "org_subtree")
            for r in ("customers", "contacts", "orders")
            for a in ("read", "create", "update", "delete")
        ],
        ("audit_events", "read", "org_subtree"),
        ("org_units", "read", "all"),
        # what sales_rep holds beyond the business records
        ("products", "read", "all"),
        ("system_settings", "read", "all"),
    )
    manager = await make_user(engine, roles=("branch_lead",), org_unit=tree["east"])
    rep = await make_user(engine, roles=(), org_unit=tree["east_team"], manager=manager)
    as_manager = await client_for(manager)
    given = await as_manager.patch(f"/v1/users/{rep['id']}", json={"roles": ["sales_rep"]})
    assert given.status_code == 200, given.text
    assert given.json()["roles"] == ["sales_rep"]
    assert await roles_in_db(engine, f"user:{rep['id']}") == ["sales_rep"]
    created = await as_manager.post(
        "/v1/users",
        json={
            "email": "rep2@example.com",
            "display_name": "Rep 2",
            "org_unit_id": str(tree["east_team"]["id"]),
            "roles": ["sales_rep"],
        },
    )
    assert created.status_code == 201, created.text
    taken = await as_manager.patch(f"/v1/users/{rep['id']}", json={"roles": []})
    assert taken.status_code == 200, taken.text
    outsider = await make_user(engine, roles=(), org_unit=tree["west"])
    problem(
        await as_manager.patch(f"/v1/users/{outsider['id']}", json={"roles": ["sales_rep"]}),
        404,
        "user_not_found",
    )


async def test_assign_scope_narrower_than_update_scope(client_for, engine, tree):
    """Roles change only for users inside the caller's ``users:assign`` scope."""
    await make_role(
        engine,
        "hr",
        ("users", "read", "all"),
        ("users", "update", "all"),
        ("users", "assign", "org_unit"),
        ("customers", "read", "all"),
    )
    await make_role(engine, "reader", ("customers", "read", "own"))
    hr = await make_user(engine, roles=("hr",), org_unit=tree["east"])
    far = await make_user(engine, roles=(), org_unit=tree["west"])
    near = await make_user(engine, roles=(), org_unit=tree["east"])
    as_hr = await client_for(hr)
    problem(
        await as_hr.patch(f"/v1/users/{far['id']}", json={"roles": ["reader"]}),
        403,
        "assign_not_allowed",
    )
    ok = await as_hr.patch(f"/v1/users/{near['id']}", json={"roles": ["reader"]})
    assert ok.status_code == 200, ok.text


async def test_admin_role_only_from_an_admin(client, client_for, engine, tree):
    """Holding everything the admin role grants but ``*`` is not enough; an admin can."""
    await make_role(engine, "team_lead", *USERS_ADMIN)
    target = await make_user(engine, roles=(), org_unit=tree["east_team"])
    lead = await make_user(engine, roles=("team_lead", "executive"), org_unit=tree["east"])
    problem(
        await (await client_for(lead)).patch(
            f"/v1/users/{target['id']}", json={"roles": ["admin"]}
        ),
        403,
        "role_not_grantable",
    )
    ok = await client.patch(f"/v1/users/{target['id']}", json={"roles": ["admin"]})
    assert ok.status_code == 200, ok.text


# --- role grants ---------------------------------------------------------------------------
async def test_grant_edits_give_only_what_the_editor_holds(client, client_for, engine, tree):
    await make_role(
        engine,
        "role_editor",
        ("roles", "read", "all"),
        ("roles", "update", "all"),
        ("customers", "read", "org_subtree"),
    )
    await make_role(engine, "target", ("customers", "read", "own"))
    editor = await make_user(engine, roles=("role_editor",), org_unit=tree["east"])
    as_editor = await client_for(editor)
    url = f"/v1/roles/{await role_id(client, 'target')}/grants"
    before = await count_rows(engine, "authz_rules", "ptype = 'p' AND v0 = 'target'")
    for grant in (
        {"resource": "customers", "action": "read", "scope": "all"},
        {"resource": "customers", "action": "update", "scope": "own"},
        {"resource": "*", "action": "read", "scope": "own"},
        {"resource": "customers", "action": "*", "scope": "own"},
        {
            "resource": "customers",
            "action": "read",
            "scope": "custom",
            "org_unit_ids": [str(tree["west"]["id"])],
        },
    ):
        body = problem(await as_editor.post(url, json=grant), 403, "grant_not_allowed")
        assert body["reason"] == "not_held", grant
    assert await count_rows(engine, "authz_rules", "ptype = 'p' AND v0 = 'target'") == before
    for grant in (
        {"resource": "customers", "action": "read", "scope": "org_unit"},
        {
            "resource": "customers",
            "action": "read",
            "scope": "custom",
            "org_unit_ids": [str(tree["east_team"]["id"])],
        },
    ):
        response = await as_editor.post(url, json=grant)
        assert response.status_code == 201, response.text


async def test_grant_edits_cannot_widen_a_role_the_editor_holds(client, client_for, engine, tree):
    await make_role(
        engine,
        "role_editor",
        ("roles", "read", "all"),
        ("roles", "update", "all"),
        ("customers", "read", "all"),
    )
    editor = await make_user(engine, roles=("role_editor",), org_unit=tree["east"])
    as_editor = await client_for(editor)
    own_role = await role_id(client, "role_editor")
    body = problem(
        await as_editor.post(
            f"/v1/roles/{own_role}/grants",
            json={"resource": "customers", "action": "read", "scope": "all"},
        ),
        403,
        "grant_not_allowed",
    )
    assert body["reason"] == "self"
    # the admin role is an administrator's to edit, even to withdraw a grant
    admin_role = await role_id(client, "admin")
    extra = (
        await client.post(
            f"/v1/roles/{admin_role}/grants",
            json={"resource": "customers", "action": "read", "scope": "all"},
        )
    ).json()
    problem(
        await as_editor.delete(f"/v1/roles/{admin_role}/grants/{extra['id']}"),
        403,
        "grant_not_allowed",
    )
    assert (await client.delete(f"/v1/roles/{admin_role}/grants/{extra['id']}")).status_code == 204


# --- API clients ---------------------------------------------------------------------------
async def test_api_client_roles_are_checked_grant_by_grant(client, client_for, engine, tree):
    await make_role(
        engine,
        "integrator",
        ("api_clients", "read", "all"),
        ("api_clients", "create", "all"),
        ("api_clients", "update", "all"),
        ("customers", "read", "org_unit"),
    )
    await make_role(engine, "wide_reader", ("customers", "read", "all"))
    await make_role(engine, "own_reader", ("customers", "read", "own"))
    user = await make_user(engine, roles=("integrator",), org_unit=tree["east"])
    as_user = await client_for(user)
    body = problem(
        await as_user.post("/v1/api-clients", json={"name": "x", "roles": ["wide_reader"]}),
        403,
        "role_not_grantable",
    )
    assert body["refused"] == ["wide_reader"]
    assert await count_rows(engine, "api_clients") == 0
    # a role it does not hold, but whose every grant it holds where the client stands (its
    # own unit): allowed; a client placed in West would reach records the caller does not
    problem(
        await as_user.post(
            "/v1/api-clients",
            json={"name": "x", "roles": ["own_reader"], "org_unit_id": str(tree["west"]["id"])},
        ),
        403,
        "role_not_grantable",
    )
    made = await as_user.post(
        "/v1/api-clients",
        json={"name": "x", "roles": ["own_reader"], "org_unit_id": str(tree["east"]["id"])},
    )
    assert made.status_code == 201, made.text
    url = f"/v1/api-clients/{made.json()['id']}"
    problem(await as_user.patch(url, json={"roles": ["wide_reader"]}), 403, "role_not_grantable")
    # a client made by an admin with roles beyond the caller's cannot be stripped by it
    strong = await create_api_client(
        client, name="strong", roles=["wide_reader"], org_unit_id=str(tree["east"]["id"])
    )
    body = problem(
        await as_user.patch(f"/v1/api-clients/{strong['id']}", json={"roles": ["own_reader"]}),
        403,
        "role_not_grantable",
    )
    assert body["refused"] == ["wide_reader"]


async def test_api_client_cannot_widen_itself(client, client_for, engine):
    await make_role(
        engine,
        "client_admin",
        ("api_clients", "read", "all"),
        ("api_clients", "update", "all"),
        ("customers", "read", "all"),
    )
    await make_role(engine, "reader", ("customers", "read", "own"))
    created = await create_api_client(client, name="self", roles=["client_admin"])
    as_itself = await client_for({"id": created["user_id"], "kind": "service"})
    body = problem(
        await as_itself.patch(
            f"/v1/api-clients/{created['id']}", json={"roles": ["client_admin", "reader"]}
        ),
        403,
        "role_not_grantable",
    )
    assert body["reason"] == "self"
    assert await roles_in_db(engine, f"client:{created['user_id']}") == ["client_admin"]


# --- personal access tokens ----------------------------------------------------------------
async def test_personal_access_token_carries_only_held_permissions(client_for, engine, tree):
    rep = await make_user(engine, roles=("sales_rep",), org_unit=tree["east"])
    as_rep = await client_for(rep)
    body = problem(
        await as_rep.post(
            "/v1/me/tokens",
            json={
                "name": "x",
                "permissions": [
                    {"resource": "customers", "action": "read"},
                    {"resource": "customers", "action": "export"},
                ],
            },
        ),
        403,
        "grant_not_allowed",
    )
    assert body["refused"] == ["export on customers"]
    assert body["errors"][0]["field"] == "permissions.1"
    assert await count_rows(engine, "personal_access_tokens") == 0
    ok = await as_rep.post(
        "/v1/me/tokens",
        json={"name": "x", "permissions": [{"resource": "customers", "action": "read"}]},
    )
    assert ok.status_code == 201, ok.text


# --- reporting lines -----------------------------------------------------------------------
async def test_nobody_brings_others_into_their_own_reporting_line(client, client_for, engine, tree):
    """``subordinates`` goes by the reporting line: adopting a report hands the caller that
    user's records, so only someone above (or an administrator) may do it."""
    await make_role(engine, "line_lead", *USERS_ADMIN, ("customers", "read", "subordinates"))
    lead = await make_user(engine, roles=("line_lead",), org_unit=tree["east"])
    sub = await make_user(engine, roles=(), org_unit=tree["east_team"], manager=lead)
    subsub = await make_user(engine, roles=(), org_unit=tree["east_team"], manager=sub)
    stranger = await make_user(engine, roles=(), org_unit=tree["east_team"])
    as_lead = await client_for(lead)
    body = problem(
        await as_lead.patch(f"/v1/users/{stranger['id']}", json={"manager_id": str(sub["id"])}),
        403,
        "grant_not_allowed",
    )
    assert body["reason"] == "self"
    async with engine.connect() as conn:
        assert (
            await conn.execute(
                text("SELECT manager_id FROM users WHERE id = :i"), {"i": stranger["id"]}
            )
        ).scalar() is None
    # moves within the line, and out of it, are fine
    within = await as_lead.patch(f"/v1/users/{subsub['id']}", json={"manager_id": str(lead["id"])})
    assert within.status_code == 200, within.text
    out = await as_lead.patch(f"/v1/users/{subsub['id']}", json={"manager_id": None})
    assert out.status_code == 200, out.text
    # an administrator may
    ok = await client.patch(f"/v1/users/{stranger['id']}", json={"manager_id": str(lead["id"])})
    assert ok.status_code == 200, ok.text


async def test_only_administrators_edit_built_in_roles_grants(client, client_for, engine, tree):
    """A sales manager holding ``roles:update`` could otherwise add what they hold to
    ``sales_rep`` and widen every rep of every team, whoever assigns the role. Built-in
    roles are the product's defaults: an administrator edits them; others make a custom
    role, whose grants the delegation rules alone govern."""
    await make_role(engine, "role_editor", ("roles", "read", "all"), ("roles", "update", "all"))
    manager = await make_user(engine, roles=("sales_manager", "role_editor"), org_unit=tree["east"])
    await make_user(engine, roles=("sales_rep",), org_unit=tree["east_team"])
    as_manager = await client_for(manager)
    grant = {"resource": "customers", "action": "export", "scope": "own"}  # a manager holds it
    before = await count_rows(engine, "authz_rules", "ptype = 'p'")
    version = await policy_version(engine)
    for name in ("sales_rep", "service_agent", "staff", "storefront"):
        body = problem(
            await as_manager.post(f"/v1/roles/{await role_id(client, name)}/grants", json=grant),
            403,
            "grant_not_allowed",
        )
        assert body["reason"] == "builtin_role" and body["refused"] == [name]
    # withdrawing a default is changing it too
    rep_role = await role_id(client, "sales_rep")
    rep_grants = (await client.get(f"/v1/roles/{rep_role}/grants")).json()["data"]
    body = problem(
        await as_manager.delete(f"/v1/roles/{rep_role}/grants/{rep_grants[0]['id']}"),
        403,
        "grant_not_allowed",
    )
    assert body["reason"] == "builtin_role"
    # the admin role keeps its own answer
    body = problem(
        await as_manager.post(f"/v1/roles/{await role_id(client, 'admin')}/grants", json=grant),
        403,
        "grant_not_allowed",
    )
    assert body["reason"] == "admin_role"
    assert await count_rows(engine, "authz_rules", "ptype = 'p'") == before
    assert await policy_version(engine) == version
    # a custom role: the delegation rules alone (the manager holds customers:export)
    await make_role(engine, "east_exporter", ("customers", "read", "own"))
    custom = await role_id(client, "east_exporter")
    added = await as_manager.post(f"/v1/roles/{custom}/grants", json=grant)
    assert added.status_code == 201, added.text
    removed = await as_manager.delete(f"/v1/roles/{custom}/grants/{added.json()['id']}")
    assert removed.status_code == 204, removed.text
    # an administrator edits the defaults, both ways
    added = await client.post(f"/v1/roles/{rep_role}/grants", json=grant)
    assert added.status_code == 201, added.text
    removed = await client.delete(f"/v1/roles/{rep_role}/grants/{added.json()['id']}")
    assert removed.status_code == 204, removed.text
