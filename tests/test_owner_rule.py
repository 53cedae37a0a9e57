"""Owner and org unit of every write follow the transfer rule: the new owner is inside the
caller's ``assign`` scope, and the unit is the owner's or inside that scope. Create,
PATCH and transfer answer alike (422 ``invalid_owner`` / ``invalid_org_unit``), and a
refused write changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from crm_api.authz.state import settle
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    """Policy reloads are over before the next test empties the tables."""
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def _world(client, engine) -> dict[str, Any]:
    """A branch (with a team, East) led by a sales manager; a unit outside it; partners
    outside the branch (one in the other unit, one in no unit)."""
    root = await make_org_unit(engine, "Root", kind="group")
    branch = await make_org_unit(engine, "Branch", parent=root, kind="branch")
    east = await make_org_unit(engine, "East", parent=branch)
    other = await make_org_unit(engine, "Other", parent=root)
    manager = await make_user(engine, roles=("sales_manager",), org_unit=branch)
    rep = await make_user(engine, org_unit=east, manager=manager)
    rep2 = await make_user(engine, org_unit=branch, manager=manager)
    partner = await make_user(engine, roles=("partner",), org_unit=other)
    loner = await make_user(engine, roles=("partner",))
    customer = await create_customer(client, rep, name="Mingyuan")
    return {
        "root": root,
        "branch": branch,
        "east": east,
        "other": other,
        "manager": manager,
        "rep": rep,
        "rep2": rep2,
        "partner": partner,
        "loner": loner,
        "customer": customer,
        "url": f"/v1/customers/{customer['id']}",
    }


async def _row(engine, customer_id: Any) -> tuple[str, str | None, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT owner_id::text, org_unit_id::text, version"
                    " FROM customers WHERE id = :id"
                ),
                {"id": customer_id},
            )
        ).one()
    return row[0], row[1], row[2]


def _ids(**kw: Any) -> dict[str, str]:
    return {k: str(v["id"]) for k, v in kw.items()}


async def test_patch_to_an_owner_outside_the_assign_scope_is_refused(client, client_for, engine):
    w = await _world(client, engine)
    as_manager = await client_for(w["manager"])
    before = await _row(engine, w["customer"]["id"])
    events = await count_rows(engine, "audit_events")
    for body in (
        _ids(owner_id=w["partner"], org_unit_id=w["east"]),  # the move of issue #7
        _ids(owner_id=w["partner"]),
        _ids(owner_id=w["loner"], org_unit_id=w["east"]),
        _ids(owner_id=w["loner"]),
    ):
        refused = problem(
            await as_manager.patch(w["url"], json={**body, "notes": "x"}), 422, "invalid_owner"
        )
        assert [e["field"] for e in refused["errors"]] == ["owner_id"]
    # the transfer endpoint refuses the same owner with the same answer
    problem(
        await as_manager.post(f"{w['url']}/transfer", json={"to_user_id": str(w["partner"]["id"])}),
        422,
        "invalid_owner",
    )
    assert await _row(engine, w["customer"]["id"]) == before
    assert await count_rows(engine, "audit_events") == events


async def test_create_for_an_owner_outside_the_assign_scope_is_refused(client, client_for, engine):
    w = await _world(client, engine)
    as_manager = await client_for(w["manager"])
    before = await count_rows(engine, "customers")
    for body in (
        _ids(owner_id=w["partner"], org_unit_id=w["east"]),
        _ids(owner_id=w["partner"]),
        _ids(owner_id=w["loner"], org_unit_id=w["east"]),
        _ids(owner_id=w["loner"]),
    ):
        refused = problem(
            await as_manager.post("/v1/customers", json={"name": "X", **body}), 422, "invalid_owner"
        )
        assert [e["field"] for e in refused["errors"]] == ["owner_id"]
    assert await count_rows(engine, "customers") == before


async def test_the_unit_must_be_the_owners_or_inside_the_scope(client, client_for, engine):
    w = await _world(client, engine)
    as_manager = await client_for(w["manager"])
    before = await _row(engine, w["customer"]["id"])
    customers = await count_rows(engine, "customers")
    for body in (_ids(org_unit_id=w["other"]), _ids(owner_id=w["rep2"], org_unit_id=w["other"])):
        refused = problem(await as_manager.patch(w["url"], json=body), 422, "invalid_org_unit")
        assert [e["field"] for e in refused["errors"]] == ["org_unit_id"]
        problem(
            await as_manager.post("/v1/customers", json={"name": "X", **body}),
            422,
            "invalid_org_unit",
        )
    assert await _row(engine, w["customer"]["id"]) == before
    assert await count_rows(engine, "customers") == customers


async def test_moves_inside_the_scope_still_work(client, client_for, engine):
    w = await _world(client, engine)
    as_manager = await client_for(w["manager"])
    cid = w["customer"]["id"]
    response = await as_manager.patch(w["url"], json=_ids(owner_id=w["rep2"]))
    assert response.status_code == 200, response.text
    assert await _row(engine, cid) == (str(w["rep2"]["id"]), str(w["branch"]["id"]), 2)
    response = await as_manager.patch(w["url"], json=_ids(owner_id=w["rep"], org_unit_id=w["east"]))
    assert response.status_code == 200, response.text
    response = await as_manager.patch(w["url"], json=_ids(org_unit_id=w["branch"]))
    assert response.status_code == 200, response.text
    assert await _row(engine, cid) == (str(w["rep"]["id"]), str(w["branch"]["id"]), 4)
    # the whole record sent back (owner and unit unchanged) needs no check at all
    as_rep = await client_for(w["rep"])
    shown = (await as_rep.get(w["url"])).json()
    body = {k: shown[k] for k in ("name", "owner_id", "org_unit_id", "tags")}
    assert (await as_rep.patch(w["url"], json={**body, "notes": "n"})).status_code == 200
    created = await as_manager.post("/v1/customers", json={"name": "Y", **_ids(owner_id=w["rep2"])})
    assert created.status_code == 201, created.text
    assert created.json()["org_unit_id"] == str(w["branch"]["id"])
    created = await as_manager.post(
        "/v1/customers", json={"name": "Z", **_ids(owner_id=w["rep2"], org_unit_id=w["east"])}
    )
    assert created.status_code == 201, created.text
    moved = await as_manager.post(f"{w['url']}/transfer", json={"to_user_id": str(w["rep2"]["id"])})
    assert moved.status_code == 200, moved.text
    # an administrator (scope all) may place a record anywhere
    response = await client.patch(w["url"], json=_ids(owner_id=w["partner"], org_unit_id=w["east"]))
    assert response.status_code == 200, response.text


async def test_an_owner_based_assign_scope_cannot_choose_units(client, client_for, engine):
    """``assign`` over ``subordinates`` lets a team lead give records to their reports,
    in those reports' own units: not file them under any unit (where others would see
    them)."""
    w = await _world(client, engine)
    role = (await client.post("/v1/roles", json={"name": "team_assigner"})).json()
    for action in ("read", "update", "create", "assign"):
        granted = await client.post(
            f"/v1/roles/{role['id']}/grants",
            json={"resource": "customers", "action": action, "scope": "subordinates"},
        )
        assert granted.status_code == 201, granted.text
    lead = await make_user(engine, roles=("team_assigner",), org_unit=w["branch"])
    report = await make_user(engine, org_unit=w["east"], manager=lead)
    customer = await create_customer(client, report, name="Team")
    url = f"/v1/customers/{customer['id']}"
    as_lead = await client_for(lead)
    before = await _row(engine, customer["id"])
    for body in (_ids(org_unit_id=w["other"]), _ids(owner_id=lead, org_unit_id=w["other"])):
        problem(await as_lead.patch(url, json=body), 422, "invalid_org_unit")
        problem(
            await as_lead.post("/v1/customers", json={"name": "X", **body}), 422, "invalid_org_unit"
        )
    # the lead's own unit is not the report's: the record stays in the report's unit
    problem(await as_lead.patch(url, json=_ids(org_unit_id=w["branch"])), 422, "invalid_org_unit")
    problem(await as_lead.patch(url, json=_ids(owner_id=w["rep"])), 422, "invalid_owner")
    assert await _row(engine, customer["id"]) == before
    response = await as_lead.patch(url, json=_ids(owner_id=lead))
    assert response.status_code == 200, response.text
    assert await _row(engine, customer["id"]) == (str(lead["id"]), str(w["branch"]["id"]), 2)
    created = await as_lead.post("/v1/customers", json={"name": "Y", **_ids(owner_id=report)})
    assert created.status_code == 201 and created.json()["org_unit_id"] == str(w["east"]["id"])
