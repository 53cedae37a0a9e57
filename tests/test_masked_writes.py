"""Masked is write-safe, for every sensitive field of every resource: a caller that sends
back what it was shown changes nothing, any other masked-looking value is a 422 that
writes nothing, a new full value is stored, and no mask is ever stored or created."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from conftest import count_rows, problem
from crm_api.authz.masking import looks_masked
from crm_api.authz.state import settle
from crm_api.contact.schemas import ContactUpdate
from crm_api.customer.schemas import CustomerUpdate
from crm_api.kit.filtering import mask
from crm_api.resources import REGISTRY
from factories.contacts import create_contact
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user

#: (resource, field, stored value, another full value). Every sensitive field is here
#: (checked below), so a new one cannot slip past these tests.
CASES = [
    ("customers", "bank_account", "6222021001123443445", "6222029999000011112"),
    ("customers", "tax_number", "91310000123452345", "91310000987650000"),
    ("contacts", "mobile", "+86 138 0013 8000", "+86 139 1234 5678"),
]
IDS = [f"{r}.{f}" for r, f, _, _ in CASES]
WRITABLE = {
    "customers": set(CustomerUpdate.model_fields),
    "contacts": set(ContactUpdate.model_fields),
}


def test_every_sensitive_field_is_covered() -> None:
    covered = {(r, f) for r, f, _, _ in CASES}
    assert covered == {(r.name, f) for r in REGISTRY.values() for f in r.sensitive}


@pytest.mark.parametrize(
    "value", ["1", "123456", "1234567", "6222021001123443445", "+86 138 0013 8000", "T-2345"]
)
def test_what_the_masker_shows_looks_masked(value: str) -> None:
    assert looks_masked(mask(value)) and not looks_masked(value)


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    """Policy reloads are over before the next test empties the tables."""
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def _world(client, engine, resource: str, field: str, value: str) -> dict[str, Any]:
    """A sales rep (no read_sensitive) owning a customer and its contact; ``field`` holds
    ``value`` (written by the administrator)."""
    unit = await make_org_unit(engine, "East")
    rep = await make_user(engine, org_unit=unit)
    customer_fields = {field: value} if resource == "customers" else {}
    customer = await create_customer(client, rep, **customer_fields)
    contact_fields = {field: value} if resource == "contacts" else {}
    contact = await create_contact(client, customer, **contact_fields)
    record = customer if resource == "customers" else contact
    return {
        "rep": rep,
        "customer": customer,
        "contact": contact,
        "url": f"/v1/{resource}/{record['id']}",
        "id": record["id"],
    }


async def _stored(engine, resource: str, record_id: Any) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    text(f"SELECT * FROM {resource} WHERE id = :id"), {"id": record_id}
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


async def _updates(engine, record_id: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT changes FROM audit_events WHERE action = 'update' AND resource_id = :id "
                "ORDER BY occurred_at"
            ),
            {"id": record_id},
        )
        return [r[0] for r in rows]


def _writable(resource: str, shown: dict[str, Any]) -> dict[str, Any]:
    """The record as shown, minus what a client may not send (id, version, timestamps)."""
    return {k: v for k, v in shown.items() if k in WRITABLE[resource]}


@pytest.mark.parametrize(("resource", "field", "value", "new"), CASES, ids=IDS)
async def test_sending_back_what_was_shown_keeps_the_real_value(
    client, client_for, engine, resource, field, value, new
):
    w = await _world(client, engine, resource, field, value)
    real = (await _stored(engine, resource, w["id"]))[field]
    as_rep = await client_for(w["rep"])
    shown = (await as_rep.get(w["url"])).json()
    assert shown[field] == mask(real) and looks_masked(shown[field])
    body = {**_writable(resource, shown), "notes": "called back"}
    response = await as_rep.patch(w["url"], json=body)
    assert response.status_code == 200, response.text
    assert response.json()[field] == shown[field]
    assert response.json()["notes"] == "called back"
    stored = await _stored(engine, resource, w["id"])
    assert stored[field] == real and stored["notes"] == "called back"
    assert (await client.get(w["url"])).json()[field] == real  # the administrator's view
    assert await _updates(engine, w["id"]) == [{"notes": {"before": None, "after": "called back"}}]
    # the same body again: nothing at all changes
    again = await as_rep.patch(w["url"], json=body)
    assert again.status_code == 200 and again.json()["version"] == response.json()["version"]
    # the field alone, sent back as shown: no change, no event
    alone = await as_rep.patch(w["url"], json={field: shown[field]})
    assert alone.status_code == 200 and alone.json()["version"] == response.json()["version"]
    assert len(await _updates(engine, w["id"])) == 1


@pytest.mark.parametrize(("resource", "field", "value", "new"), CASES, ids=IDS)
async def test_another_masked_value_is_refused_and_nothing_is_written(
    client, client_for, engine, resource, field, value, new
):
    w = await _world(client, engine, resource, field, value)
    before = await _stored(engine, resource, w["id"])
    as_rep = await client_for(w["rep"])
    shown = (await as_rep.get(w["url"])).json()
    for masked in ("****9999", "****", "62**21", mask(value) + "0", "***"):
        assert masked != shown[field]
        body = {**_writable(resource, shown), "notes": "x", field: masked}
        refused = problem(await as_rep.patch(w["url"], json=body), 422, "masked_value")
        assert refused["errors"] == [
            {"field": field, "code": "masked_value", "message": refused["errors"][0]["message"]}
        ]
    # a caller that sees the real value is shown no mask: any mask from it is refused too
    problem(
        await client.patch(w["url"], json={field: shown[field], "notes": "x"}), 422, "masked_value"
    )
    assert await _stored(engine, resource, w["id"]) == before
    assert await _updates(engine, w["id"]) == []


@pytest.mark.parametrize(("resource", "field", "value", "new"), CASES, ids=IDS)
async def test_a_new_full_value_is_stored(client, client_for, engine, resource, field, value, new):
    w = await _world(client, engine, resource, field, value)
    as_rep = await client_for(w["rep"])
    shown = (await as_rep.get(w["url"])).json()
    response = await as_rep.patch(w["url"], json={**_writable(resource, shown), field: new})
    assert response.status_code == 200, response.text
    assert response.json()[field] == mask(new)
    stored = await _stored(engine, resource, w["id"])
    assert stored[field] == new
    assert await _updates(engine, w["id"]) == [{field: {"before": "***", "after": "***"}}]
    # the administrator, who sees real values, sets it back and round-trips the record
    assert (await client.patch(w["url"], json={field: value})).status_code == 200
    full = (await client.get(w["url"])).json()
    assert full[field] == value
    response = await client.patch(w["url"], json={**_writable(resource, full), "notes": "n"})
    assert response.status_code == 200, response.text
    assert (await _stored(engine, resource, w["id"]))[field] == value


@pytest.mark.parametrize(("resource", "field", "value", "new"), CASES, ids=IDS)
async def test_a_masked_value_is_never_created(
    client, client_for, engine, resource, field, value, new
):
    w = await _world(client, engine, resource, field, value)
    as_rep = await client_for(w["rep"])
    customers, contacts = (
        await count_rows(engine, "customers"),
        await count_rows(engine, "contacts"),
    )
    for caller in (client, as_rep):
        for masked in (mask(value), "****"):
            if resource == "customers":
                body = {"name": "Masked Ltd", field: masked}
                posts = [("/v1/customers", body)]
            else:
                body = {"name": "王芳", field: masked}
                posts = [
                    ("/v1/contacts", {**body, "customer_id": w["customer"]["id"]}),
                    (f"/v1/customers/{w['customer']['id']}/contacts", body),
                ]
            for url, json in posts:
                refused = problem(await caller.post(url, json=json), 422, "masked_value")
                assert [e["field"] for e in refused["errors"]] == [field]
    assert await count_rows(engine, "customers") == customers
    assert await count_rows(engine, "contacts") == contacts


async def test_short_values_and_both_customer_fields_at_once(client, client_for, engine):
    """A value of six characters or fewer is shown as a bare ``****``; sending that back
    is still "unchanged", field by field."""
    unit = await make_org_unit(engine, "East")
    rep = await make_user(engine, org_unit=unit)
    customer = await create_customer(client, rep, bank_account="12345", tax_number="T-2345")
    url = f"/v1/customers/{customer['id']}"
    as_rep = await client_for(rep)
    shown = (await as_rep.get(url)).json()
    assert shown["bank_account"] == shown["tax_number"] == "****"
    response = await as_rep.patch(url, json={**_writable("customers", shown), "grade": "A"})
    assert response.status_code == 200, response.text
    stored = await _stored(engine, "customers", customer["id"])
    assert (stored["bank_account"], stored["tax_number"], stored["grade"]) == (
        "12345",
        "T-2345",
        "A",
    )
    # one field echoed, the other a different mask: refused as a whole, naming that one
    body = {"bank_account": "****", "tax_number": "****2345", "grade": "B"}
    refused = problem(await as_rep.patch(url, json=body), 422, "masked_value")
    assert [e["field"] for e in refused["errors"]] == ["tax_number"]
    assert (await _stored(engine, "customers", customer["id"]))["grade"] == "A"


async def test_masking_decided_per_record_is_honoured_per_record(client, client_for, engine):
    """A caller updating more widely than it may see sensitive fields gets them masked on
    some records only: a write-back is "unchanged" exactly where it was shown a mask, and
    a mask sent for a record it sees in full is refused."""
    root = await make_org_unit(engine, "Root", kind="group")
    home = await make_org_unit(engine, "Home", parent=root)
    away = await make_org_unit(engine, "Away", parent=root)
    role = (await client.post("/v1/roles", json={"name": "wide_editor"})).json()
    for resource in ("customers", "contacts"):
        for action, scope in (("read", "all"), ("update", "all"), ("read_sensitive", "org_unit")):
            granted = await client.post(
                f"/v1/roles/{role['id']}/grants",
                json={"resource": resource, "action": action, "scope": scope},
            )
            assert granted.status_code == 201, granted.text
    editor = await make_user(engine, roles=("wide_editor",), org_unit=home)
    local = await create_customer(
        client, await make_user(engine, org_unit=home), bank_account="6222021001123443445"
    )
    remote = await create_customer(
        client, await make_user(engine, org_unit=away), bank_account="6222029999000011112"
    )
    remote_contact = await create_contact(client, remote, mobile="+86 139 1234 5678")
    as_editor = await client_for(editor)
    local_url, remote_url = f"/v1/customers/{local['id']}", f"/v1/customers/{remote['id']}"
    contact_url = f"/v1/contacts/{remote_contact['id']}"
    assert (await as_editor.get(local_url)).json()["bank_account"] == "6222021001123443445"
    shown = (await as_editor.get(remote_url)).json()
    assert shown["bank_account"] == "****1112"
    response = await as_editor.patch(
        remote_url, json={**_writable("customers", shown), "notes": "n"}
    )
    assert response.status_code == 200, response.text
    shown_contact = (await as_editor.get(contact_url)).json()
    assert shown_contact["mobile"] == "****5678"
    response = await as_editor.patch(
        contact_url, json={**_writable("contacts", shown_contact), "notes": "n"}
    )
    assert response.status_code == 200, response.text
    problem(
        await as_editor.patch(local_url, json={"bank_account": "****3445"}), 422, "masked_value"
    )
    assert (await _stored(engine, "customers", remote["id"]))["bank_account"] == (
        "6222029999000011112"
    )
    assert (await _stored(engine, "contacts", remote_contact["id"]))["mobile"] == (
        "+86 139 1234 5678"
    )
    assert (await _stored(engine, "customers", local["id"]))["bank_account"] == (
        "6222021001123443445"
    )
