"""Customers through the shared machinery: duplicates, soft delete / restore / purge, the
audit trail, ETag / Location headers and Idempotency-Key replays."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import text

from conftest import count_rows, problem
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user

TAX = "91310000MA1FL0001X"
ACCOUNT = "6222020200112233445"


async def _events(engine, customer_id: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT * FROM audit_events WHERE resource_id = :id ORDER BY occurred_at, id"),
            {"id": str(customer_id)},
        )
        return [dict(r) for r in rows.mappings()]


async def _world(engine) -> dict[str, Any]:
    unit = await make_org_unit(engine)
    return {
        "unit": unit,
        "owner": await make_user(engine, org_unit=unit),
        "rep": await make_user(engine, org_unit=unit),
    }


async def test_outsider_sees_nothing_and_gets_no_existing_id(client, client_for, engine):
    """A sales rep (scope: own) neither sees other reps' customers nor learns, from a
    duplicate, which customer holds the value."""
    w = await _world(engine)
    theirs = await create_customer(client, w["owner"], external_ref="ext-1", tax_number=TAX)
    rep = await client_for(w["rep"])
    assert (await rep.get("/v1/customers")).json()["data"] == []
    problem(await rep.get(f"/v1/customers/{theirs['id']}"), 404, "customer_not_found")
    problem(
        await rep.patch(f"/v1/customers/{theirs['id']}", json={"grade": "A"}),
        404,
        "customer_not_found",
    )
    body = problem(
        await rep.post("/v1/customers", json={"name": "x", "external_ref": "ext-1"}),
        409,
        "customer_duplicate",
    )
    assert body["field"] == "external_ref" and body["existing_id"] is None
    body = problem(
        await rep.post("/v1/customers", json={"name": "x", "tax_number": TAX}),
        409,
        "customer_duplicate",
    )
    assert body["field"] == "tax_number" and body["existing_id"] is None
    # and no sensitive value in clear for a role without read_sensitive
    mine = await rep.post("/v1/customers", json={"name": "mine", "bank_account": ACCOUNT})
    assert mine.status_code == 201, mine.text
    assert mine.json()["bank_account"] == "****" + ACCOUNT[-4:]
    assert (await client.get(f"/v1/customers/{mine.json()['id']}")).json()["bank_account"] == (
        ACCOUNT
    )


async def test_duplicates_are_409_naming_the_existing_customer(client, engine):
    w = await _world(engine)
    first = await create_customer(client, w["owner"], external_ref="ext-1", tax_number=TAX)
    for field, value in (("external_ref", "ext-1"), ("tax_number", TAX)):
        response = await client.post(
            "/v1/customers", json={"name": "again", "owner_id": str(w["owner"]["id"]), field: value}
        )
        body = problem(response, 409, "customer_duplicate")
        assert body["field"] == field and body["existing_id"] == first["id"], body
        # PATCHing another customer onto the value is the same conflict
        other = await create_customer(client, w["owner"], name="other")
        body = problem(
            await client.patch(f"/v1/customers/{other['id']}", json={field: value}),
            409,
            "customer_duplicate",
        )
        assert body["existing_id"] == first["id"]
    # re-sending a customer's own values is no conflict
    same = await client.patch(
        f"/v1/customers/{first['id']}", json={"external_ref": "ext-1", "tax_number": TAX}
    )
    assert same.status_code == 200 and same.json()["version"] == 1
    assert await count_rows(engine, "customers") == 3

    # tax numbers are unique among live customers only; external refs among all
    assert (await client.delete(f"/v1/customers/{first['id']}")).status_code == 204
    reuse = await create_customer(client, w["owner"], name="successor", tax_number=TAX)
    body = problem(
        await client.post(
            "/v1/customers",
            json={"name": "x", "owner_id": str(w["owner"]["id"]), "external_ref": "ext-1"},
        ),
        409,
        "customer_duplicate",
    )
    assert body["existing_id"] == first["id"]
    # restoring the first now collides with its successor's tax number
    body = problem(
        await client.post(f"/v1/customers/{first['id']}/restore"), 409, "customer_duplicate"
    )
    assert body["field"] == "tax_number" and body["existing_id"] == reuse["id"]
    problem(await client.get(f"/v1/customers/{first['id']}"), 404, "customer_not_found")
    # once the successor gives the number up, the restore goes through
    assert (
        await client.patch(f"/v1/customers/{reuse['id']}", json={"tax_number": None})
    ).status_code == 200
    restored = await client.post(f"/v1/customers/{first['id']}/restore")
    assert restored.status_code == 200 and restored.json()["deleted_at"] is None
    assert restored.headers["etag"] == f'"{restored.json()["version"]}"'
    problem(await client.post(f"/v1/customers/{first['id']}/restore"), 404, "customer_not_found")


async def test_purge_only_after_delete(client, engine):
    w = await _world(engine)
    customer = await create_customer(client, w["owner"], tax_number=TAX, bank_account=ACCOUNT)
    url = f"/v1/customers/{customer['id']}"
    problem(await client.post(f"{url}/purge"), 404, "customer_not_found")
    assert await count_rows(engine, "customers") == 1
    assert (await client.delete(url)).status_code == 204
    problem(await client.delete(url), 404, "customer_not_found")
    assert (await client.post(f"{url}/purge")).status_code == 204
    assert await count_rows(engine, "customers") == 0
    problem(await client.post(f"{url}/purge"), 404, "customer_not_found")
    problem(await client.post(f"{url}/restore"), 404, "customer_not_found")
    trash = (await client.get("/v1/customers", params={"deleted": True})).json()
    assert trash["data"] == []
    actions = [e["action"] for e in await _events(engine, customer["id"])]
    assert actions == ["create", "delete", "purge"]
    purge = (await _events(engine, customer["id"]))[-1]["changes"]
    assert purge["tax_number"] == {"before": "***", "after": None}
    assert purge["bank_account"] == {"before": "***", "after": None}
    assert purge["name"] == {"before": customer["name"], "after": None}


async def test_purge_needs_the_purge_permission(client, client_for, engine):
    w = await _world(engine)
    rep = await client_for(w["rep"])
    created = await rep.post("/v1/customers", json={"name": "mine"})
    cid = created.json()["id"]
    assert (await rep.delete(f"/v1/customers/{cid}")).status_code == 204
    problem(await rep.post(f"/v1/customers/{cid}/purge"), 403, "permission_denied")
    assert await count_rows(engine, "customers") == 1


async def test_audit_trail_field_level_and_masked(client, engine, admin_user):
    w = await _world(engine)
    response = await client.post(
        "/v1/customers",
        json={
            "name": "审计客户",
            "owner_id": str(w["owner"]["id"]),
            "grade": "B",
            "tax_number": TAX,
            "bank_account": ACCOUNT,
            "tags": ["vip"],
            "custom_fields": {"erp": 1},
        },
        headers={"X-Request-ID": "req-create-1"},
    )
    assert response.status_code == 201, response.text
    customer = response.json()
    url = f"/v1/customers/{customer['id']}"
    patched = await client.patch(
        url,
        json={
            "grade": "A",
            "bank_account": "6222000011112222",
            "notes": "hello",
            "name": "审计客户",
        },  # name unchanged: not in the diff
        headers={"If-Match": '"1"', "X-Request-ID": "req-update-1"},
    )
    assert patched.status_code == 200, patched.text
    # a PATCH that changes nothing writes nothing
    noop = await client.patch(url, json={"grade": "A", "tags": ["vip"]})
    assert noop.status_code == 200 and noop.json()["version"] == 2
    assert (await client.delete(url, headers={"If-Match": '"2"'})).status_code == 204
    assert (await client.post(f"{url}/restore")).status_code == 200

    events = await _events(engine, customer["id"])
    assert [e["action"] for e in events] == ["create", "update", "delete", "restore"]
    for e in events:
        assert e["actor_type"] == "user" and e["actor_id"] == admin_user["id"]
        assert e["resource_type"] == "customers"
        assert e["owner_id"] == w["owner"]["id"] and e["org_unit_id"] == w["unit"]["id"]
    create, update, delete, restore = (e["changes"] for e in events)
    assert events[0]["request_id"] == "req-create-1"
    assert events[1]["request_id"] == "req-update-1"
    assert create["name"] == {"before": None, "after": "审计客户"}
    assert create["grade"] == {"before": None, "after": "B"}
    assert create["tags"] == {"before": None, "after": ["vip"]}
    assert create["custom_fields"] == {"before": None, "after": {"erp": 1}}
    assert create["tax_number"] == {"before": None, "after": "***"}
    assert create["bank_account"] == {"before": None, "after": "***"}
    assert "version" not in create and "updated_at" not in create
    assert update == {
        "grade": {"before": "B", "after": "A"},
        "bank_account": {"before": "***", "after": "***"},
        "notes": {"before": None, "after": "hello"},
    }
    assert set(delete) == {"deleted_at"} and delete["deleted_at"]["before"] is None
    assert restore["deleted_at"]["after"] is None
    # sensitive values are nowhere in the stored trail, not even inside other text
    async with engine.connect() as conn:
        raw = (await conn.execute(text("SELECT changes::text FROM audit_events"))).scalars().all()
    for blob in raw:
        assert TAX not in blob and ACCOUNT not in blob and "6222000011112222" not in blob
    # and the trail reads back through the API
    listed = await client.get("/v1/audit-events", params={"resource_id": customer["id"]})
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["data"]) == 4


async def test_etag_and_location_headers(client, engine):
    w = await _world(engine)
    response = await client.post(
        "/v1/customers", json={"name": "头", "owner_id": str(w["owner"]["id"])}
    )
    assert response.status_code == 201
    customer = response.json()
    url = f"/v1/customers/{customer['id']}"
    assert response.headers["location"] == url
    assert response.headers["etag"] == '"1"' and customer["version"] == 1
    assert response.headers["content-type"] == "application/json"
    got = await client.get(response.headers["location"])
    assert got.headers["etag"] == '"1"' and got.json() == customer
    # weak, listed and wildcard ETags match
    for if_match, version in (('W/"1"', 2), ('"7", "2"', 3), ("*", 4)):
        patched = await client.patch(
            url, json={"notes": f"v{version}"}, headers={"If-Match": if_match}
        )
        assert patched.status_code == 200, (if_match, patched.text)
        assert patched.headers["etag"] == f'"{version}"' == f'"{patched.json()["version"]}"'
        assert (await client.get(url)).headers["etag"] == f'"{version}"'
    assert patched.json()["updated_at"] > customer["updated_at"]
    assert patched.json()["created_at"] == customer["created_at"]
    problem(await client.delete(url, headers={"If-Match": '"3"'}), 412, "version_mismatch")
    deleted = await client.delete(url, headers={"If-Match": '"4"'})
    assert deleted.status_code == 204 and deleted.content == b""


async def test_json_media_types_accepted(client, engine):
    w = await _world(engine)
    for ctype in (
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "APPLICATION/JSON",
    ):
        response = await client.post(
            "/v1/customers",
            content=orjson.dumps({"name": ctype, "owner_id": str(w["owner"]["id"])}),
            headers={"Content-Type": ctype},
        )
        assert response.status_code == 201, (ctype, response.text)


async def test_idempotency_replay(client, client_for, engine):
    w = await _world(engine)
    body = {"name": "重放", "owner_id": str(w["owner"]["id"]), "external_ref": "order-7"}
    headers = {"Idempotency-Key": "key-1"}
    first = await client.post("/v1/customers", json=body, headers=headers)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # the stored response is replayed byte for byte, even after the customer changed
    await client.patch(first.headers["location"], json={"grade": "A"})
    replay = await client.post("/v1/customers", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    assert replay.headers["location"] == first.headers["location"]
    assert replay.headers["etag"] == '"1"'
    # key order and whitespace in the body do not make it another request
    reordered = await client.post(
        "/v1/customers",
        content=orjson.dumps(dict(reversed(list(body.items())))),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert reordered.status_code == 201 and reordered.content == first.content
    assert await count_rows(engine, "customers") == 1
    assert await count_rows(engine, "audit_events", "action = 'create'") == 1
    # the same key with another body is refused
    problem(
        await client.post("/v1/customers", json={**body, "name": "other"}, headers=headers),
        422,
        "idempotency_key_reused",
    )
    # keys belong to their principal: another caller's identical key is its own request
    rep = await client_for(w["rep"])
    theirs = await rep.post("/v1/customers", json={"name": "rep's"}, headers=headers)
    assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers
    assert await count_rows(engine, "customers") == 2


async def test_failed_requests_are_not_replayed(client, engine):
    """An error is not stored under the key: fixing the request and retrying works."""
    w = await _world(engine)
    await create_customer(client, w["owner"], external_ref="taken")
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"name": "x", "owner_id": str(w["owner"]["id"]), "external_ref": "taken"}
    problem(
        await client.post("/v1/customers", json=body, headers=headers), 409, "customer_duplicate"
    )
    again = await client.post("/v1/customers", json=body, headers=headers)
    problem(again, 409, "customer_duplicate")
    assert "idempotent-replayed" not in again.headers
    assert await count_rows(engine, "idempotency_keys") == 0
    fixed = await client.post(
        "/v1/customers", json={**body, "external_ref": "free"}, headers=headers
    )
    assert fixed.status_code == 201, fixed.text
    assert await count_rows(engine, "idempotency_keys") == 1


async def test_patch_sending_the_unchanged_owner_needs_no_assign(client, client_for, engine):
    """A client that GETs a customer and PATCHes it back whole is not asking to reassign it:
    ``assign`` is needed only when owner_id or org_unit_id actually change."""
    world = await _world(engine)
    elsewhere = await make_org_unit(engine, "Elsewhere")
    customer = await create_customer(client, world["rep"])
    url = f"/v1/customers/{customer['id']}"
    as_rep = await client_for(world["rep"])  # sales_rep: update (own), no assign
    got = (await as_rep.get(url)).json()
    same = await as_rep.patch(
        url,
        json={
            "name": "Renamed",
            "owner_id": got["owner_id"],
            "org_unit_id": got["org_unit_id"],
        },
    )
    assert same.status_code == 200, same.text
    assert same.json()["name"] == "Renamed" and same.json()["owner_id"] == got["owner_id"]
    problem(
        await as_rep.patch(url, json={"owner_id": str(world["owner"]["id"])}),
        403,
        "assign_not_allowed",
    )
    problem(
        await as_rep.patch(
            url, json={"owner_id": got["owner_id"], "org_unit_id": str(elsewhere["id"])}
        ),
        403,
        "assign_not_allowed",
    )
    stored = (await as_rep.get(url)).json()
    assert (stored["owner_id"], stored["org_unit_id"]) == (got["owner_id"], got["org_unit_id"])
