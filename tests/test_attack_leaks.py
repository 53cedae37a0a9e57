"""Leaks found by probing a demo server as a low-privilege caller (second attack round),
each pinned here so it cannot come back:

- a duplicate ``tax_number`` 409 named the customer holding the number to a caller who
  sees that customer's tax number masked: a rep could confirm a guessed (masked) tax
  number of a specific customer by sending it on another one (``existing_id`` linked the
  masked value to its record).
"""

from __future__ import annotations

from conftest import count_rows, problem
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user

TAX = "91310000MA1FL8XQ3K"


async def test_a_duplicate_masked_tax_number_names_no_record(client, client_for, engine):
    unit = await make_org_unit(engine, "East")
    rep = await make_user(engine, org_unit=unit)  # sales_rep: own, tax numbers masked
    manager = await make_user(engine, roles=("sales_manager",), org_unit=unit)
    holder = await create_customer(client, rep, tax_number=TAX, external_ref="ext-holder")
    other = await create_customer(client, rep, name="another")
    as_rep = await client_for(rep)
    shown = (await as_rep.get(f"/v1/customers/{holder['id']}")).json()
    assert shown["tax_number"] != TAX  # masked for the rep
    customers = await count_rows(engine, "customers")

    # the 409 stays (the number is unique), but it does not say who holds the number
    for response in (
        await as_rep.patch(f"/v1/customers/{other['id']}", json={"tax_number": TAX}),
        await as_rep.post("/v1/customers", json={"name": "probe", "tax_number": TAX}),
    ):
        body = problem(response, 409, "customer_duplicate")
        assert body["field"] == "tax_number" and body.get("existing_id") is None, body
    assert await count_rows(engine, "customers") == customers

    # a field the rep sees in full is still named: nothing masked is revealed
    body = problem(
        await as_rep.post("/v1/customers", json={"name": "probe", "external_ref": "ext-holder"}),
        409,
        "customer_duplicate",
    )
    assert body["existing_id"] == holder["id"]

    # a caller who sees tax numbers unmasked is told which customer holds it
    as_manager = await client_for(manager)
    body = problem(
        await as_manager.patch(f"/v1/customers/{other['id']}", json={"tax_number": TAX}),
        409,
        "customer_duplicate",
    )
    assert body["existing_id"] == holder["id"]
