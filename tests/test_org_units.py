"""Org units: the tree, moves that carry their subtree (and every scope built on it), and
deactivation guards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

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


async def _create(client, name, parent=None, kind="team"):
    body = {"name": name, "kind": kind}
    if parent is not None:
        body["parent_id"] = str(parent["id"])
    response = await client.post("/v1/org-units", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def _tree(client):
    """root ─ a ─ a1 ─ a11 ; root ─ b"""
    roots = (await client.get("/v1/org-units", params={"root": "true"})).json()["data"]
    root = roots[0]
    a = await _create(client, "A", root, "company")
    a1 = await _create(client, "A1", a, "branch")
    a11 = await _create(client, "A11", a1)
    b = await _create(client, "B", root, "company")
    return root, a, a1, a11, b


async def test_outsider_without_grant_is_forbidden(client, client_for, engine):
    unit = await make_org_unit(engine)
    staff = await make_user(engine, roles=("staff",), org_unit=unit)
    outsider = await client_for(staff)
    problem(await outsider.get("/v1/org-units"), 403, "permission_denied")
    problem(await outsider.post("/v1/org-units", json={"name": "X", "kind": "team"}), 403)


async def test_scoped_reader_sees_only_their_subtree(client, client_for, engine):
    _root, a, a1, a11, b = await _tree(client)
    role = (await client.post("/v1/roles", json={"name": "unit_reader"})).json()
    grant = await client.post(
        f"/v1/roles/{role['id']}/grants",
        json={"resource": "org_units", "action": "read", "scope": "org_subtree"},
    )
    assert grant.status_code == 201, grant.text
    user = await make_user(engine, roles=("unit_reader",), org_unit={"id": uuid.UUID(a1["id"])})
    reader = await client_for(user)
    problem(await reader.get(f"/v1/org-units/{b['id']}"), 404, "org_unit_not_found")
    listed = (await reader.get("/v1/org-units")).json()["data"]
    assert [u["id"] for u in listed] == [a1["id"], a11["id"]]
    assert (await reader.get(f"/v1/org-units/{a11['id']}")).status_code == 200
    assert a["id"] not in {u["id"] for u in listed}


async def test_create_builds_paths_and_lists_in_tree_order(client, engine):
    root, a, a1, a11, _b = await _tree(client)
    assert a1["path"] == f"{root['path']}{a['id']}/{a1['id']}/"
    assert (a["depth"], a1["depth"], a11["depth"]) == (1, 2, 3)
    listed = (await client.get("/v1/org-units")).json()["data"]
    assert [u["name"] for u in listed][1:] in (["A", "A1", "A11", "B"], ["B", "A", "A1", "A11"])
    children = (await client.get("/v1/org-units", params={"parent_id": root["id"]})).json()
    assert {u["name"] for u in children["data"]} == {"A", "B"}
    within = (await client.get("/v1/org-units", params={"within": a["id"]})).json()["data"]
    assert [u["name"] for u in within] == ["A", "A1", "A11"]
    teams = (await client.get("/v1/org-units", params={"kind": "team", "q": "a1"})).json()
    assert [u["name"] for u in teams["data"]] == ["A11"]
    page = (await client.get("/v1/org-units", params={"limit": 2, "sort": "name"})).json()
    assert page["has_more"] and len(page["data"]) == 2
    rest = (
        await client.get(
            "/v1/org-units", params={"limit": 10, "sort": "name", "cursor": page["next_cursor"]}
        )
    ).json()
    assert len(rest["data"]) == 3 and not rest["has_more"]
    got = await client.get(f"/v1/org-units/{a['id']}")
    assert got.status_code == 200 and got.headers["etag"] == '"1"'


async def test_bad_input_is_a_problem_and_writes_nothing(client, engine):
    before = await count_rows(engine, "org_units")
    problem(await client.post("/v1/org-units", json={"name": "X", "kind": "castle"}), 422)
    problem(await client.post("/v1/org-units", json={"name": "", "kind": "team"}), 422)
    problem(
        await client.post("/v1/org-units", json={"name": "X", "kind": "team", "path": "/x/"}),
        422,
        "validation_error",
    )
    problem(
        await client.post(
            "/v1/org-units", json={"name": "X", "kind": "team", "parent_id": str(uuid.uuid4())}
        ),
        422,
        "invalid_parent",
    )
    problem(await client.get("/v1/org-units", params={"sort": "depth"}), 422, "invalid_sort")
    problem(await client.get(f"/v1/org-units/{uuid.uuid4()}"), 404, "org_unit_not_found")
    assert await count_rows(engine, "org_units") == before
    assert await count_rows(engine, "audit_events") == 0


async def test_rename_with_if_match_and_audit(client, engine):
    _root, a, *_ = await _tree(client)
    renamed = await client.patch(
        f"/v1/org-units/{a['id']}", json={"name": "A Corp"}, headers={"If-Match": '"1"'}
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "A Corp" and renamed.headers["etag"] == '"2"'
    stale = await client.patch(
        f"/v1/org-units/{a['id']}", json={"kind": "group"}, headers={"If-Match": '"1"'}
    )
    problem(stale, 412, "version_mismatch")
    problem(await client.patch(f"/v1/org-units/{a['id']}", json={"name": None}), 422)
    assert (
        await count_rows(engine, "audit_events", f"resource_id = '{a['id']}' AND action = 'update'")
        == 1
    )


async def test_move_rejects_cycles_and_changes_nothing(client, engine):
    _root, a, a1, a11, _b = await _tree(client)
    for target in (a, a1, a11):
        problem(
            await client.post(f"/v1/org-units/{a['id']}/move", json={"parent_id": target["id"]}),
            409,
            "invalid_move",
        )
    problem(
        await client.post(f"/v1/org-units/{a['id']}/move", json={"parent_id": str(uuid.uuid4())}),
        422,
        "invalid_parent",
    )
    problem(await client.post(f"/v1/org-units/{a['id']}/move", json={}), 422)
    after = (await client.get(f"/v1/org-units/{a11['id']}")).json()
    assert after["path"] == a11["path"] and after["version"] == 1


async def test_move_rewrites_the_whole_subtree(client, engine):
    _root, _a, a1, a11, b = await _tree(client)
    moved = await client.post(f"/v1/org-units/{a1['id']}/move", json={"parent_id": b["id"]})
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert body["parent_id"] == b["id"] and body["depth"] == 2
    assert body["path"] == f"{b['path']}{a1['id']}/"
    leaf = (await client.get(f"/v1/org-units/{a11['id']}")).json()
    assert leaf["path"] == f"{b['path']}{a1['id']}/{a11['id']}/" and leaf["depth"] == 3
    assert leaf["parent_id"] == a1["id"] and leaf["version"] == 2
    within_b = (await client.get("/v1/org-units", params={"within": b["id"]})).json()["data"]
    assert [u["name"] for u in within_b] == ["B", "A1", "A11"]
    # to the top and back: a root has depth 0
    top = await client.post(f"/v1/org-units/{a1['id']}/move", json={"parent_id": None})
    assert top.json()["path"] == f"/{a1['id']}/" and top.json()["depth"] == 0
    leaf = (await client.get(f"/v1/org-units/{a11['id']}")).json()
    assert leaf["path"] == f"/{a1['id']}/{a11['id']}/" and leaf["depth"] == 1
    assert await count_rows(engine, "audit_events", "action = 'move'") == 2
    assert await count_rows(engine, "org_units", "path NOT LIKE '/%/'") == 0


async def test_move_changes_what_an_org_subtree_manager_sees(client, client_for, engine):
    root, a, a1, a11, b = await _tree(client)
    manager = await make_user(engine, roles=("sales_manager",), org_unit={"id": uuid.UUID(a["id"])})
    rep_b = await make_user(engine, org_unit={"id": uuid.UUID(b["id"])})
    rep_a11 = await make_user(engine, org_unit={"id": uuid.UUID(a11["id"])})
    in_b = await create_customer(client, rep_b, name="In B")
    in_a11 = await create_customer(client, rep_a11, name="In A11")
    as_manager = await client_for(manager)

    async def visible() -> set[str]:
        data = (await as_manager.get("/v1/customers")).json()["data"]
        return {c["name"] for c in data}

    assert await visible() == {"In A11"}
    await client.post(f"/v1/org-units/{b['id']}/move", json={"parent_id": a1["id"]})
    assert await visible() == {"In A11", "In B"}
    await client.post(f"/v1/org-units/{a1['id']}/move", json={"parent_id": root["id"]})
    assert await visible() == set()
    await client.post(f"/v1/org-units/{a11['id']}/move", json={"parent_id": a["id"]})
    assert await visible() == {"In A11"}
    # the manager's own unit moves: their cached unit path is refreshed at once
    moved = await client.post(f"/v1/org-units/{a['id']}/move", json={"parent_id": b["id"]})
    assert moved.status_code == 200, moved.text
    assert await visible() == {"In A11"}
    assert in_b["id"] and in_a11["id"]


async def test_deactivate_refuses_while_in_use(client, engine):
    _root, _a, a1, a11, b = await _tree(client)
    busy = await client.post(f"/v1/org-units/{a1['id']}/deactivate")
    body = problem(busy, 409, "org_unit_in_use")
    assert body["active_children"] == 1 and body["active_users"] == 0
    user = await make_user(engine, org_unit={"id": uuid.UUID(b["id"])})
    body = problem(await client.post(f"/v1/org-units/{b['id']}/deactivate"), 409, "org_unit_in_use")
    assert body["active_users"] == 1 and body["active_children"] == 0
    await client.post(f"/v1/users/{user['id']}/deactivate")
    done = await client.post(f"/v1/org-units/{b['id']}/deactivate")
    assert done.status_code == 200 and done.json()["active"] is False
    again = await client.post(f"/v1/org-units/{b['id']}/deactivate")
    assert again.status_code == 200
    child = {"name": "X", "kind": "team", "parent_id": b["id"]}
    problem(await client.post("/v1/org-units", json=child), 409, "parent_inactive")
    problem(
        await client.post(f"/v1/org-units/{a1['id']}/move", json={"parent_id": b["id"]}),
        409,
        "parent_inactive",
    )
    inactive = (await client.get("/v1/org-units", params={"active": "false"})).json()["data"]
    assert [u["id"] for u in inactive] == [b["id"]]
    assert (await client.post(f"/v1/org-units/{a11['id']}/deactivate")).status_code == 200
    problem(
        await client.post(
            "/v1/users",
            json={
                "email": "new@example.com",
                "display_name": "New",
                "org_unit_id": a11["id"],
            },
        ),
        422,
        "invalid_org_unit",
    )
    restored = await client.post(f"/v1/org-units/{b['id']}/activate")
    assert restored.status_code == 200 and restored.json()["active"] is True


async def test_root_needs_scope_all_and_idempotent_create(client, client_for, engine):
    _root, a, *_ = await _tree(client)
    role = (await client.post("/v1/roles", json={"name": "unit_admin"})).json()
    for action in ("read", "create", "update"):
        await client.post(
            f"/v1/roles/{role['id']}/grants",
            json={"resource": "org_units", "action": action, "scope": "org_subtree"},
        )
    user = await make_user(engine, roles=("unit_admin",), org_unit={"id": uuid.UUID(a["id"])})
    limited = await client_for(user)
    problem(
        await limited.post("/v1/org-units", json={"name": "R", "kind": "group"}),
        403,
        "root_not_allowed",
    )
    headers = {"Idempotency-Key": "unit-1"}
    body = {"name": "Team X", "kind": "team", "parent_id": a["id"]}
    first = await limited.post("/v1/org-units", json=body, headers=headers)
    second = await limited.post("/v1/org-units", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("idempotent-replayed") == "true"
    assert await count_rows(engine, "org_units", "name = 'Team X'") == 1
