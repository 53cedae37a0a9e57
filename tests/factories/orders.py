from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def make_product(
    engine: AsyncEngine,
    *,
    price: str = "100.00",
    tax_rate: str = "0.13",
    currency: str = "CNY",
    active: bool = True,
    name: str = "激光打印机 LaserJet 1020",
) -> dict[str, Any]:
    """A catalog product, written straight to the table (orders only read products)."""
    row = {
        "id": uuid.uuid4(),
        "sku": f"SKU-{uuid.uuid4().hex[:10]}",
        "name": name,
        "list_price": Decimal(price),
        "currency": currency,
        "tax_rate": Decimal(tax_rate),
        "active": active,
    }
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO products (id, sku, name, list_price, currency, tax_rate, active) "
                "VALUES (:id, :sku, :name, :list_price, :currency, :tax_rate, :active)"
            ),
            row,
        )
    return row


def line(product: dict[str, Any], quantity: str = "1", **extra: Any) -> dict[str, Any]:
    return {"product_id": str(product["id"]), "quantity": quantity, **extra}


async def post_order(
    client: httpx.AsyncClient, customer: dict[str, Any], *lines: dict[str, Any], **fields: Any
) -> httpx.Response:
    body = {"customer_id": customer["id"], "lines": list(lines), **fields}
    return await client.post("/v1/orders", json=body)


async def create_order(
    client: httpx.AsyncClient, customer: dict[str, Any], *lines: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    response = await post_order(client, customer, *lines, **fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
