"""Transfer: a leaving rep's customers handed to a colleague, limited to the caller's
assign scope, one audit event per customer, nothing written on bad input."""

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


async def _setup(client, engine):
    root = await make_org_unit(engine, "Root", kind="group")
    east = await make_org_unit(engine, "East", parent=root)
    west = await make_org_unit(engine, "West", parent=root)
    leaving = await make_user(engine, org_unit=east)
    taker = await make_user(engine, org_unit=east)
    westerner = await make_user(engine, org_unit=west)
    customers = [await create_customer(client, leaving, name=f"C{i}") for i in range(3)]
    return {
        "root": root,
        "east": east,
        "west": west,
        "leaving": leaving,
        "taker": taker,
        "westerner": westerner,
        "customers": customers,
    }


async def _owners(engine) -> dict[str, tuple[str, str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT name, owner_id::text, org_unit_id::text, version FROM customers")
        )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_transfer_needs_assign(client, client_for, engine):
    s = await _setup(client, engine)
    as_rep = await client_for(s["leaving"])
    body = {"from_user_id": str(s["leaving"]["id"]), "to_user_id": str(s["taker"]["id"])}
    problem(await as_rep.post("/v1/customers/transfer", json=body), 403, "permission_denied")
    problem(
        await as_rep.post(
            f"/v1/customers/{s['customers'][0]['id']}/transfer",
            json={"to_user_id": str(s["taker"]["id"])},
        ),
        403,
    )
    assert {o for o, _, _ in (await _owners(engine)).values()} == {str(s["leaving"]["id"])}


async def test_everything_of_a_departed_rep_moves(client, engine):
    s = await _setup(client, engine)
    deleted = await create_customer(client, s["leaving"], name="Trash")
    await client.delete(f"/v1/customers/{deleted['id']}")
    await client.post(f"/v1/users/{s['leaving']['id']}/deactivate")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO contacts (id, customer_id, name, is_primary, created_at, updated_at, "
                "version) VALUES (gen_random_uuid(), :c, 'Wang Fang', true, now(), now(), 1)"
            ),
            {"c": s["customers"][0]["id"]},
        )
    response = await client.post(
        "/v1/customers/transfer",
        json={
            "from_user_id": str(s["leaving"]["id"]),
            "to_user_id": str(s["westerner"]["id"]),
            "include_contacts": True,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"transferred": 3, "contacts": 1}
    owners = await _owners(engine)
    for name in ("C0", "C1", "C2"):
        assert owners[name] == (str(s["westerner"]["id"]), str(s["west"]["id"]), 2)
    assert owners["Trash"][0] == str(s["leaving"]["id"])  # deleted records stay put
    events = await count_rows(engine, "audit_events", "action = 'transfer'")
    assert events == 3
    async with engine.connect() as conn:
        changes = (
            await conn.execute(
                text(
                    "SELECT changes FROM audit_events"
                    " WHERE action = 'transfer' AND resource_id = :id"
                ),
                {"id": s["customers"][0]["id"]},
            )
        ).scalar_one()
    assert changes["owner_id"] == {
        "before": str(s["leaving"]["id"]),
        "after": str(s["westerner"]["id"]),
    }
    assert changes["org_unit_id"]["after"] == str(s["west"]["id"])
    again = await client.post(
        "/v1/customers/transfer",
        json={
            "from_user_id": str(s["leaving"]["id"]),
            "to_user_id": str(s["westerner"]["id"]),
            "include_contacts": False,
        },
    )
    assert again.json() == {"transferred": 0, "contacts": None}


async def test_only_listed_customers_move(client, engine):
    s = await _setup(client, engine)
    c0, c1, _ = s["customers"]
    response = await client.post(
        "/v1/customers/transfer",
        json={
            "from_user_id": str(s["leaving"]["id"]),
            "to_user_id": str(s["taker"]["id"]),
            "customer_ids": [c0["id"], c1["id"], c1["id"], str(uuid.uuid4())],
        },
    )
    assert response.status_code == 200 and response.json()["transferred"] == 2
    owners = await _owners(engine)
    assert owners["C2"][0] == str(s["leaving"]["id"])
    assert owners["C0"][0] == owners["C1"][0] == str(s["taker"]["id"])


async def test_transfer_is_limited_to_the_callers_assign_scope(client, client_for, engine):
    s = await _setup(client, engine)
    # one of the leaving rep's customers sits in the West unit
    await client.patch(
        f"/v1/customers/{s['customers'][2]['id']}", json={"org_unit_id": str(s["west"]["id"])}
    )
    manager = await make_user(engine, roles=("sales_manager",), org_unit=s["east"])
    as_manager = await client_for(manager)
    refused = await as_manager.post(
        "/v1/customers/transfer",
        json={"from_user_id": str(s["leaving"]["id"]), "to_user_id": str(s["westerner"]["id"])},
    )
    problem(refused, 422, "invalid_owner")
    assert await count_rows(engine, "audit_events", "action = 'transfer'") == 0
    response = await as_manager.post(
        "/v1/customers/transfer",
        json={"from_user_id": str(s["leaving"]["id"]), "to_user_id": str(s["taker"]["id"])},
    )
    assert response.status_code == 200 and response.json()["transferred"] == 2
    owners = await _owners(engine)
    assert owners["C2"][0] == str(s["leaving"]["id"])
    problem(
        await as_manager.post(
            f"/v1/customers/{s['customers'][2]['id']}/transfer",
            json={"to_user_id": str(s["taker"]["id"])},
        ),
        404,
        "customer_not_found",
    )


async def test_bad_input_changes_nothing(client, engine):
    s = await _setup(client, engine)
    await client.post(f"/v1/users/{s['westerner']['id']}/deactivate")
    before = await _owners(engine)
    frm, to = str(s["leaving"]["id"]), str(s["taker"]["id"])
    cases = [
        ({"from_user_id": frm, "to_user_id": frm}, 422, "same_user"),
        ({"from_user_id": frm, "to_user_id": str(s["westerner"]["id"])}, 422, "invalid_owner"),
        ({"from_user_id": frm, "to_user_id": str(uuid.uuid4())}, 422, "invalid_owner"),
        ({"from_user_id": str(uuid.uuid4()), "to_user_id": to}, 422, "invalid_user"),
        ({"from_user_id": frm}, 422, "validation_error"),
        ({"from_user_id": frm, "to_user_id": to, "customer_ids": []}, 422, "validation_error"),
        ({"from_user_id": frm, "to_user_id": to, "owner_id": to}, 422, "validation_error"),
        ({"from_user_id": "nope", "to_user_id": to}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        problem(await client.post("/v1/customers/transfer", json=body), status, code)
    assert await _owners(engine) == before
    assert await count_rows(engine, "audit_events", "action = 'transfer'") == 0


async def test_transfer_one(client, engine):
    s = await _setup(client, engine)
    target = s["customers"][0]
    response = await client.post(
        f"/v1/customers/{target['id']}/transfer",
        json={"to_user_id": str(s["westerner"]["id"])},
        headers={"If-Match": '"1"'},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["owner_id"] == str(s["westerner"]["id"])
    assert body["org_unit_id"] == str(s["west"]["id"])
    assert body["version"] == 2 and response.headers["etag"] == '"2"'
    problem(
        await client.post(
            f"/v1/customers/{target['id']}/transfer",
            json={"to_user_id": str(s["taker"]["id"])},
            headers={"If-Match": '"1"'},
        ),
        412,
        "version_mismatch",
    )
    problem(
        await client.post(
            f"/v1/customers/{uuid.uuid4()}/transfer", json={"to_user_id": str(s["taker"]["id"])}
        ),
        404,
        "customer_not_found",
    )
    same = await client.post(
        f"/v1/customers/{target['id']}/transfer", json={"to_user_id": str(s["westerner"]["id"])}
    )
    assert same.status_code == 200 and same.json()["version"] == 2
    assert await count_rows(engine, "audit_events", "action = 'transfer'") == 1
