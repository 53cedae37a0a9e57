"""Decimal input (money, quantities, rates; bodies and query strings) takes a JSON number or
a plain ASCII decimal string ``-?[0-9]+(\\.[0-9]+)?`` within the field's range and scale.
Everything ``Decimal()`` would also read — ``"1_000"``, Arabic-Indic and full-width digits,
``"NaN"``, ``"1e3"``, spaces, ``+`` — is a 422 naming the field, and writes nothing.

One shared marker (``crm_api.kit.money.PLAIN_DECIMAL``) does it; the contract test below
fails on any input decimal of the OpenAPI document without its pattern."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import count_rows, problem
from crm_api.kit.money import DECIMAL_PATTERN
from factories.customers import create_customer
from factories.orders import line, make_product
from factories.products import create_product, product_body

ARABIC_INDIC = "\u0661\u0662\u0663"  # 123 in Arabic-Indic digits
FULL_WIDTH = "\uff11\uff12\uff13"  # 123 in full-width digits
MINUS_SIGN = "\u2212"

#: Strings ``Decimal()`` reads that the API refuses.
BAD_STRINGS = [
    "1_000",
    ARABIC_INDIC,
    FULL_WIDTH,
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "1e999999",
    "1e3",
    "1E2",
    " 12",
    "12 ",
    "+12",
    "12.",
    ".5",
    "",
    "1,5",
    "0x10",
    MINUS_SIGN + "5",
]

#: Raw JSON bodies' values that are numbers to Python but no amount.
BAD_NUMBERS = ["1e999999", "NaN", "Infinity", "-Infinity", "true"]


def _named(body: dict[str, Any], field: str) -> list[str]:
    codes = [e["code"] for e in body["errors"] if e["field"] == field]
    assert codes, body
    return codes


# --- the contract ---------------------------------------------------------------------------
def _decimal_branches(node: Any, where: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    if isinstance(node, dict):
        branches = node.get("anyOf")
        if isinstance(branches, list):
            kinds = sorted(str(b.get("type")) for b in branches if isinstance(b, dict))
            if kinds == ["number", "string"]:  # pydantic's Decimal (JSON values have more)
                for b in branches:
                    if b.get("type") == "string":
                        out.append((where, b))
        for key, value in node.items():
            _decimal_branches(value, f"{where}/{key}", out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _decimal_branches(value, f"{where}/{i}", out)


def test_every_input_decimal_publishes_the_plain_pattern(app):
    """A decimal input without ``PLAIN_DECIMAL`` shows up in the contract as ``number or
    any string``: this names it."""
    found: list[tuple[str, dict[str, Any]]] = []
    _decimal_branches(app.openapi(), "", found)
    assert len(found) >= 8, found  # amounts, rates, quantities, the price/total filters
    loose = [where for where, branch in found if branch.get("pattern") != DECIMAL_PATTERN]
    assert loose == []


# --- bodies -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", BAD_STRINGS)
@pytest.mark.parametrize("field", ["list_price", "tax_rate"])
async def test_product_create_refuses_loose_decimal_strings(client, engine, field, value):
    body = problem(
        await client.post("/v1/products", json=product_body(**{field: value})),
        422,
        "validation_error",
    )
    assert "invalid_decimal" in _named(body, field)
    assert await count_rows(engine, "products") == 0


@pytest.mark.parametrize("raw", BAD_NUMBERS)
async def test_product_create_refuses_non_finite_json_numbers(client, engine, raw):
    good = product_body(list_price="1.00")
    text = (
        "{"
        + ", ".join(f'"{k}": "{v}"' for k, v in good.items() if k != "list_price")
        + f', "list_price": {raw}'
        + "}"
    )
    body = problem(
        await client.post(
            "/v1/products", content=text.encode(), headers={"Content-Type": "application/json"}
        ),
        422,
    )
    assert _named(body, "list_price")
    assert await count_rows(engine, "products") == 0


async def test_json_numbers_and_plain_strings_are_taken(client):
    made = await create_product(client, list_price=1e3, tax_rate=0.13)
    assert made["list_price"] == "1000.0000" and made["tax_rate"] == "0.1300"
    made = await create_product(client, list_price="0012.5", tax_rate="0")
    assert made["list_price"] == "12.5000" and made["tax_rate"] == "0.0000"
    made = await create_product(client, list_price="-0", tax_rate="1")
    assert made["list_price"] == "0.0000"


@pytest.mark.parametrize("value", ["1_000", FULL_WIDTH, "NaN", "+5", " 5"])
async def test_product_patch_refuses_loose_decimal_strings(client, engine, value):
    product = await create_product(client)
    for field in ("list_price", "tax_rate"):
        body = problem(
            await client.patch(f"/v1/products/{product['id']}", json={field: value}),
            422,
            "validation_error",
        )
        assert "invalid_decimal" in _named(body, field)
    got = (await client.get(f"/v1/products/{product['id']}")).json()
    assert got["version"] == product["version"] and got["list_price"] == product["list_price"]


@pytest.mark.parametrize("value", ["1_000", ARABIC_INDIC, FULL_WIDTH, "NaN", "1e2", "+1", "1 "])
async def test_order_lines_refuse_loose_decimal_strings(client, engine, admin_user, value):
    customer = await create_customer(client, admin_user)
    product = await make_product(engine)
    for extra, field in (
        ({"quantity": value}, "lines.0.quantity"),
        ({"unit_price": value}, "lines.0.unit_price"),
        ({"discount": value}, "lines.0.discount"),
    ):
        sent = {**line(product), **extra}
        body = problem(
            await client.post("/v1/orders", json={"customer_id": customer["id"], "lines": [sent]}),
            422,
            "validation_error",
        )
        assert "invalid_decimal" in _named(body, field)
    assert await count_rows(engine, "orders") == 0
    assert await count_rows(engine, "order_lines") == 0


@pytest.mark.parametrize("value", [ARABIC_INDIC[:1], "1_0", "NaN", "+0.1", "0.1 ", "1e-1"])
async def test_settings_rates_refuse_loose_decimal_strings(client, engine, value):
    for patch, field in (
        ({"default": value}, "commission_rates.default"),
        ({"default": "0.1", "by_product_category": {"打印机": value}}, None),
    ):
        body = problem(
            await client.patch("/v1/settings", json={"commission_rates": patch}),
            422,
            "validation_error",
        )
        codes = [e["code"] for e in body["errors"]]
        assert codes == ["invalid_decimal"], body
        fields = [e["field"] for e in body["errors"]]
        assert fields == [field or "commission_rates.by_product_category.打印机"]
    assert await count_rows(engine, "system_settings") == 0


# --- query strings ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value", ["1_000", ARABIC_INDIC, FULL_WIDTH, "NaN", "Infinity", "1e3", "+1", " 1"]
)
async def test_price_and_total_filters_refuse_loose_decimal_strings(client, value):
    for path, param in (
        ("/v1/products", "min_price"),
        ("/v1/products", "max_price"),
        ("/v1/orders", "total_min"),
        ("/v1/orders", "total_max"),
    ):
        body = problem(await client.get(path, params={param: value}), 422, "validation_error")
        assert "invalid_decimal" in _named(body, f"query.{param}"), (path, body)


async def test_price_and_total_filters_take_plain_decimals(client):
    cheap = await create_product(client, list_price="10.00")
    await create_product(client, list_price="2000.00")
    got = await client.get("/v1/products", params={"max_price": "10", "min_price": "9.99"})
    assert got.status_code == 200, got.text
    assert [p["id"] for p in got.json()["data"]] == [cheap["id"]]
    got = await client.get("/v1/orders", params={"total_min": "0.5", "total_max": "100"})
    assert got.status_code == 200, got.text
