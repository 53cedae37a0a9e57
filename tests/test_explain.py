"""Explain and visibility: answers computed by the same scope functions the API enforces."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from conftest import problem
from crm_api.authz.state import settle
from factories.contacts import create_contact
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    """Policy reloads are over (and none is due) before the next test empties the tables:
    a reload racing that TRUNCATE can deadlock with it."""
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def _setup(client, engine):
    root = await make_org_unit(engine, "Root", kind="group")
    team = await make_org_unit(engine, "Team", parent=root)
    other = await make_org_unit(engine, "Other", parent=root)
    manager = await make_user(engine, roles=("sales_manager",), org_unit=root)
    rep = await make_user(engine, roles=("sales_rep",), org_unit=team, manager=manager)
    stranger = await make_user(engine, roles=("sales_rep",), org_unit=other)
    mine = await create_customer(client, rep, name="Rep's")
    theirs = await create_customer(client, stranger, name="Stranger's")
    return {
        "root": root,
        "team": team,
        "manager": manager,
        "rep": rep,
        "stranger": stranger,
        "mine": mine,
        "theirs": theirs,
    }


async def test_only_administrators_may_explain(client, client_for, engine):
    unit = await make_org_unit(engine)
    executive = await make_user(engine, roles=("executive",), org_unit=unit)
    as_exec = await client_for(executive)
    params = {"user_id": str(executive["id"]), "resource": "customers"}
    problem(await as_exec.get("/v1/authz/explain", params=params), 403, "permission_denied")
    problem(await as_exec.get("/v1/authz/visibility", params=params), 403, "permission_denied")


async def test_explain_permission_and_grants(client, engine):
    s = await _setup(client, engine)
    response = await client.get(
        "/v1/authz/explain",
        params={"user_id": str(s["rep"]["id"]), "resource": "customers", "action": "update"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["allowed"] is True and body["roles"] == ["sales_rep"] and body["user_active"]
    assert body["scope"]["kinds"] == ["own"] and body["scope"]["widest"] == "own"
    [via] = body["via"]
    assert (via["role"], via["resource"], via["action"], via["scope"]) == (
        "sales_rep",
        "customers",
        "update",
        "own",
    )
    async with engine.connect() as conn:
        grant = (
            await conn.execute(
                text(
                    "SELECT id FROM authz_rules WHERE ptype = 'p' AND v0 = 'sales_rep' "
                    "AND v1 = 'customers' AND v2 = 'update'"
                )
            )
        ).scalar_one()
    assert via["grant_id"] == str(grant)
    denied = (
        await client.get(
            "/v1/authz/explain",
            params={"user_id": str(s["rep"]["id"]), "resource": "customers", "action": "purge"},
        )
    ).json()
    assert denied["allowed"] is False and denied["scope"] is None and denied["via"] == []


async def test_explain_record_visibility(client, engine):
    s = await _setup(client, engine)

    async def check(user, resource, record_id, action="read"):
        response = await client.get(
            "/v1/authz/explain",
            params={
                "user_id": str(user["id"]),
                "resource": resource,
                "action": action,
                "record_id": str(record_id),
            },
        )
        assert response.status_code == 200, response.text
        return response.json()["record"]

    own = await check(s["rep"], "customers", s["mine"]["id"])
    assert own["visible"] is True and own["matched_scopes"] == ["own"]
    assert "owns" in own["reason"]
    foreign = await check(s["rep"], "customers", s["theirs"]["id"])
    assert foreign["visible"] is False and foreign["matched_scopes"] == []
    manager = await check(s["manager"], "customers", s["theirs"]["id"], "update")
    assert manager["visible"] is True and manager["matched_scopes"] == ["org_subtree"]
    missing = await check(s["rep"], "customers", uuid.uuid4())
    assert missing == {
        "id": missing["id"],
        "visible": False,
        "reason": "No such record.",
        "matched_scopes": [],
    }
    denied = await check(s["rep"], "customers", s["mine"]["id"], "purge")
    assert denied["visible"] is False and "No role grants" in denied["reason"]
    # users: a sales rep sees the users of their own org unit only
    assert (await check(s["rep"], "users", s["rep"]["id"]))["matched_scopes"] == ["org_unit"]
    assert (await check(s["rep"], "users", s["stranger"]["id"]))["visible"] is False
    # contacts are visible through their customer
    contact = await create_contact(client, s["mine"])
    assert (await check(s["rep"], "contacts", contact["id"]))["matched_scopes"] == ["own"]
    assert (await check(s["stranger"], "contacts", contact["id"]))["visible"] is False
    # audit events are scoped like the records they describe
    async with engine.connect() as conn:
        event = (
            await conn.execute(
                text("SELECT id FROM audit_events WHERE resource_id = :id"), {"id": s["mine"]["id"]}
            )
        ).scalar_one()
    assert (await check(s["rep"], "audit_events", event))["visible"] is True
    assert (await check(s["stranger"], "audit_events", event))["visible"] is False


async def test_visibility_predicate_and_count(client, engine):
    s = await _setup(client, engine)
    response = await client.get(
        "/v1/authz/visibility", params={"user_id": str(s["rep"]["id"]), "resource": "customers"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["visible_count"] == 1 and body["scope"]["kinds"] == ["own"]
    assert str(s["rep"]["id"]) in body["predicate"] and "owner_id" in body["predicate"]
    manager = (
        await client.get(
            "/v1/authz/visibility",
            params={"user_id": str(s["manager"]["id"]), "resource": "customers"},
        )
    ).json()
    assert manager["visible_count"] == 2 and "org_units.path LIKE" in manager["predicate"]
    # the text is the SQL itself: run as is, it counts the same records
    async with engine.connect() as conn:
        for answer in (body, manager):
            counted = (
                await conn.execute(
                    text(f"SELECT count(*) FROM customers WHERE {answer['predicate']}")
                )
            ).scalar_one()
            assert counted == answer["visible_count"]
    units = (
        await client.get(
            "/v1/authz/visibility", params={"user_id": str(s["rep"]["id"]), "resource": "org_units"}
        )
    ).json()
    assert units["scope"]["kinds"] == ["all"] and units["visible_count"] == 4  # + head office
    nothing = (
        await client.get(
            "/v1/authz/visibility",
            params={"user_id": str(s["rep"]["id"]), "resource": "customers", "action": "purge"},
        )
    ).json()
    assert nothing["allowed"] is False and nothing["predicate"] is None


async def test_bad_questions_are_problems(client, engine):
    s = await _setup(client, engine)
    problem(
        await client.get(
            "/v1/authz/explain", params={"user_id": str(uuid.uuid4()), "resource": "customers"}
        ),
        404,
        "user_not_found",
    )
    problem(
        await client.get(
            "/v1/authz/explain",
            params={
                "user_id": str(s["rep"]["id"]),
                "resource": "tickets",
                "record_id": str(uuid.uuid4()),
            },
        ),
        422,
        "unsupported_resource",
    )
    problem(
        await client.get(
            "/v1/authz/visibility", params={"user_id": str(s["rep"]["id"]), "resource": "roles"}
        ),
        422,
        "unsupported_resource",
    )
    problem(await client.get("/v1/authz/explain", params={"resource": "customers"}), 422)
    problem(
        await client.get(
            "/v1/authz/explain", params={"user_id": str(s["rep"]["id"]), "resource": "Customers!"}
        ),
        422,
    )
    problem(
        await client.get(
            "/v1/authz/explain",
            params={"user_id": str(s["rep"]["id"]), "resource": "customers", "extra": "1"},
        ),
        422,
    )
