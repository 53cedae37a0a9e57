"""Products, created through the API by an administrator's client."""

from __future__ import annotations

import uuid
from typing import Any

import httpx


def product_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sku": f"SKU-{uuid.uuid4().hex[:10]}",
        "name": "联想 ThinkPad X1 Carbon 笔记本电脑",
        "brand": "Lenovo",
        "series": "ThinkPad X1",
        "category": "笔记本电脑",
        "unit": "台",
        "list_price": "12999.00",
        "currency": "CNY",
        "tax_rate": "0.13",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def create_product(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/v1/products", json=product_body(**overrides))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
