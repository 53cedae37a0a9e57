"""System settings (``/v1/settings``): typed and range-checked, audited with a diff, guarded
by If-Match, cached per worker and refreshed on every worker within a second of a change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from conftest import count_rows, problem, token_for
from crm_api.authz.state import settle
from crm_api.main import create_app
from crm_api.system_settings import SystemSettings
from crm_api.system_settings.store import effective
from factories.identity import make_org_unit, make_user

DEFAULTS = SystemSettings().model_dump(mode="json")


async def _events(engine: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT action, changes, actor_id FROM audit_events"
                " WHERE resource_type = 'system_settings' ORDER BY occurred_at, id"
            )
        )
        return [dict(r) for r in rows.mappings()]


async def test_every_internal_role_reads_the_defaults(client, client_for, anon_client, engine):
    unit = await make_org_unit(engine)
    for role in ("executive", "sales_manager", "sales_rep", "service_agent", "marketer", "staff"):
        reader = await client_for(await make_user(engine, roles=(role,), org_unit=unit))
        got = await reader.get("/v1/settings")
        assert got.status_code == 200, (role, got.text)
        assert got.json() == {**DEFAULTS, "version": 0}
        assert got.headers["etag"] == '"0"'
        problem(await reader.patch("/v1/settings", json={"amount_decimal_places": 3}), 403)
    partner = await client_for(await make_user(engine, roles=("partner",), org_unit=unit))
    problem(await partner.get("/v1/settings"), 403)
    problem(await anon_client.get("/v1/settings"), 401)
    assert DEFAULTS["amount_decimal_places"] == 2 and DEFAULTS["default_currency"] == "CNY"
    assert DEFAULTS["order_number_prefix"] == "SO-"
    assert await count_rows(engine, "system_settings") == 0


async def test_a_change_is_stored_audited_and_answered(client, engine, admin_user):
    changed = await client.patch(
        "/v1/settings",
        json={
            "amount_decimal_places": 0,
            "order_number_prefix": "WEB-",
            "sla_hours": {"urgent": 2, "high": 6, "normal": 24, "low": 96},
            "commission_rates": {"default": "0.05", "by_product_category": {"打印机": "0.1"}},
        },
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["version"] == 1 and changed.headers["etag"] == '"1"'
    assert body["amount_decimal_places"] == 0 and body["order_number_prefix"] == "WEB-"
    assert body["sla_hours"] == {"urgent": 2, "high": 6, "normal": 24, "low": 96}
    assert body["commission_rates"] == {
        "default": "0.05",
        "by_product_category": {"打印机": "0.1"},
    }
    assert body["default_currency"] == "CNY"  # untouched
    assert (await client.get("/v1/settings")).json() == body
    (event,) = await _events(engine)
    assert event["action"] == "update" and event["actor_id"] == admin_user["id"]
    assert event["changes"]["amount_decimal_places"] == {"before": 2, "after": 0}
    assert event["changes"]["sla_hours"]["before"]["urgent"] == 4
    assert set(event["changes"]) == {
        "amount_decimal_places",
        "order_number_prefix",
        "sla_hours",
        "commission_rates",
    }
    # only what differs from the defaults is stored
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT values FROM system_settings"))).scalar_one()
    assert set(stored) == set(event["changes"])
    # the same values again: nothing written, no event, same version
    again = await client.patch("/v1/settings", json={"amount_decimal_places": 0})
    assert again.json()["version"] == 1
    assert len(await _events(engine)) == 1
    # back to a default: the stored override goes away
    back = await client.patch("/v1/settings", json={"amount_decimal_places": 2})
    assert back.json()["version"] == 2
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT values FROM system_settings"))).scalar_one()
    assert "amount_decimal_places" not in stored


BAD = [
    ({"amount_decimal_places": 5}, "amount_decimal_places"),
    ({"amount_decimal_places": -1}, "amount_decimal_places"),
    ({"amount_decimal_places": "2"}, "amount_decimal_places"),
    ({"amount_decimal_places": 2.5}, "amount_decimal_places"),
    ({"amount_decimal_places": None}, "amount_decimal_places"),
    ({"default_currency": "XYZ"}, "default_currency"),
    ({"default_currency": "usd"}, "default_currency"),
    ({"order_number_prefix": "SO 1"}, "order_number_prefix"),
    ({"order_number_prefix": ""}, "order_number_prefix"),
    ({"order_number_prefix": "  "}, "order_number_prefix"),
    ({"contract_number_prefix": ""}, "contract_number_prefix"),
    ({"ticket_number_prefix": ""}, "ticket_number_prefix"),
    ({"ticket_number_prefix": "TK?"}, "ticket_number_prefix"),
    ({"order_number_prefix": "SO\u00e9"}, "order_number_prefix"),
    ({"order_number_prefix": "X" * 17}, "order_number_prefix"),
    ({"contract_number_prefix": "合同-"}, "contract_number_prefix"),
    ({"ticket_number_prefix": 7}, "ticket_number_prefix"),
    ({"contract_expiry_reminder_days": 366}, "contract_expiry_reminder_days"),
    ({"receivable_due_reminder_days": -1}, "receivable_due_reminder_days"),
    ({"sla_hours": {"urgent": 0, "high": 6, "normal": 24, "low": 96}}, "sla_hours"),
    ({"sla_hours": {"urgent": 2}}, "sla_hours"),
    ({"sla_hours": {"urgent": 2, "high": 6, "normal": 24, "low": 96, "p0": 1}}, "sla_hours"),
    ({"commission_rates": {"default": "1.5"}}, "commission_rates"),
    (
        {"commission_rates": {"default": "0.1", "by_product_category": {"": "0.1"}}},
        "commission_rates",
    ),
    ({"commission_rates": {"default": "0.000001"}}, "commission_rates"),
    ({"customer_pool_claim_limit": 100_001}, "customer_pool_claim_limit"),
    ({"customer_pool_return_days": 0}, "customer_pool_return_days"),
    ({"theme": "dark"}, "theme"),
    ({"version": 5}, "version"),
]


@pytest.mark.parametrize(("patch", "field"), BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
async def test_a_bad_value_or_unknown_setting_is_a_422_naming_it(client, engine, patch, field):
    body = problem(
        await client.patch("/v1/settings", json={"order_number_prefix": "OK-", **patch}),
        422,
        "validation_error",
    )
    assert [e["field"].split(".")[0] for e in body["errors"]] == [field] * len(body["errors"])
    # nothing written: not even the valid setting sent beside the bad one
    assert await count_rows(engine, "system_settings") == 0
    assert await _events(engine) == []
    assert (await client.get("/v1/settings")).json() == {**DEFAULTS, "version": 0}


async def test_if_match(client, app):
    problem(
        await client.patch(
            "/v1/settings", json={"default_currency": "USD"}, headers={"If-Match": '"3"'}
        ),
        412,
        "version_mismatch",
    )
    etag = (await client.get("/v1/settings")).headers["etag"]
    first = await client.patch(
        "/v1/settings", json={"default_currency": "USD"}, headers={"If-Match": etag}
    )
    assert first.status_code == 200, first.text
    problem(
        await client.patch(
            "/v1/settings", json={"default_currency": "EUR"}, headers={"If-Match": etag}
        ),
        412,
        "version_mismatch",
    )
    settings = app.state.settings
    app.state.settings = settings.model_copy(update={"require_if_match": True})
    try:
        problem(
            await client.patch("/v1/settings", json={"default_currency": "EUR"}),
            428,
            "if_match_required",
        )
    finally:
        app.state.settings = settings
    assert (await client.get("/v1/settings")).json()["default_currency"] == "USD"


async def test_concurrent_changes_lose_nothing(client, engine):
    """Eleven administrators' PATCHes at once, each a different setting: all of them land,
    one version each (the row lock serializes them)."""
    patches = [
        {"order_number_prefix": "A-"},
        {"contract_number_prefix": "B-"},
        {"ticket_number_prefix": "C-"},
        {"amount_decimal_places": 3},
        {"default_currency": "HKD"},
        {"contract_expiry_reminder_days": 10},
        {"receivable_due_reminder_days": 3},
        {"customer_pool_claim_limit": 7},
        {"customer_pool_return_days": 60},
        {"sla_hours": {"urgent": 1, "high": 2, "normal": 3, "low": 4}},
        {"commission_rates": {"default": "0.02"}},
    ]
    responses = await asyncio.gather(*(client.patch("/v1/settings", json=p) for p in patches))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    final = (await client.get("/v1/settings")).json()
    for p in patches:
        for key, value in p.items():
            expected = value if key != "commission_rates" else {**value, "by_product_category": {}}
            assert final[key] == expected, key
    # one version and one event each
    assert final["version"] == 11
    assert len(await _events(engine)) == 11


# --- every worker ------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


@asynccontextmanager
async def _instance(settings: Any, database_url: str) -> AsyncIterator[FastAPI]:
    """A separate app (a worker): its own engine, poller and settings cache."""
    app = create_app(settings.model_copy(update={"authz_poll_interval_s": 0.5}), database_url)
    async with app.router.lifespan_context(app):
        yield app


def _client(app: FastAPI, user: dict[str, Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {token_for(app, user)}"},
    )


async def _until(probe: Any, deadline_s: float = 1.0) -> float:
    started = time.monotonic()
    while not await probe():
        elapsed = time.monotonic() - started
        assert elapsed < deadline_s, f"not there after {elapsed:.2f} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_change_reaches_every_worker_within_a_second(settings, database_url, engine):
    unit = await make_org_unit(engine, "Head office", kind="group")
    admin = await make_user(engine, roles=("admin",), org_unit=unit)
    rep = await make_user(engine, roles=("sales_rep",), org_unit=unit)
    async with AsyncExitStack() as stack:
        app_a = await stack.enter_async_context(_instance(settings, database_url))
        app_b = await stack.enter_async_context(_instance(settings, database_url))
        admin_on_a = await stack.enter_async_context(_client(app_a, admin))
        admin_on_b = await stack.enter_async_context(_client(app_b, admin))
        rep_on_b = await stack.enter_async_context(_client(app_b, rep))
        assert (await rep_on_b.get("/v1/settings")).json()["default_currency"] == "CNY"

        changed = await admin_on_a.patch(
            "/v1/settings", json={"default_currency": "USD", "amount_decimal_places": 4}
        )
        assert changed.status_code == 200, changed.text
        # the worker that made the change has it at once
        assert app_a.state.system_settings.current.default_currency == "USD"

        async def b_has_it() -> bool:
            got = (await rep_on_b.get("/v1/settings")).json()
            return bool(got["default_currency"] == "USD" and got["version"] == 1)

        await _until(b_has_it)
        # ... and uses it: a product created on B without a currency gets B's new default
        made = await admin_on_b.post(
            "/v1/products", json={"sku": "W-1", "name": "x", "list_price": "1"}
        )
        assert made.status_code == 201 and made.json()["currency"] == "USD"

        # a change made on B comes back to A the same way
        assert (
            await admin_on_b.patch("/v1/settings", json={"default_currency": "EUR"})
        ).status_code == 200

        async def a_has_it() -> bool:
            return app_a.state.system_settings.current.default_currency == "EUR"

        await _until(a_has_it)
        assert app_a.state.system_settings.version == 2


async def test_a_stored_value_the_code_no_longer_accepts_falls_back_to_its_default(app, engine):
    """A release narrows a range or drops a setting: the worker keeps serving, with the
    default for that setting, instead of failing to start."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO system_settings (id, values, version) VALUES"
                ' (1, \'{"amount_decimal_places": 9, "retired": 1, "default_currency": "JPY"}\', 4)'
            )
        )
    store = app.state.system_settings
    await store.load(engine)
    assert store.version == 4
    assert store.current.amount_decimal_places == 2
    assert store.current.default_currency == "JPY"


def test_an_empty_prefix_stored_before_prefixes_were_required_reads_as_the_default():
    """Releases before this one accepted ``""``: such a stored prefix now reads as the
    default (logged), and the other stored settings are kept."""
    got = effective({"order_number_prefix": "", "ticket_number_prefix": "T/", "sla_hours": None})
    assert got.order_number_prefix == "SO-"
    assert got.ticket_number_prefix == "T/"
    assert got.contract_number_prefix == "CT-"
