"""Contacts, created through the API (so every test contact is a valid one)."""

from __future__ import annotations

from typing import Any

import httpx


async def create_contact(client: httpx.AsyncClient, customer: dict, **fields: Any) -> dict:
    body = {"customer_id": str(customer["id"]), "name": "王芳", **fields}
    response = await client.post("/v1/contacts", json=body)
    assert response.status_code == 201, response.text
    return response.json()
