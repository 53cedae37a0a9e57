"""No escalation by acting on someone stronger (issue #7, item 2, continued): whoever may
edit users, org units or API clients cannot take over, move or switch on a principal that
holds more than they do — setting an administrator's password is logging in as one — nor
move their own position, or bring people and units under it, to widen their own access.
The rule is the delegation module's: everything the target holds must be something the
caller could confer, judged from where the target stands (before and after the change)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from conftest import problem
from crm_api.authz.state import settle
from factories.api_clients import bearer, create_api_client, create_pat
from factories.identity import make_org_unit, make_user
from test_delegation import USERS_ADMIN, make_role, role_id, roles_in_db

PASSWORD = "correct-horse-battery-9"


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


@pytest.fixture
async def tree(engine):
    root = await make_org_unit(engine, "Root", kind="group")
    east = await make_org_unit(engine, "East", parent=root)
    east_team = await make_org_unit(engine, "East team", parent=east)
    west = await make_org_unit(engine, "West", parent=root)
    west_team = await make_org_unit(engine, "West team", parent=west)
    return {
        "root": root,
        "east": east,
        "east_team": east_team,
        "west": west,
        "west_team": west_team,
    }


async def column(engine, table: str, name: str, row_id) -> object:
    async with engine.connect() as conn:
        return (
            await conn.execute(text(f"SELECT {name} FROM {table} WHERE id = :i"), {"i": row_id})
        ).scalar()


def outranks(response, field: str | None = None) -> dict:
    body = problem(response, 403, "grant_not_allowed")
    assert body["reason"] == "target_outranks", body
    if field is not None:
        assert field in body["fields"], body
    return body


# --- (a) acting on a more-privileged user ----------------------------------------------
async def test_nobody_takes_over_an_administrator_in_their_subtree(
    client, client_for, engine, tree
):
    """users read/update/assign over org_subtree, an admin inside that subtree: password,
    e-mail, manager, unit and the active flag are all refused; nothing is written."""
    await make_role(engine, "team_lead", *USERS_ADMIN, ("customers", "read", "org_subtree"))
    lead = await make_user(engine, roles=("team_lead",), org_unit=tree["east"])
    admin = await make_user(engine, roles=("admin",), org_unit=tree["east_team"])
    await make_user(engine, roles=("admin",), org_unit=tree["root"])  # not the last admin
    peer = await make_user(engine, roles=(), org_unit=tree["east_team"])
    peer_boss = await make_user(engine, roles=(), org_unit=tree["east_team"])
    as_lead = await client_for(lead)
    url = f"/v1/users/{admin['id']}"
    version = await column(engine, "users", "version", admin["id"])
    for field, value in (
        ("password", PASSWORD),
        ("email", "mine@example.com"),
        ("manager_id", str(lead["id"])),
        ("org_unit_id", str(tree["east"]["id"])),
    ):
        body = outranks(await as_lead.patch(url, json={field: value}), field)
        assert body["refused"] == ["admin"]
    outranks(await as_lead.post(f"{url}/deactivate"), "active")
    assert await column(engine, "users", "version", admin["id"]) == version
    assert await column(engine, "users", "active", admin["id"]) is True
    # what does not hand over the account stays allowed
    renamed = await as_lead.patch(url, json={"display_name": "Boss", "phone": "+1 555 0100"})
    assert renamed.status_code == 200, renamed.text
    # an inactive administrator cannot be switched back on either
    await client.post(f"{url}/deactivate")
    outranks(await as_lead.post(f"{url}/activate"), "active")
    assert await column(engine, "users", "active", admin["id"]) is False
    # someone holding no more than the lead: all of it is fine
    for field, value in (
        ("password", PASSWORD),
        ("email", "peer@example.com"),
        ("manager_id", str(peer_boss["id"])),
        ("org_unit_id", str(tree["east"]["id"])),
    ):
        ok = await as_lead.patch(f"/v1/users/{peer['id']}", json={field: value})
        assert ok.status_code == 200, (field, ok.text)
    assert (await as_lead.post(f"/v1/users/{peer['id']}/deactivate")).status_code == 200
    # an administrator may do all of it
    assert (await client.patch(url, json={"password": PASSWORD})).status_code == 200
    assert (await client.post(f"{url}/activate")).status_code == 200


async def test_a_target_outranks_by_any_single_grant(client_for, engine, tree):
    """Not only admins: one grant the caller lacks (an action, or a wider scope) is enough,
    and a relative scope is read from where the target stands."""
    await make_role(
        engine,
        "hr",
        ("users", "read", "all"),
        ("users", "update", "all"),
        ("customers", "read", "org_subtree"),
    )
    await make_role(engine, "exporter", ("customers", "export", "own"))
    await make_role(engine, "subtree_reader", ("customers", "read", "org_subtree"))
    hr = await make_user(engine, roles=("hr",), org_unit=tree["east"])
    as_hr = await client_for(hr)
    exporter = await make_user(engine, roles=("exporter",), org_unit=tree["east_team"])
    body = outranks(
        await as_hr.patch(f"/v1/users/{exporter['id']}", json={"password": PASSWORD}), "password"
    )
    assert body["refused"] == ["exporter"]
    assert "export on customers over own" in body["detail"]
    # same role, different places: under the caller's subtree it is within what hr holds,
    # in West it reaches customers hr cannot read
    below = await make_user(engine, roles=("subtree_reader",), org_unit=tree["east_team"])
    beside = await make_user(engine, roles=("subtree_reader",), org_unit=tree["west"])
    ok = await as_hr.patch(f"/v1/users/{below['id']}", json={"password": PASSWORD})
    assert ok.status_code == 200, ok.text
    outranks(await as_hr.patch(f"/v1/users/{beside['id']}", json={"password": PASSWORD}))
    # moving the one below to West would make them reach past hr: judged after the move too
    outranks(
        await as_hr.patch(
            f"/v1/users/{below['id']}", json={"org_unit_id": str(tree["west"]["id"])}
        ),
        "org_unit_id",
    )
    assert await column(engine, "users", "org_unit_id", below["id"]) == tree["east_team"]["id"]


async def test_nobody_moves_themself_up_the_tree(client_for, engine, tree):
    """Your own unit anchors your org scopes: moving yourself to the root would widen
    ``org_subtree`` to everything."""
    await make_role(
        engine,
        "hr",
        ("users", "read", "all"),
        ("users", "update", "all"),
        ("customers", "read", "org_subtree"),
    )
    hr = await make_user(engine, roles=("hr",), org_unit=tree["east"])
    as_hr = await client_for(hr)
    outranks(
        await as_hr.patch(f"/v1/users/{hr['id']}", json={"org_unit_id": str(tree["root"]["id"])}),
        "org_unit_id",
    )
    assert await column(engine, "users", "org_unit_id", hr["id"]) == tree["east"]["id"]
    # down into one's own subtree narrows: fine; so is changing one's own password
    down = await as_hr.patch(
        f"/v1/users/{hr['id']}", json={"org_unit_id": str(tree["east_team"]["id"])}
    )
    assert down.status_code == 200, down.text
    own = await as_hr.patch(f"/v1/users/{hr['id']}", json={"password": PASSWORD})
    assert own.status_code == 200, own.text


async def test_a_narrowed_token_cannot_take_over_its_owner(anon_client, client_for, engine, tree):
    """A personal access token limited to users:read/update would otherwise set its
    owner's password and sign in with everything the owner holds."""
    await make_role(engine, "team_lead", *USERS_ADMIN, ("customers", "read", "org_subtree"))
    lead = await make_user(engine, roles=("team_lead",), org_unit=tree["east"])
    as_lead = await client_for(lead)
    pat = await create_pat(as_lead, ("users", "read"), ("users", "update"))
    headers = bearer(pat["token"])
    hash_before = await column(engine, "users", "password_hash", lead["id"])
    body = outranks(
        await anon_client.patch(
            f"/v1/users/{lead['id']}", json={"password": PASSWORD}, headers=headers
        )
    )
    assert body["refused"] == ["team_lead"]
    assert await column(engine, "users", "password_hash", lead["id"]) == hash_before
    # signed in properly, the owner may
    ok = await as_lead.patch(f"/v1/users/{lead['id']}", json={"password": PASSWORD})
    assert ok.status_code == 200, ok.text


# --- (b) org-unit moves ------------------------------------------------------------------
async def test_nobody_moves_units_under_themself(client, client_for, engine, tree):
    """A unit coming into the caller's subtree from outside hands the caller its people and
    records (every ``org_subtree`` grant follows the tree)."""
    await make_role(
        engine,
        "reorg",
        ("org_units", "read", "all"),
        (
            "org_units",
            "update",
            "custom",
            [tree["east"]["id"], tree["west"]["id"], tree["west_team"]["id"], tree["root"]["id"]],
        ),
        ("customers", "read", "org_subtree"),
    )
    planner = await make_user(engine, roles=("reorg",), org_unit=tree["east"])
    as_planner = await client_for(planner)
    path_before = await column(engine, "org_units", "path", tree["west_team"]["id"])
    body = problem(
        await as_planner.post(
            f"/v1/org-units/{tree['west_team']['id']}/move",
            json={"parent_id": str(tree["east"]["id"])},
        ),
        403,
        "grant_not_allowed",
    )
    assert body["reason"] == "self"
    assert await column(engine, "org_units", "path", tree["west_team"]["id"]) == path_before
    # an administrator may
    ok = await client.post(
        f"/v1/org-units/{tree['west_team']['id']}/move", json={"parent_id": str(tree["east"]["id"])}
    )
    assert ok.status_code == 200, ok.text


async def test_nobody_moves_the_unit_they_stand_in(client_for, engine, tree):
    """Re-parenting a unit that contains your own unit moves you: that is for someone
    above you."""
    await make_role(
        engine,
        "reorg",
        ("org_units", "read", "all"),
        (
            "org_units",
            "update",
            "custom",
            [tree["east"]["id"], tree["west"]["id"], tree["root"]["id"]],
        ),
    )
    member = await make_user(engine, roles=("reorg",), org_unit=tree["east_team"])
    as_member = await client_for(member)
    body = problem(
        await as_member.post(
            f"/v1/org-units/{tree['east']['id']}/move", json={"parent_id": str(tree["west"]["id"])}
        ),
        403,
        "grant_not_allowed",
    )
    assert body["reason"] == "self"
    assert await column(engine, "org_units", "parent_id", tree["east"]["id"]) == tree["root"]["id"]


async def test_units_move_only_from_and_to_places_in_scope(client_for, engine, tree):
    """The unit, where it comes from and where it goes must all be inside the caller's
    org_units:update scope."""
    await make_role(
        engine,
        "east_admin",
        ("org_units", "read", "all"),
        ("org_units", "update", "org_subtree"),
        ("org_units", "create", "org_subtree"),
    )
    await make_role(
        engine,
        "picker",
        ("org_units", "read", "all"),
        ("org_units", "update", "custom", [tree["west_team"]["id"], tree["east_team"]["id"]]),
    )
    boss = await make_user(engine, roles=("east_admin",), org_unit=tree["east"])
    as_boss = await client_for(boss)
    # the picker may update West team and East team, but not West, where West team sits
    picker = await make_user(engine, roles=("picker",), org_unit=None)
    body = problem(
        await (await client_for(picker)).post(
            f"/v1/org-units/{tree['west_team']['id']}/move",
            json={"parent_id": str(tree["east_team"]["id"])},
        ),
        403,
        "grant_not_allowed",
    )
    assert body["reason"] == "source_out_of_scope"
    assert (
        await column(engine, "org_units", "parent_id", tree["west_team"]["id"])
        == tree["west"]["id"]
    )
    # within East, a reorganisation is the boss's to make
    sub = (
        await as_boss.post(
            "/v1/org-units",
            json={"name": "Desk", "kind": "team", "parent_id": str(tree["east_team"]["id"])},
        )
    ).json()
    moved = await as_boss.post(
        f"/v1/org-units/{sub['id']}/move", json={"parent_id": str(tree["east"]["id"])}
    )
    assert moved.status_code == 200, moved.text
    # but East itself sits under Root, outside: moving it is refused
    problem(
        await as_boss.post(
            f"/v1/org-units/{tree['east']['id']}/move", json={"parent_id": str(sub["id"])}
        ),
        403,
        "grant_not_allowed",
    )


# --- (c) the rest, tried as an attacker ------------------------------------------------
async def test_api_client_secret_of_a_stronger_client_cannot_be_rotated(
    client, client_for, engine, tree
):
    """Rotating a client's secret hands the caller that client's credentials; switching a
    stronger client back on, or off, is acting on it too."""
    await make_role(
        engine,
        "integrator",
        ("api_clients", "read", "all"),
        ("api_clients", "create", "all"),
        ("api_clients", "update", "all"),
        ("api_clients", "delete", "all"),
        ("customers", "read", "org_subtree"),
    )
    await make_role(engine, "wide_reader", ("customers", "read", "all"))
    await make_role(engine, "own_reader", ("customers", "read", "own"))
    user = await make_user(engine, roles=("integrator",), org_unit=tree["east"])
    as_user = await client_for(user)
    strong = await create_api_client(client, name="strong", roles=["wide_reader"])
    url = f"/v1/api-clients/{strong['id']}"
    hash_before = await column(engine, "api_clients", "secret_hash", strong["id"])
    body = outranks(await as_user.post(f"{url}/rotate-secret", json={}), "client_secret")
    assert body["refused"] == ["wide_reader"]
    assert await column(engine, "api_clients", "secret_hash", strong["id"]) == hash_before
    outranks(await as_user.delete(url), "active")
    await client.delete(url)
    outranks(await as_user.patch(url, json={"active": True}), "active")
    assert await column(engine, "api_clients", "active", strong["id"]) is False
    renamed = await as_user.patch(url, json={"name": "still strong"})
    assert renamed.status_code == 200, renamed.text
    # a client holding no more than the caller: its own to rotate
    weak = await create_api_client(
        as_user, name="weak", roles=["own_reader"], org_unit_id=str(tree["east_team"]["id"])
    )
    rotated = await as_user.post(f"/v1/api-clients/{weak['id']}/rotate-secret", json={})
    assert rotated.status_code == 200, rotated.text


async def test_a_token_loses_what_its_owner_loses(anon_client, client, client_for, engine, tree):
    """A personal access token is narrowed to its owner's grants at use: after the owner's
    roles shrink, the token no longer reaches what it was created for."""
    manager = await make_user(engine, roles=("sales_manager",), org_unit=tree["east"])
    pat = await create_pat(await client_for(manager), ("customers", "read"), ("users", "read"))
    headers = bearer(pat["token"])
    assert (await anon_client.get("/v1/users", headers=headers)).status_code == 200
    changed = await client.patch(f"/v1/users/{manager['id']}", json={"roles": ["staff"]})
    assert changed.status_code == 200, changed.text
    await settle()
    problem(await anon_client.get("/v1/users", headers=headers), 403, "permission_denied")
    assert (await anon_client.get("/v1/customers", headers=headers)).status_code == 200
    assert await roles_in_db(engine, f"user:{manager['id']}") == ["staff"]


async def test_built_in_roles_cannot_be_hijacked(client, client_for, engine, tree):
    """No second ``admin`` role, no renaming a built-in one, no deleting it."""
    await make_role(
        engine,
        "role_admin",
        ("roles", "read", "all"),
        ("roles", "create", "all"),
        ("roles", "update", "all"),
        ("roles", "delete", "all"),
    )
    as_editor = await client_for(
        await make_user(engine, roles=("role_admin",), org_unit=tree["east"])
    )
    problem(await as_editor.post("/v1/roles", json={"name": "admin"}), 409, "role_exists")
    admin_role = await role_id(client, "admin")
    problem(await as_editor.patch(f"/v1/roles/{admin_role}", json={"name": "boss"}), 422)
    problem(await as_editor.delete(f"/v1/roles/{admin_role}"), 409, "role_builtin")


async def test_relative_scopes_are_conferred_only_where_the_caller_reaches(
    client_for, engine, tree
):
    """An ``org_subtree`` grant given to someone in West reaches West: a caller holding it
    over East (however wide its users:assign or api_clients scope) does not hold that. For
    an API client it would be the caller's own access: whoever makes a client holds its
    secret."""
    await make_role(
        engine,
        "hr",
        ("users", "read", "all"),
        ("users", "update", "all"),
        ("users", "assign", "all"),
        ("api_clients", "read", "all"),
        ("api_clients", "create", "all"),
        ("customers", "read", "org_subtree"),
    )
    await make_role(engine, "subtree_reader", ("customers", "read", "org_subtree"))
    hr = await make_user(engine, roles=("hr",), org_unit=tree["east"])
    as_hr = await client_for(hr)
    west_user = await make_user(engine, roles=(), org_unit=tree["west"])
    east_user = await make_user(engine, roles=(), org_unit=tree["east_team"])
    body = problem(
        await as_hr.patch(f"/v1/users/{west_user['id']}", json={"roles": ["subtree_reader"]}),
        403,
        "role_not_grantable",
    )
    assert body["refused"] == ["subtree_reader"]
    ok = await as_hr.patch(f"/v1/users/{east_user['id']}", json={"roles": ["subtree_reader"]})
    assert ok.status_code == 200, ok.text
    problem(
        await as_hr.post(
            "/v1/api-clients",
            json={
                "name": "west bot",
                "roles": ["subtree_reader"],
                "org_unit_id": str(tree["west"]["id"]),
            },
        ),
        403,
        "role_not_grantable",
    )
    made = await as_hr.post(
        "/v1/api-clients",
        json={
            "name": "east bot",
            "roles": ["subtree_reader"],
            "org_unit_id": str(tree["east_team"]["id"]),
        },
    )
    assert made.status_code == 201, made.text


async def test_a_relative_grant_is_added_only_where_the_role_is_held_within_reach(
    client, client_for, engine, tree
):
    """Adding ``org_subtree`` to a role takes effect at once wherever its holders stand:
    an editor holding it over East cannot hand it to the role's holders in West."""
    await make_role(
        engine,
        "role_editor",
        ("roles", "read", "all"),
        ("roles", "update", "all"),
        ("customers", "read", "org_subtree"),
    )
    await make_role(engine, "east_desk", ("customers", "read", "own"))
    await make_role(engine, "west_desk", ("customers", "read", "own"))
    await make_user(engine, roles=("east_desk",), org_unit=tree["east_team"])
    await make_user(engine, roles=("west_desk",), org_unit=tree["west"])
    as_editor = await client_for(
        await make_user(engine, roles=("role_editor",), org_unit=tree["east"])
    )
    grant = {"resource": "customers", "action": "read", "scope": "org_subtree"}
    body = problem(
        await as_editor.post(f"/v1/roles/{await role_id(client, 'west_desk')}/grants", json=grant),
        403,
        "grant_not_allowed",
    )
    assert body["reason"] == "not_held"
    ok = await as_editor.post(f"/v1/roles/{await role_id(client, 'east_desk')}/grants", json=grant)
    assert ok.status_code == 201, ok.text
