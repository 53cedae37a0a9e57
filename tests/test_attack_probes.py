"""Defects found by probing the merged hardening (issue #7) as an attacker holding a
low-privilege token, each pinned here so it cannot come back:

- a sensitive value re-masked in another client's style (bullets, fullwidth asterisks,
  ``XXXX3445``) was stored in place of the real one: only ``**`` counted as a mask;
- a holder of ``users:update`` could change whom they themselves report to, taking their
  records (and their reports') out of their superiors' ``subordinates`` oversight, or
  handing them to a peer of their choosing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from crm_api.authz.masking import looks_masked
from crm_api.authz.state import settle
from crm_api.kit.filtering import mask
from factories.contacts import create_contact
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user
from test_delegation import USERS_ADMIN, make_role

#: (resource, field, stored value): every sensitive field.
SENSITIVE = [
    ("customers", "bank_account", "6222021001123443445"),
    ("customers", "tax_number", "91310000123452345"),
    ("contacts", "mobile", "+86 138 0013 8000"),
]


def _restyled(shown: str) -> list[str]:
    """What other clients and UI kits make of ``****3445``."""
    tail = shown.removeprefix("****")
    return [
        glyph * 4 + tail for glyph in ("\u2022", "\u25cf", "\u2217", "\uff0a", "\ufe61", "\u00b7")
    ] + [
        "XXXX" + tail,
        "xxxx-xxxx-" + tail,
        "\u2022\u2022 \u2022\u2022 " + tail,
    ]


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def _stored(engine, table: str, row_id: Any, column: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(text(f"SELECT {column} FROM {table} WHERE id = :i"), {"i": row_id})
        ).scalar()


@pytest.mark.parametrize(
    ("resource", "field", "value"), SENSITIVE, ids=[f"{r}.{f}" for r, f, _ in SENSITIVE]
)
async def test_a_mask_in_another_style_is_refused_not_stored(
    client, client_for, engine, resource, field, value
):
    unit = await make_org_unit(engine, "East")
    rep = await make_user(engine, org_unit=unit)
    customer = await create_customer(
        client, rep, **({field: value} if resource == "customers" else {})
    )
    contact = await create_contact(
        client, customer, **({field: value} if resource == "contacts" else {})
    )
    record = customer if resource == "customers" else contact
    url = f"/v1/{resource}/{record['id']}"
    as_rep = await client_for(rep)
    shown = (await as_rep.get(url)).json()[field]
    assert shown == mask(value)
    for restyled in _restyled(shown):
        assert looks_masked(restyled), restyled
        for caller in (as_rep, client):  # masked for the rep; the admin sees it in full
            refused = problem(
                await caller.patch(url, json={field: restyled, "notes": "x"}), 422, "masked_value"
            )
            assert [e["field"] for e in refused["errors"]] == [field]
    assert await _stored(engine, resource, record["id"], field) == value
    assert await _stored(engine, resource, record["id"], "notes") is None
    # nor created with one
    customers = await count_rows(engine, "customers")
    contacts = await count_rows(engine, "contacts")
    for restyled in _restyled(shown):
        if resource == "customers":
            response = await as_rep.post("/v1/customers", json={"name": "M", field: restyled})
        else:
            response = await as_rep.post(
                f"/v1/customers/{customer['id']}/contacts", json={"name": "M", field: restyled}
            )
        problem(response, 422, "masked_value")
    assert await count_rows(engine, "customers") == customers
    assert await count_rows(engine, "contacts") == contacts


@pytest.mark.parametrize(
    "value",
    [
        "6222021001123443445",
        "91310000MA1FL8XQ3K",
        "9131000X12345678XX",
        "+86 138 0013 8000",
        "DE89 3704 0044 0532 0130 00",
        "T-2345",
    ],
)
def test_real_values_do_not_look_masked(value: str) -> None:
    assert not looks_masked(value)


@pytest.fixture
async def tree(engine):
    root = await make_org_unit(engine, "Root", kind="group")
    east = await make_org_unit(engine, "East", parent=root)
    east_team = await make_org_unit(engine, "East team", parent=east)
    return {"root": root, "east": east, "east_team": east_team}


async def test_nobody_changes_whom_they_report_to(client, client_for, engine, tree):
    """A team lead with users:update over its subtree, reporting to a boss who sees the
    lead's line through ``subordinates``: detaching itself (manager null) or re-attaching
    itself to a peer in scope would take its line out of the boss's sight or hand it to
    the peer. Like moving the unit one stands in, that is for someone above."""
    await make_role(engine, "line_boss", ("customers", "read", "subordinates"))
    await make_role(engine, "team_lead", *USERS_ADMIN, ("customers", "read", "org_subtree"))
    boss = await make_user(engine, roles=("line_boss",), org_unit=tree["root"])
    lead = await make_user(engine, roles=("team_lead",), org_unit=tree["east"], manager=boss)
    report = await make_user(engine, roles=(), org_unit=tree["east_team"], manager=lead)
    peer = await make_user(engine, roles=(), org_unit=tree["east_team"])
    as_lead = await client_for(lead)
    for manager_id in (None, str(peer["id"])):
        body = problem(
            await as_lead.patch(f"/v1/users/{lead['id']}", json={"manager_id": manager_id}),
            403,
            "grant_not_allowed",
        )
        assert body["reason"] == "self" and body["refused"] == ["manager_id"]
    assert await _stored(engine, "users", lead["id"], "manager_id") == boss["id"]
    assert await _stored(engine, "users", report["id"], "manager_path") == (
        f"/{boss['id']}/{lead['id']}/{report['id']}/"
    )
    # the boss still sees the lead's customers
    customer = await create_customer(client, report)
    as_boss = await client_for(boss)
    assert (await as_boss.get(f"/v1/customers/{customer['id']}")).status_code == 200
    # moving people within one's own line stays open, and so do one's other fields
    out = await as_lead.patch(f"/v1/users/{report['id']}", json={"manager_id": None})
    assert out.status_code == 200, out.text
    own = await as_lead.patch(f"/v1/users/{lead['id']}", json={"display_name": "Lead"})
    assert own.status_code == 200, own.text
    # someone above (here an administrator) may move the lead
    back = await client.patch(f"/v1/users/{lead['id']}", json={"manager_id": str(boss["id"])})
    assert back.status_code == 200, back.text


async def test_a_query_string_that_is_not_utf8_is_400_and_writes_nothing(client, engine):
    """``q=%ff`` used to search for U+FFFD (200, an empty page) and a POST carrying it
    went through: percent-escapes that do not decode to UTF-8 are a malformed request."""
    customers = await count_rows(engine, "customers")
    for query in ("q=%ff", "q=%C0%AF", "q=abc%e6%98", "sort=%fe&limit=5"):
        problem(await client.get(f"/v1/customers?{query}"), 400, "invalid_query")
        problem(
            await client.post(f"/v1/customers?{query}", json={"name": "x"}), 400, "invalid_query"
        )
        problem(await client.get(f"/v1/nowhere?{query}"), 400, "invalid_query")
    assert await count_rows(engine, "customers") == customers
    # valid UTF-8, percent-encoded or not, still works
    for query in ("q=%E6%98%8E%E8%BF%9C", "q=a%20b", "q=a+b", "limit=5"):
        response = await client.get(f"/v1/customers?{query}")
        assert response.status_code == 200, (query, response.text)
