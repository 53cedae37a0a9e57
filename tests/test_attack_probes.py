"""Defects found by probing the merged hardening (issue #7) as an attacker holding a
low-privilege token, each pinned here so it cannot come back:

- a sensitive value re-masked in another client's style (bullets, fullwidth asterisks,
  ``XXXX3445``) was stored in place of the real one: only ``**`` counted as a mask.
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
        glyph * 4 + tail
        for glyph in ("\u2022", "\u25cf", "\u2217", "\uff0a", "\ufe61", "\u00b7")
    ] + [
        "XXXX" + tail, "xxxx-xxxx-" + tail, "\u2022\u2022 \u2022\u2022 " + tail,
    ]


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def _stored(engine, table: str, row_id: Any, column: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(f"SELECT {column} FROM {table} WHERE id = :i"),
                                   {"i": row_id})).scalar()


@pytest.mark.parametrize(("resource", "field", "value"), SENSITIVE,
                         ids=[f"{r}.{f}" for r, f, _ in SENSITIVE])
async def test_a_mask_in_another_style_is_refused_not_stored(
    client, client_for, engine, resource, field, value
):
    unit = await make_org_unit(engine, "East")
    rep = await make_user(engine, org_unit=unit)
    customer = await create_customer(
        client, rep, **({field: value} if resource == "customers" else {}))
    contact = await create_contact(
        client, customer, **({field: value} if resource == "contacts" else {}))
    record = customer if resource == "customers" else contact
    url = f"/v1/{resource}/{record['id']}"
    as_rep = await client_for(rep)
    shown = (await as_rep.get(url)).json()[field]
    assert shown == mask(value)
    for restyled in _restyled(shown):
        assert looks_masked(restyled), restyled
        for caller in (as_rep, client):  # masked for the rep; the admin sees it in full
            refused = problem(await caller.patch(url, json={field: restyled, "notes": "x"}),
                              422, "masked_value")
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
            response = await as_rep.post(f"/v1/customers/{customer['id']}/contacts",
                                         json={"name": "M", field: restyled})
        problem(response, 422, "masked_value")
    assert await count_rows(engine, "customers") == customers
    assert await count_rows(engine, "contacts") == contacts


@pytest.mark.parametrize("value", [
    "6222021001123443445", "91310000MA1FL8XQ3K", "9131000X12345678XX", "+86 138 0013 8000",
    "DE89 3704 0044 0532 0130 00", "T-2345",
])
def test_real_values_do_not_look_masked(value: str) -> None:
    assert not looks_masked(value)
