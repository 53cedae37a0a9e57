from __future__ import annotations

from typing import Any

import httpx


async def create_customer(client: httpx.AsyncClient, owner: dict, **fields: Any) -> dict:
    body = {"name": "上海明远贸易有限公司", "owner_id": str(owner["id"]), **fields}
    response = await client.post("/v1/customers", json=body)
    assert response.status_code == 201, response.text
    return response.json()
