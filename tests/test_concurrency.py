"""Real concurrency: many requests in flight at once through the ASGI app, each with its
own database connection and transaction, against one record or one key."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user

N = 12


async def _owner(engine) -> dict[str, Any]:
    return await make_user(engine, org_unit=await make_org_unit(engine))


async def _gather(*requests: Any) -> list[httpx.Response]:
    return list(await asyncio.gather(*requests))


async def _audit(engine, customer_id: str, action: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT * FROM audit_events WHERE resource_id = :id AND action = :a"),
            {"id": customer_id, "a": action},
        )
        return [dict(r) for r in rows.mappings()]


async def test_same_if_match_exactly_one_wins(client, engine):
    customer = await create_customer(client, await _owner(engine))
    url = f"/v1/customers/{customer['id']}"
    responses = await _gather(
        *(
            client.patch(url, json={"notes": f"writer {i}"}, headers={"If-Match": '"1"'})
            for i in range(N)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [412] * (N - 1), statuses
    (winner,) = [r for r in responses if r.status_code == 200]
    for r in responses:
        if r.status_code == 412:
            assert problem(r, 412, "version_mismatch")["current_version"] == 2
    final = (await client.get(url)).json()
    assert final["version"] == 2
    assert final["notes"] == winner.json()["notes"]
    events = await _audit(engine, customer["id"], "update")
    assert len(events) == 1
    assert events[0]["changes"] == {"notes": {"before": None, "after": final["notes"]}}


async def test_same_if_match_delete_and_patch_race(client, engine):
    """A delete and patches holding the same ETag: one of them wins, the rest get 412."""
    customer = await create_customer(client, await _owner(engine))
    url = f"/v1/customers/{customer['id']}"
    responses = await _gather(
        client.delete(url, headers={"If-Match": '"1"'}),
        *(client.patch(url, json={"grade": "A"}, headers={"If-Match": '"1"'}) for _ in range(5)),
    )
    ok = [r for r in responses if r.status_code in (200, 204)]
    assert len(ok) == 1, [r.status_code for r in responses]
    for r in responses:
        if r not in ok:
            # a patch after the delete finds nothing (404); anything else is a stale ETag
            assert r.status_code in (404, 412), r.text
            problem(r, r.status_code)
    changes = await count_rows(
        engine, "audit_events", f"resource_id = '{customer['id']}' AND action <> 'create'"
    )
    assert changes == 1


async def test_no_lost_update_without_if_match(client, engine):
    customer = await create_customer(client, await _owner(engine))
    url = f"/v1/customers/{customer['id']}"
    patches = [
        {"grade": "A"},
        {"credit_level": 4},
        {"industry": "制造业"},
        {"region": "华东"},
        {"address": "上海市浦东新区"},
        {"phone": "+86 21 5555 0101"},
        {"email": "info@example.cn"},
        {"website": "https://example.cn"},
        {"bank_name": "ICBC"},
        {"notes": "concurrent"},
        {"source": "web"},
        {"size": "51-200"},
    ]
    assert len(patches) >= 10
    responses = await _gather(*(client.patch(url, json=p) for p in patches))
    assert [r.status_code for r in responses] == [200] * len(patches), [
        r.text for r in responses if r.status_code != 200
    ]
    assert sorted(r.json()["version"] for r in responses) == list(range(2, len(patches) + 2))
    final = (await client.get(url)).json()
    for p in patches:
        for field, value in p.items():
            assert final[field] == value, (field, final[field])
    assert final["version"] == len(patches) + 1
    assert len(await _audit(engine, customer["id"], "update")) == len(patches)


async def test_same_idempotency_key_one_effect(client, engine):
    owner = await _owner(engine)
    body = {"name": "幂等客户", "owner_id": str(owner["id"]), "tags": ["vip"]}
    key = str(uuid.uuid4())
    responses = await _gather(
        *(
            client.post("/v1/customers", json=body, headers={"Idempotency-Key": key})
            for _ in range(N)
        )
    )
    assert [r.status_code for r in responses] == [201] * N, [r.text for r in responses]
    assert await count_rows(engine, "customers") == 1
    assert await count_rows(engine, "audit_events", "action = 'create'") == 1
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(replayed) == N - 1
    first = next(r for r in responses if r not in replayed)
    for r in responses:
        assert r.content == first.content
        assert r.headers["location"] == first.headers["location"]
        assert r.headers["etag"] == first.headers["etag"] == '"1"'
        assert r.headers["content-type"] == "application/json"
    assert first.headers["location"] == f"/v1/customers/{first.json()['id']}"
    # a later retry replays too, and a GET agrees
    again = await client.post("/v1/customers", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert (await client.get(first.headers["location"])).json() == first.json()


async def test_same_idempotency_key_different_body_is_422(client, engine):
    owner = await _owner(engine)
    key = "order-42"
    a = {"name": "A", "owner_id": str(owner["id"])}
    b = {"name": "B", "owner_id": str(owner["id"])}
    # at once: whichever body wins, the other body's requests are refused
    responses = await _gather(
        *(
            client.post("/v1/customers", json=a if i % 2 else b, headers={"Idempotency-Key": key})
            for i in range(N)
        )
    )
    assert await count_rows(engine, "customers") == 1
    won = {r.json()["name"] for r in responses if r.status_code == 201}
    assert len(won) == 1, [r.text for r in responses]
    (winner_name,) = won
    for i, r in enumerate(responses):
        sent = (a if i % 2 else b)["name"]
        if sent == winner_name:
            assert r.status_code == 201, r.text
        else:
            problem(r, 422, "idempotency_key_reused")
    # afterwards, sequentially, the same holds; an extra field is a different body too
    loser = a if winner_name == "B" else b
    problem(
        await client.post("/v1/customers", json=loser, headers={"Idempotency-Key": key}),
        422,
        "idempotency_key_reused",
    )
    winner = b if winner_name == "B" else a
    problem(
        await client.post(
            "/v1/customers", json={**winner, "grade": "A"}, headers={"Idempotency-Key": key}
        ),
        422,
        "idempotency_key_reused",
    )
    # another key is another request
    other = await client.post("/v1/customers", json=loser, headers={"Idempotency-Key": "k2"})
    assert other.status_code == 201 and "idempotent-replayed" not in other.headers
    assert await count_rows(engine, "customers") == 2


async def test_same_external_ref_exactly_one_created(client, engine):
    owner = await _owner(engine)
    responses = await _gather(
        *(
            client.post(
                "/v1/customers",
                json={"name": f"dup {i}", "owner_id": str(owner["id"]), "external_ref": "shop-1"},
            )
            for i in range(N)
        )
    )
    created = [r for r in responses if r.status_code == 201]
    assert len(created) == 1, [r.status_code for r in responses]
    existing_id = created[0].json()["id"]
    for r in responses:
        if r.status_code != 201:
            body = problem(r, 409, "customer_duplicate")
            assert body["field"] == "external_ref"
            assert body["existing_id"] == existing_id, body
    assert await count_rows(engine, "customers") == 1
    assert await count_rows(engine, "audit_events") == 1


async def test_same_tax_number_exactly_one_created(client, engine):
    owner = await _owner(engine)
    responses = await _gather(
        *(
            client.post(
                "/v1/customers",
                json={
                    "name": f"tax {i}",
                    "owner_id": str(owner["id"]),
                    "tax_number": "91310000MA1FL0001X",
                },
            )
            for i in range(N)
        )
    )
    created = [r for r in responses if r.status_code == 201]
    assert len(created) == 1, [r.status_code for r in responses]
    for r in responses:
        if r.status_code != 201:
            body = problem(r, 409, "customer_duplicate")
            assert body["field"] == "tax_number"
            assert body["existing_id"] == created[0].json()["id"], body
    assert await count_rows(engine, "customers") == 1


@pytest.mark.parametrize(
    ("field", "spellings"),
    [
        ("email", ["li.wei@example.cn", " LI.Wei@Example.CN", "Li.Wei@example.cn "]),
        ("phone", ["+86 138 0013 8000", "0086 138-0013-8000", "+86 (138) 0013.8000 x12"]),
    ],
)
async def test_same_natural_key_exactly_one_created(client, engine, field, spellings):
    """No check before the INSERT: the unique index decides among concurrent creates of
    one e-mail (phone), spelt three ways, and each loser's 409 names the winner, found
    after its own INSERT failed."""
    owner = await _owner(engine)
    responses = await _gather(
        *(
            client.post(
                "/v1/customers",
                json={"name": f"key {i}", "owner_id": str(owner["id"]), field: spellings[i % 3]},
            )
            for i in range(N)
        )
    )
    created = [r for r in responses if r.status_code == 201]
    assert len(created) == 1, [r.status_code for r in responses]
    for r in responses:
        if r.status_code != 201:
            body = problem(r, 409, "customer_duplicate")
            assert body["field"] == field
            assert body["existing_id"] == created[0].json()["id"], body
    assert await count_rows(engine, "customers") == 1
    assert await count_rows(engine, "audit_events") == 1


async def test_same_email_with_idempotency_keys_one_created_no_409_stored(client, engine):
    """Each request its own Idempotency-Key: one 201 (its key stored, replayed), the
    others 409 — refused after their INSERT (and its folded claim) failed, so no key of
    theirs is kept: a retry of one is decided afresh, a 201 once the e-mail is free."""
    owner = await _owner(engine)
    body = {"name": "Keyed", "owner_id": str(owner["id"]), "email": "keyed@example.cn"}
    responses = await _gather(
        *(
            client.post("/v1/customers", json=body, headers={"Idempotency-Key": f"ck-{i}"})
            for i in range(N)
        )
    )
    won = [i for i, r in enumerate(responses) if r.status_code == 201]
    assert len(won) == 1, [r.text for r in responses]
    winner = responses[won[0]].json()
    for r in responses:
        if r.status_code != 201:
            assert problem(r, 409, "customer_duplicate")["existing_id"] == winner["id"]
    assert await count_rows(engine, "idempotency_keys") == 1
    assert await count_rows(engine, "customers") == 1
    replay = await client.post(
        "/v1/customers", json=body, headers={"Idempotency-Key": f"ck-{won[0]}"}
    )
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == winner
    loser = next(i for i in range(N) if i != won[0])
    headers = {"Idempotency-Key": f"ck-{loser}"}
    problem(await client.post("/v1/customers", json=body, headers=headers), 409)
    assert (await client.delete(f"/v1/customers/{winner['id']}")).status_code == 204
    retried = await client.post("/v1/customers", json=body, headers=headers)
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert await count_rows(engine, "idempotency_keys") == 2


async def test_write_blocked_past_the_lock_timeout(client, engine, app, settings, database_url):
    """A row held by a long transaction: the write gives up at lock_timeout with a 409
    asking to retry (or, past statement_timeout, a 503), and changes nothing."""
    from crm_api.db.engine import create_database

    customer = await create_customer(client, await _owner(engine))
    url = f"/v1/customers/{customer['id']}"
    real = app.state.db
    try:
        async with engine.connect() as holder:
            await holder.execute(
                text("SELECT 1 FROM customers WHERE id = :id FOR UPDATE"), {"id": customer["id"]}
            )
            for update, status, code in (
                ({"db_lock_timeout_ms": 200}, 409, "concurrent_update"),
                ({"db_lock_timeout_ms": 0, "db_statement_timeout_ms": 200}, 503, "query_timeout"),
            ):
                app.state.db = create_database(settings.model_copy(update=update), database_url)
                try:
                    response = await client.patch(url, json={"grade": "A"})
                    problem(response, status, code)
                    if status == 409:
                        assert response.headers["retry-after"] == "1"
                finally:
                    await app.state.db.dispose()
                    app.state.db = real
            await holder.rollback()
    finally:
        app.state.db = real
    final = (await client.get(url)).json()
    assert final["version"] == 1 and final["grade"] is None
    assert await count_rows(engine, "audit_events", "action = 'update'") == 0
