"""The kit's create path is lean (issue 8): a create is one statement — the record and its
audit event in one INSERT with a data-modifying CTE, no user lookup when the caller owns
the record, no re-read for masking — and an ``Idempotency-Key`` adds one: the key is
claimed inside the record's statement (an expired key taken over by the claim itself),
and the response is stored after it.

Counted at the SQLAlchemy engine (``before_cursor_execute``), as test_auth_round_trips.py
does; the policy poller's own statements are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, text

from conftest import problem
from factories.identity import make_org_unit, make_user

BANK = "6222021001123443445"


@contextmanager
def counted(app: Any) -> Iterator[list[str]]:
    statements: list[str] = []

    def on_execute(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        # the policy poller and the tokens' last-use flush run on their own schedule
        if "authz_state" not in sql and "SET last_used_at" not in sql:
            statements.append(" ".join(sql.split()))

    sync_engine = app.state.db.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", on_execute)
    try:
        yield statements
    finally:
        event.remove(sync_engine, "before_cursor_execute", on_execute)


async def _events(engine: Any, customer_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT action, changes, owner_id, org_unit_id, actor_id FROM audit_events "
                "WHERE resource_id = :id"
            ),
            {"id": customer_id},
        )
        return [dict(r._mapping) for r in rows]


@pytest.mark.parametrize("role", ["admin", "sales_rep", "sales_manager"])
async def test_a_create_is_one_statement_with_its_audit_event(app, engine, client_for, role):
    unit = await make_org_unit(engine)
    user = await make_user(engine, org_unit=unit, roles=(role,))
    caller = await client_for(user)
    # a policy reload pending from the setup would empty the principal cache mid-count
    await app.state.policy.refresh_if_changed(engine)
    assert (await caller.get("/v1/customers?limit=1")).status_code == 200  # warm principal
    with counted(app) as statements:
        response = await caller.post(
            "/v1/customers", json={"name": "Lean Ltd.", "bank_account": BANK, "tags": ["a"]}
        )
    assert response.status_code == 201, response.text
    assert len(statements) == 1, statements
    assert "INSERT INTO audit_events" in statements[0], statements
    assert "INSERT INTO customers" in statements[0], statements
    created = response.json()
    assert created["owner_id"] == str(user["id"]) and created["org_unit_id"] == str(unit["id"])
    assert created["version"] == 1 and created["deleted_at"] is None
    # the response is the record as a read shows it (masked alike: a rep lacks
    # read_sensitive), with the same ETag
    read = await caller.get(f"/v1/customers/{created['id']}")
    assert read.json() == created
    assert read.headers["etag"] == response.headers["etag"]
    assert created["bank_account"] == (BANK if role != "sales_rep" else "****3445")
    [audited] = await _events(engine, created["id"])
    assert audited["action"] == "create"
    assert str(audited["owner_id"]) == str(user["id"])
    assert str(audited["org_unit_id"]) == str(unit["id"])
    assert str(audited["actor_id"]) == str(user["id"])
    changes = audited["changes"]
    assert changes["bank_account"] == {"before": None, "after": "***"}
    assert changes["name"] == {"before": None, "after": "Lean Ltd."}
    assert changes["tags"] == {"before": None, "after": ["a"]}
    assert changes["id"] == {"before": None, "after": created["id"]}
    assert "version" not in changes and "updated_at" not in changes


async def test_per_record_masking_of_a_create_is_decided_in_its_statement(
    app, client, client_for, engine
):
    """A creator that may read sensitive fields in its own unit only, creating for owners
    in and outside it: the flag comes back with the INSERT (no extra statement)."""
    root = await make_org_unit(engine, "Root", kind="group")
    home = await make_org_unit(engine, "Home", parent=root)
    away = await make_org_unit(engine, "Away", parent=root)
    role = (await client.post("/v1/roles", json={"name": "wide_creator"})).json()
    for action, scope in (
        ("read", "all"),
        ("create", "all"),
        ("assign", "all"),
        ("read_sensitive", "org_unit"),
    ):
        granted = await client.post(
            f"/v1/roles/{role['id']}/grants",
            json={"resource": "customers", "action": action, "scope": scope},
        )
        assert granted.status_code == 201, granted.text
    creator = await make_user(engine, roles=("wide_creator",), org_unit=home)
    as_creator = await client_for(creator)
    assert (await as_creator.get("/v1/customers?limit=1")).status_code == 200
    here = await as_creator.post("/v1/customers", json={"name": "Here", "bank_account": BANK})
    assert here.status_code == 201, here.text
    assert here.json()["bank_account"] == BANK
    with counted(app) as statements:
        there = await as_creator.post(
            "/v1/customers",
            json={"name": "There", "bank_account": BANK, "org_unit_id": str(away["id"])},
        )
    assert there.status_code == 201, there.text
    assert there.json()["bank_account"] == "****3445"
    assert (await as_creator.get(f"/v1/customers/{there.json()['id']}")).json() == there.json()
    assert not any("read_sensitive" in s or s.startswith("SELECT anon") for s in statements)


async def test_an_idempotent_create_adds_one_statement_and_takes_over_expired_keys(
    app, engine, client_for
):
    unit = await make_org_unit(engine)
    user = await make_user(engine, org_unit=unit, roles=("sales_rep",))
    caller = await client_for(user)
    assert (await caller.get("/v1/customers?limit=1")).status_code == 200
    headers = {"Idempotency-Key": "lean-create-1"}
    with counted(app) as statements:
        first = await caller.post("/v1/customers", json={"name": "Once"}, headers=headers)
    assert first.status_code == 201, first.text
    # claim the key (insert, or take over an expired one) with the record + its event in
    # one statement (both selected from the claim's RETURNING), then the stored response
    assert len(statements) == 2, statements
    assert statements[0].startswith("WITH idempotency_claim AS (INSERT INTO idempotency_keys")
    assert "ON CONFLICT" in statements[0]
    assert "INSERT INTO customers" in statements[0]
    assert "INSERT INTO audit_events" in statements[0]
    assert statements[1].startswith("UPDATE idempotency_keys"), statements
    replay = await caller.post("/v1/customers", json={"name": "Once"}, headers=headers)
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    reused = await caller.post("/v1/customers", json={"name": "Twice"}, headers=headers)
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    # a day later the key is free again: the claim takes the expired row over
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE idempotency_keys SET created_at = created_at - interval '25 hours' "
                "WHERE key = 'lean-create-1'"
            )
        )
    again = await caller.post("/v1/customers", json={"name": "Twice"}, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["id"] != first.json()["id"]
    replay = await caller.post("/v1/customers", json={"name": "Twice"}, headers=headers)
    assert replay.json() == again.json()


async def test_a_retry_replays_though_its_checks_would_now_refuse_it(app, engine, client_for):
    """The claim runs in the record's INSERT, after the duplicate check: a retry of a
    create with an external_ref finds its own first record a duplicate, and still gets
    the first response (the claim is then run on its own and finds the key live)."""
    unit = await make_org_unit(engine)
    user = await make_user(engine, org_unit=unit, roles=("sales_rep",))
    caller = await client_for(user)
    headers = {"Idempotency-Key": "retry-with-external-ref"}
    body = {"name": "Retried Ltd.", "external_ref": "retry-ext-1"}
    first = await caller.post("/v1/customers", json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await caller.post("/v1/customers", json=body, headers=headers)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other = await caller.post(
        "/v1/customers", json=body, headers={"Idempotency-Key": "retry-with-external-ref-2"}
    )
    assert other.status_code == 409 and other.json()["code"] == "customer_duplicate"
    async with engine.connect() as conn:
        keys = await conn.scalar(
            text("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'retry-with-external%'")
        )
    assert keys == 1


# --- natural keys: the unique indexes decide -----------------------------------------------
KEYED = {
    "email": "Keys@Example.cn",
    "phone": "+86 21 5555 0199",
    "tax_number": "91310000MA1KEYS01X",
    "external_ref": "keys-1",
}


async def _warm_caller(app, engine, client_for, role: str = "sales_rep") -> Any:
    user = await make_user(engine, org_unit=await make_org_unit(engine), roles=(role,))
    caller = await client_for(user)
    await app.state.policy.refresh_if_changed(engine)
    assert (await caller.get("/v1/customers?limit=1")).status_code == 200  # warm principal
    return caller


async def test_a_create_with_natural_keys_is_one_statement_and_two_with_a_key(
    app, engine, client_for
):
    """The e-mail, phone, tax number and external_ref are unique, and their indexes say
    so: no advisory lock, no look-up before the INSERT (3 statements, 4 with an
    Idempotency-Key, until the indexes decided)."""
    caller = await _warm_caller(app, engine, client_for)
    with counted(app) as statements:
        plain = await caller.post("/v1/customers", json={"name": "Keys Ltd.", **KEYED})
    assert plain.status_code == 201, plain.text
    assert len(statements) == 1, statements
    assert "INSERT INTO customers" in statements[0], statements
    assert "INSERT INTO audit_events" in statements[0], statements
    keyed = {k: v.replace("1", "2").replace("Keys", "Keyed") for k, v in KEYED.items()}
    with counted(app) as statements:
        claimed = await caller.post(
            "/v1/customers",
            json={"name": "Keyed Ltd.", **keyed},
            headers={"Idempotency-Key": "keys-create-1"},
        )
    assert claimed.status_code == 201, claimed.text
    assert len(statements) == 2, statements
    assert statements[0].startswith("WITH idempotency_claim AS"), statements
    assert statements[1].startswith("UPDATE idempotency_keys"), statements
    assert not any("pg_advisory" in s for s in statements)


@pytest.mark.parametrize(
    ("field", "respelt"),
    [
        ("email", " keys@EXAMPLE.cn"),
        ("phone", "0086 (21) 5555-0199"),
        ("tax_number", KEYED["tax_number"]),
        ("external_ref", KEYED["external_ref"]),
    ],
)
async def test_a_duplicate_is_found_after_the_insert_fails(
    app, engine, client, client_for, field, respelt
):
    """A taken key: the INSERT fails on the field's unique index (its transaction rolled
    back: nothing written), then one look-up finds the holder and one more decides whether
    the caller may see it — the same 409 as before, paid only by the duplicate."""
    holder = (await client.post("/v1/customers", json={"name": "Holder", **KEYED})).json()
    caller = await _warm_caller(app, engine, client_for, "admin")
    with counted(app) as statements:
        refused = await caller.post("/v1/customers", json={"name": "Second", field: respelt})
    body = problem(refused, 409, "customer_duplicate")
    assert body["field"] == field and body["existing_id"] == holder["id"]
    assert "INSERT INTO customers" in statements[0], statements
    assert len(statements) == 3, statements
    assert not any("pg_advisory" in s for s in statements)
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM customers")) == 1
        assert await conn.scalar(text("SELECT count(*) FROM audit_events")) == 1


async def test_a_patch_of_a_key_is_the_lock_and_the_update(app, engine, client_for):
    caller = await _warm_caller(app, engine, client_for)
    made = (await caller.post("/v1/customers", json={"name": "Moving"})).json()
    url = f"/v1/customers/{made['id']}"
    with counted(app) as statements:
        patched = await caller.patch(
            url, json={"email": "moved@example.cn", "phone": "+86 21 5555 0188"}
        )
    assert patched.status_code == 200, patched.text
    # the row lock (with the If-Match check), the UPDATE, its audit event
    assert len(statements) == 3, statements
    assert not any("pg_advisory" in s for s in statements)
    other = (await caller.post("/v1/customers", json={"name": "Other"})).json()
    with counted(app) as statements:
        refused = await caller.patch(
            f"/v1/customers/{other['id']}", json={"email": "MOVED@example.cn"}
        )
    body = problem(refused, 409, "customer_duplicate")
    assert body["field"] == "email" and body["existing_id"] == made["id"]
    assert (await caller.get(f"/v1/customers/{other['id']}")).json()["version"] == 1
