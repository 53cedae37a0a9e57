"""``include_total`` is exact up to the count cap and the planner's estimate above it
(``total_is_estimate: true``), for every list: the kit's (customers, contacts) and the
plain repositories' (audit events). The cap is set low through the app's settings, as
``create_app(settings)`` would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from crm_api.kit.counting import DEFAULT_COUNT_CAP, count_total, estimate, estimated_rows
from crm_api.models.contact import Contact
from crm_api.models.customer import Customer
from factories.identity import make_org_unit, make_user

CAP = 5


@pytest.fixture
async def capped(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.settings
    app.state.settings = settings.model_copy(update={"list_count_cap": CAP})
    try:
        yield
    finally:
        app.state.settings = settings


async def _customers(engine: AsyncEngine, owner: dict[str, Any], n: int, **values: Any) -> list:
    rows = [
        {
            "id": uuid.uuid4(),
            "name": f"客户 {i}",
            "type": "company",
            "tags": [],
            "custom_fields": {},
            "owner_id": owner["id"],
            "org_unit_id": owner["org_unit_id"],
            "version": 1,
            **values,
        }
        for i in range(n)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(Customer.__table__), rows)
    return rows


@pytest.fixture
async def owner(engine: AsyncEngine) -> dict[str, Any]:
    return await make_user(engine, org_unit=await make_org_unit(engine, "East"))


async def _total(client: Any, path: str = "/v1/customers", **params: Any) -> tuple[Any, bool]:
    response = await client.get(path, params={"include_total": "true", "limit": 2, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["total"], body["total_is_estimate"]


async def test_no_total_unless_asked(client, engine, owner):
    await _customers(engine, owner, 3)
    body = (await client.get("/v1/customers")).json()
    assert body["total"] is None and body["total_is_estimate"] is False


async def test_the_default_cap_is_documented():
    assert DEFAULT_COUNT_CAP == 10_000


async def test_below_at_and_above_the_cap(client, engine, owner, capped):
    await _customers(engine, owner, CAP - 1)
    assert await _total(client) == (CAP - 1, False)  # below: exact
    await _customers(engine, owner, 1)
    assert await _total(client) == (CAP, False)  # at: exact
    await _customers(engine, owner, 1)
    total, estimated = await _total(client)  # above: an estimate, never below cap + 1
    assert estimated is True and total >= CAP + 1


async def test_above_the_cap_the_estimate_is_the_planners(client, engine, owner, capped):
    await _customers(engine, owner, 300)
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE customers"))
    total, estimated = await _total(client)
    assert estimated is True
    assert 150 <= total <= 600, total  # the statistics say ~300


async def test_filters_below_the_cap_stay_exact(client, engine, owner, capped):
    await _customers(engine, owner, 20)
    await _customers(engine, owner, 3, lifecycle_stage="customer")
    assert await _total(client, lifecycle_stage="customer") == (3, False)
    assert (await _total(client))[1] is True


async def test_the_scope_is_counted_not_the_table(client_for, engine, owner, capped):
    await _customers(engine, owner, 3)
    other = await make_user(engine, org_unit=await make_org_unit(engine, "West"))
    await _customers(engine, other, 20)
    rep = await client_for(owner)
    assert await _total(rep) == (3, False)


async def test_contacts_and_audit_events_are_capped_too(client, engine, owner, capped):
    customers = await _customers(engine, owner, 1)
    async with engine.begin() as conn:
        await conn.execute(
            insert(Contact.__table__),
            [
                {"id": uuid.uuid4(), "customer_id": customers[0]["id"], "name": f"王{i}"}
                for i in range(CAP + 2)
            ],
        )
    total, estimated = await _total(client, "/v1/contacts")
    assert estimated is True and total >= CAP + 1
    assert await _total(client, "/v1/contacts", is_primary="true") == (0, False)
    for i in range(CAP + 1):  # audited writes through the API
        response = await client.post("/v1/customers", json={"name": f"新客户 {i}"})
        assert response.status_code == 201, response.text
    total, estimated = await _total(client, "/v1/audit-events")
    assert estimated is True and total >= CAP + 1


async def test_the_estimate_reads_the_plan_on_every_read_path(engine, owner):
    """``Explain`` runs through SQLAlchemy's engine and an ORM session too
    (``CRM_READ_PATH=engine``, a write transaction), not only the asyncpg reader the
    endpoints above used — and again from SQLAlchemy's compiled cache (the second call
    failed once: the cached result columns were matched against the EXPLAIN construct)."""
    await _customers(engine, owner, 7)
    for stage in ("lead", "customer", "lead"):
        stmt = select(Customer.id).where(Customer.lifecycle_stage == stage)
        async with engine.connect() as conn:
            assert estimated_rows((await conn.execute(estimate(stmt))).scalar_one()) >= 1
            counted = [await count_total(conn, stmt, 3)]
        async with AsyncSession(engine) as session:
            assert estimated_rows((await session.execute(estimate(stmt))).scalar_one()) >= 1
            counted.append(await count_total(session, stmt, 3))
        for total, estimated in counted:  # 7 leads (the default stage), no customer
            assert (
                (estimated and total >= 4) if stage == "lead" else (total, estimated) == (0, False)
            )


def test_the_envelope_documents_the_flag(app: FastAPI):
    page = app.openapi()["components"]["schemas"]["Page_Customer_"]
    flag = page["properties"]["total_is_estimate"]
    assert flag["type"] == "boolean" and "estimate" in flag["description"]
