"""Customers upserted by natural key: ``PUT /v1/customers/by-external-ref/{ref}`` and the
shared ``upsert_customer_by_natural_key`` that order POSTs call with a ``customer`` block.
On a real PostgreSQL; the concurrency claims with real concurrent transactions."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from crm_api.errors import Conflict
from factories.identity import make_org_unit, make_user

URL = "/v1/customers/by-external-ref"


async def _events(engine, customer_id: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT action FROM audit_events WHERE resource_id = :id ORDER BY occurred_at, id"
            ),
            {"id": customer_id},
        )
        return [r[0] for r in rows]


# --- outsider first ------------------------------------------------------------------------


async def test_out_of_scope_customer_is_a_409_that_names_nothing(client, client_for, engine):
    """A rep upserting a ref held by someone else's customer: the same 409 as a POST of a
    taken external_ref (no id, nothing changed), never an update of a record it cannot
    see."""
    taken = await client.put(f"{URL}/erp-1", json={"name": "Admin's customer"})
    assert taken.status_code == 201, taken.text
    rep = await client_for(await make_user(engine, roles=("sales_rep",)))
    body = problem(
        await rep.put(f"{URL}/erp-1", json={"name": "hijack"}), 409, "customer_duplicate"
    )
    assert body["field"] == "external_ref" and body.get("existing_id") is None
    posted = problem(
        await rep.post("/v1/customers", json={"name": "x", "external_ref": "erp-1"}), 409
    )
    assert posted["code"] == body["code"] and posted.get("existing_id") is None
    again = await client.get(f"/v1/customers/{taken.json()['id']}")
    assert again.json()["name"] == "Admin's customer" and again.json()["version"] == 1
    assert await count_rows(engine, "customers") == 1


async def test_a_deleted_holder_is_a_409_not_a_second_customer(client, engine):
    made = (await client.put(f"{URL}/erp-2", json={"name": "Gone"})).json()
    assert (await client.delete(f"/v1/customers/{made['id']}")).status_code == 204
    body = problem(await client.put(f"{URL}/erp-2", json={"name": "Back"}), 409)
    assert body["code"] == "customer_duplicate" and body["existing_id"] == made["id"]
    assert await count_rows(engine, "customers") == 1


# --- create and update ---------------------------------------------------------------------


async def test_put_creates_then_updates_only_what_is_sent(client, admin_user, engine):
    created = await client.put(
        f"{URL}/shop-cust-10042",
        json={"name": "李伟 Li Wei", "type": "individual", "email": "li.wei@example.cn"},
    )
    assert created.status_code == 201, created.text
    row = created.json()
    assert created.headers["location"] == f"/v1/customers/{row['id']}"
    assert created.headers["etag"] == '"1"'
    assert row["external_ref"] == "shop-cust-10042" and row["lifecycle_stage"] == "lead"
    assert row["created_by"] == str(admin_user["id"])
    assert row["owner_id"] == str(admin_user["id"])

    updated = await client.put(f"{URL}/shop-cust-10042", json={"name": "李伟", "region": "华东"})
    assert updated.status_code == 200, updated.text
    after = updated.json()
    assert after["id"] == row["id"] and after["version"] == 2
    assert after["region"] == "华东" and after["email"] == "li.wei@example.cn"  # kept
    assert after["type"] == "individual" and updated.headers["etag"] == '"2"'

    same = await client.put(f"{URL}/shop-cust-10042", json={"name": "李伟", "region": "华东"})
    assert same.status_code == 200 and same.json()["version"] == 2  # nothing changed
    assert await _events(engine, row["id"]) == ["create", "update"]
    assert await count_rows(engine, "customers") == 1
    async with engine.connect() as conn:
        event = (
            await conn.execute(
                text(
                    "SELECT actor_type, actor_id, owner_id, changes, request_id FROM audit_events"
                    " WHERE resource_id = :id AND action = 'create'"
                ),
                {"id": row["id"]},
            )
        ).one()
    assert event.actor_type == "user" and event.actor_id == admin_user["id"]
    assert event.owner_id == admin_user["id"] and event.request_id
    assert event.changes["name"] == {"before": None, "after": "李伟 Li Wei"}
    assert event.changes["external_ref"]["after"] == "shop-cust-10042"


async def test_if_match_is_honoured_on_update_and_refused_on_create(client, engine):
    problem(
        await client.put(f"{URL}/erp-3", json={"name": "A"}, headers={"If-Match": '"1"'}),
        412,
        "version_mismatch",
    )
    assert await count_rows(engine, "customers") == 0
    made = await client.put(f"{URL}/erp-3", json={"name": "A"})
    stale = await client.put(f"{URL}/erp-3", json={"name": "B"}, headers={"If-Match": '"7"'})
    problem(stale, 412, "version_mismatch")
    fresh = await client.put(
        f"{URL}/erp-3", json={"name": "B"}, headers={"If-Match": made.headers["etag"]}
    )
    assert fresh.status_code == 200 and fresh.json()["name"] == "B"


async def test_if_match_required_by_the_server_is_a_428_on_update(app, client, engine):
    await client.put(f"{URL}/erp-4", json={"name": "A"})
    app.state.settings.require_if_match = True
    try:
        problem(await client.put(f"{URL}/erp-4", json={"name": "B"}), 428, "if_match_required")
        created = await client.put(f"{URL}/erp-5", json={"name": "new"})
        assert created.status_code == 201  # nothing to match on a create
    finally:
        app.state.settings.require_if_match = False


async def test_idempotency_key_replays_and_refuses_another_body(client, engine):
    headers = {"Idempotency-Key": "sync-42"}
    first = await client.put(f"{URL}/erp-6", json={"name": "A"}, headers=headers)
    assert first.status_code == 201
    # changed meanwhile: the retry still answers what the first call did
    await client.put(f"{URL}/erp-6", json={"name": "changed"})
    replay = await client.put(f"{URL}/erp-6", json={"name": "A"}, headers=headers)
    assert replay.status_code == 201 and replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    problem(
        await client.put(f"{URL}/erp-6", json={"name": "B"}, headers=headers),
        422,
        "idempotency_key_reused",
    )
    assert await count_rows(engine, "customers") == 1


async def test_bad_input_writes_nothing(client, engine):
    for body in (
        {},
        {"name": ""},
        {"name": "x", "external_ref": "other"},  # the ref is the path's
        {"name": "x", "id": str(uuid.uuid4())},
        {"name": "x", "version": 3},
        {"name": "x", "created_by": str(uuid.uuid4())},
        {"name": "x", "credit_level": "high"},
        {"name": "x", "type": None},
        {"name": "x", "email": "not-an-email"},
    ):
        problem(await client.put(f"{URL}/erp-7", json=body), 422)
    problem(await client.put(f"{URL}/{'r' * 201}", json={"name": "x"}), 422)
    assert await count_rows(engine, "customers") == 0
    assert await count_rows(engine, "audit_events") == 0


# --- masking and placement -----------------------------------------------------------------


async def test_masked_values_never_overwrite_the_real_ones(client, client_for, engine):
    rep_user = await make_user(engine, roles=("sales_rep",))
    rep = await client_for(rep_user)
    problem(
        await rep.put(f"{URL}/erp-8", json={"name": "A", "bank_account": "****3445"}),
        422,
        "masked_value",
    )
    made = await rep.put(f"{URL}/erp-8", json={"name": "A", "bank_account": "6222020200112233445"})
    assert made.status_code == 201 and made.json()["bank_account"] == "****3445"
    echoed = await rep.put(f"{URL}/erp-8", json={"name": "A", "bank_account": "****3445"})
    assert echoed.status_code == 200 and echoed.json()["version"] == 1
    problem(
        await rep.put(f"{URL}/erp-8", json={"name": "A", "bank_account": "XXXX-XXXX-3445"}),
        422,
        "masked_value",
    )
    real = await client.get(f"/v1/customers/{made.json()['id']}")
    assert real.json()["bank_account"] == "6222020200112233445"


async def test_placement_rule_applies(client, client_for, engine):
    north = await make_org_unit(engine, "North")
    south = await make_org_unit(engine, "South")
    manager = await make_user(engine, roles=("sales_manager",), org_unit=north)
    outsider = await make_user(engine, roles=("sales_rep",), org_unit=south)
    rep = await client_for(await make_user(engine, roles=("sales_rep",), org_unit=north))
    problem(
        await rep.put(f"{URL}/erp-9", json={"name": "A", "owner_id": str(manager["id"])}),
        403,
        "assign_not_allowed",
    )
    boss = await client_for(manager)
    problem(
        await boss.put(f"{URL}/erp-9", json={"name": "A", "owner_id": str(outsider["id"])}),
        422,
    )
    assert await count_rows(engine, "customers") == 0


# --- natural keys under concurrency ----------------------------------------------------------


async def test_twenty_concurrent_puts_of_one_new_ref_make_one_customer(client, engine):
    responses = await asyncio.gather(
        *(client.put(f"{URL}/shop-new-buyer", json={"name": f"Buyer {i}"}) for i in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await count_rows(engine, "customers") == 1
    assert await count_rows(engine, "audit_events", "action = 'create'") == 1


def _rights(app, user: dict[str, Any]):
    """The customer rights of ``user`` as an order POST resolves them."""
    from crm_api.authz.types import Principal, PrincipalKind
    from crm_api.customer import service

    principal = Principal(
        kind=PrincipalKind.user,
        id=user["id"],
        name="t",
        roles=frozenset(),
        org_unit_id=user.get("org_unit_id"),
    )
    return service.upsert_access(app.state.policy, principal)


async def _upsert_in_own_transaction(app, rights, block: dict[str, Any]):
    from crm_api.customer import service
    from crm_api.customer.schemas import CustomerUpsert

    async with app.state.db.sessionmaker() as session, session.begin():
        return await service.upsert_customer_by_natural_key(
            session, rights, CustomerUpsert.model_validate(block)
        )


@pytest.mark.parametrize(
    ("spellings", "field"),
    [
        (["li.wei@example.cn", " LI.Wei@Example.CN", "Li.Wei@example.cn "], "email"),
        (["+86 138 0013 8000", "0086 138-0013-8000", "+86 (138) 0013.8000 x12"], "phone"),
    ],
)
async def test_twenty_concurrent_orders_of_one_new_buyer_make_one_customer(
    app, client, admin_user, engine, spellings, field
):
    """Orders posted at once for one new buyer (the key spelt three ways) upsert one
    customer: INSERT … ON CONFLICT on the key's unique index, each in its own transaction."""
    await app.state.policy.load(engine)
    rights = _rights(app, admin_user)
    results = await asyncio.gather(
        *(
            _upsert_in_own_transaction(app, rights, {"name": "李伟", field: spellings[i % 3]})
            for i in range(20)
        )
    )
    assert sum(r.created for r in results) == 1
    assert len({r.id for r in results}) == 1
    assert await count_rows(engine, "customers") == 1
    async with engine.connect() as conn:
        kind = (await conn.execute(text("SELECT key_kind FROM customers"))).scalar_one()
    assert kind == field
    # a retry later finds the same one
    again = await _upsert_in_own_transaction(app, rights, {"name": "李伟", field: spellings[0]})
    assert again.id == results[0].id and not again.created


async def test_the_first_key_sent_that_a_customer_holds_finds_it(app, client, admin_user, engine):
    """``external_ref``, else the e-mail, else the phone: the first the block carries that
    some customer holds finds that customer, however it was written (POST, PATCH, an
    upsert). Until migration 0012 only an upsert's own key found a customer, so a buyer
    known by phone, or a CRM customer's e-mail, made a second customer."""
    await app.state.policy.load(engine)
    rights = _rights(app, admin_user)
    by_email = await _upsert_in_own_transaction(
        app, rights, {"name": "A", "email": "a@example.cn", "phone": "+86 138 0000 0001"}
    )
    assert by_email.created
    by_phone = await _upsert_in_own_transaction(
        app, rights, {"name": "A", "phone": "8613800000001"}
    )
    assert by_phone.id == by_email.id and not by_phone.created
    with_ref = await _upsert_in_own_transaction(
        app, rights, {"name": "A", "external_ref": "r1", "email": "A@Example.cn"}
    )
    assert with_ref.id == by_email.id and not with_ref.created
    assert with_ref.customer["external_ref"] == "r1"  # it had none: it takes the one sent
    # a customer made by POST: found by its external_ref, and by its e-mail
    posted = await client.post(
        "/v1/customers", json={"name": "P", "email": "p@example.cn", "external_ref": "r2"}
    )
    assert posted.status_code == 201, posted.text
    found = await _upsert_in_own_transaction(
        app, rights, {"name": "P2", "external_ref": "r2", "email": "p@example.cn"}
    )
    assert found.id == uuid.UUID(posted.json()["id"]) and not found.created
    assert found.customer["name"] == "P2"
    again = await _upsert_in_own_transaction(app, rights, {"name": "P", "email": "p@example.cn"})
    assert again.id == found.id and not again.created
    # found by e-mail, but another system's record: a 409 naming it, not a takeover
    with pytest.raises(Conflict) as refused:
        await _upsert_in_own_transaction(
            app, rights, {"name": "P", "external_ref": "r3", "email": "p@example.cn"}
        )
    assert refused.value.code == "customer_duplicate"
    assert refused.value.extra["field"] == "email"
    assert await count_rows(engine, "customers") == 2


async def test_a_block_without_a_key_is_refused():
    from pydantic import ValidationError

    from crm_api.customer.schemas import CustomerUpsert

    with pytest.raises(ValidationError, match="natural_key_missing"):
        CustomerUpsert.model_validate({"name": "nobody", "address": "somewhere"})


async def test_two_keyed_customers_cannot_come_to_share_an_email(app, client, admin_user, engine):
    await app.state.policy.load(engine)
    rights = _rights(app, admin_user)
    await _upsert_in_own_transaction(app, rights, {"name": "A", "email": "a@example.cn"})
    b = await _upsert_in_own_transaction(app, rights, {"name": "B", "email": "b@example.cn"})
    body = problem(await client.patch(f"/v1/customers/{b.id}", json={"email": "A@example.cn"}), 409)
    assert body["code"] == "customer_duplicate" and body["field"] == "email"


async def test_the_ref_in_the_path_is_trimmed_like_the_ref_in_a_body(client, engine):
    """Request bodies strip their strings, so a ``customer`` block's ``"ws1 "`` is
    ``ws1``; the path's ref must be the same key, or ``PUT …/ws1%20`` makes a second
    customer for the buyer an order's block calls ``ws1`` — and a blank ref is no key."""
    made = await client.put(f"{URL}/ws1", json={"name": "Trim"})
    assert made.status_code == 201, made.text
    for ref in ("ws1%20", "%20ws1", "%09ws1"):
        again = await client.put(f"{URL}/{ref}", json={"name": "Trim"})
        assert again.status_code == 200, (ref, again.text)
        assert again.json()["id"] == made.json()["id"]
        assert again.json()["external_ref"] == "ws1"
    for blank in ("%20", "%20%20", "%09"):
        problem(await client.put(f"{URL}/{blank}", json={"name": "Blank"}), 422)
    assert await count_rows(engine, "customers") == 1


async def test_twenty_concurrent_upserts_with_one_tax_number_make_one_customer(
    app, admin_user, engine
):
    """The insert yields to any of the customers' unique indexes (``ON CONFLICT DO
    NOTHING``): the losers find the winner by the key sent and update it, where a check of
    the tax number before the insert answered them 409 once the winner had committed."""
    await app.state.policy.load(engine)
    rights = _rights(app, admin_user)
    block = {"name": "Taxed", "email": "taxed@example.cn", "tax_number": "91310000MA1TAXED1"}
    results = await asyncio.gather(
        *(_upsert_in_own_transaction(app, rights, block) for _ in range(20))
    )
    assert sum(r.created for r in results) == 1
    assert len({r.id for r in results}) == 1
    assert await count_rows(engine, "customers") == 1
    assert await count_rows(engine, "audit_events", "action = 'create'") == 1


async def test_a_taken_tax_number_or_key_is_a_409_naming_its_holder(
    app, client, admin_user, engine
):
    """No look-up before the writes: a new buyer whose tax number another customer has is
    refused after the insert yielded to the index; an update that takes another
    customer's e-mail after the UPDATE failed on it (the caller's transaction rolled
    back; the holder found afterwards). Nothing of either is written."""
    await app.state.policy.load(engine)
    rights = _rights(app, admin_user)
    holder = await client.post(
        "/v1/customers",
        json={"name": "Holder", "email": "held@example.cn", "tax_number": "91310000MA1HELD01"},
    )
    assert holder.status_code == 201, holder.text
    with pytest.raises(Conflict) as refused:
        await _upsert_in_own_transaction(
            app,
            rights,
            {"name": "New", "email": "new@example.cn", "tax_number": "91310000MA1HELD01"},
        )
    assert refused.value.extra == {"field": "tax_number", "existing_id": holder.json()["id"]}
    other = await _upsert_in_own_transaction(app, rights, {"name": "B", "external_ref": "rb"})
    with pytest.raises(Conflict) as refused:
        await _upsert_in_own_transaction(
            app, rights, {"name": "B2", "external_ref": "rb", "email": " HELD@example.cn"}
        )
    assert refused.value.extra == {"field": "email", "existing_id": holder.json()["id"]}
    assert await count_rows(engine, "customers") == 2
    got = (await client.get(f"/v1/customers/{other.id}")).json()
    assert got["name"] == "B" and got["email"] is None and got["version"] == 1
