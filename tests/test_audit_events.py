"""Reading the audit log: scoped like the records, filtered, newest first, paged."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from conftest import problem
from factories.contacts import create_contact
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user


async def test_outsider_sees_only_events_of_their_own_records(client, client_for, engine):
    unit = await make_org_unit(engine)
    rep = await make_user(engine, org_unit=unit)
    other = await make_user(engine, org_unit=unit)
    theirs = await create_customer(client, other, name="Theirs")
    await create_contact(client, theirs)
    as_rep = await client_for(rep)
    listed = await as_rep.get("/v1/audit-events")
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"] == []
    hidden = (await client.get("/v1/audit-events", params={"resource_id": theirs["id"]})).json()
    problem(
        await as_rep.get(f"/v1/audit-events/{hidden['data'][0]['id']}"),
        404,
        "audit_event_not_found",
    )
    mine = await create_customer(client, rep, name="Mine")
    contact = await create_contact(client, mine)
    seen = (await as_rep.get("/v1/audit-events")).json()["data"]
    assert {(e["resource_type"], e["resource_id"]) for e in seen} == {
        ("customers", mine["id"]),
        ("contacts", contact["id"]),
    }
    # Roles without any audit grant get a 403.
    staff = await make_user(engine, roles=("staff",), org_unit=unit)
    problem(await (await client_for(staff)).get("/v1/audit-events"), 403, "permission_denied")


async def test_list_filters_get_and_pages(client, engine, admin_user):
    unit = await make_org_unit(engine)
    owner = await make_user(engine, org_unit=unit)
    customer = await create_customer(client, owner)
    first = await create_contact(client, customer, name="First", is_primary=True)
    second = await create_contact(client, customer, name="Second", is_primary=True)
    await client.patch(f"/v1/contacts/{second['id']}", json={"title": "CTO"})
    await client.delete(f"/v1/contacts/{second['id']}")

    async def events(**params: object) -> list[dict]:
        response = await client.get("/v1/audit-events", params=params)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    everything = await events()
    # customer create, 2 contact creates, 1 demotion, 1 update, 1 delete; newest first.
    # (The demotion and the second create share a request, so only their set is fixed.)
    actions = [e["action"] for e in everything]
    assert actions[:2] == ["delete", "update"] and actions[4:] == ["create", "create"]
    assert sorted(actions[2:4]) == ["create", "update"]
    times = [e["occurred_at"] for e in everything]
    assert times == sorted(times, reverse=True)
    oldest_first = await events(sort="occurred_at")
    assert [e["id"] for e in oldest_first] == [e["id"] for e in reversed(everything)]
    assert len(await events(resource_type="contacts")) == 5
    assert len(await events(resource_type=["contacts", "customers"])) == 6
    assert [e["action"] for e in await events(resource_id=first["id"])] == ["update", "create"]
    assert len(await events(action="create")) == 3
    assert len(await events(action=["update", "delete"], resource_type="contacts")) == 3
    assert len(await events(actor_id=str(admin_user["id"]))) == 6
    assert await events(actor_id=str(uuid.uuid4())) == []
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert await events(occurred_after=soon) == []
    assert len(await events(occurred_before=soon)) == 6
    middle = everything[2]["occurred_at"]
    assert all(e["occurred_at"] >= middle for e in await events(occurred_after=middle))

    one = everything[0]
    got = await client.get(f"/v1/audit-events/{one['id']}")
    assert got.status_code == 200 and got.json() == one
    assert one["actor_type"] == "user" and one["actor_id"] == str(admin_user["id"])
    assert one["owner_id"] == str(owner["id"]) and one["org_unit_id"] == str(unit["id"])
    assert set(one["changes"]) == {"deleted_at"}
    problem(await client.get(f"/v1/audit-events/{uuid.uuid4()}"), 404, "audit_event_not_found")

    collected: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/audit-events", params=params)).json()
        collected += [e["id"] for e in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if not page["has_more"]:
            assert cursor is None
            break
    assert pages == 2 and collected == [e["id"] for e in everything]

    problem(await client.get("/v1/audit-events", params={"sort": "action"}), 422, "invalid_sort")
    problem(await client.get("/v1/audit-events", params={"cursor": "x"}), 400, "invalid_cursor")
    problem(await client.get("/v1/audit-events", params={"resource_id": "nope"}), 422)
    problem(await client.get("/v1/audit-events", params={"occurred_after": "yesterday"}), 422)
    problem(await client.get("/v1/audit-events", params={"bogus": "1"}), 422)
