"""API clients and personal access tokens, made through the API (the admin ``client``)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text


async def create_api_client(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "Storefront", "roles": ["partner"], **fields}
    response = await client.post("/v1/api-clients", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def client_credentials(
    http: httpx.AsyncClient, client_id: str, secret: str, *, basic: bool = False
) -> httpx.Response:
    if basic:
        return await http.post(
            "/v1/auth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
        )
    return await http.post(
        "/v1/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )


async def client_access_token(http: httpx.AsyncClient, created: dict[str, Any]) -> str:
    response = await client_credentials(http, created["client_id"], created["client_secret"])
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def create_pat(http: httpx.AsyncClient, *perms: tuple[str, str], **fields: Any) -> dict:
    body = {
        "name": "script",
        "permissions": [{"resource": r, "action": a} for r, a in perms],
        **fields,
    }
    response = await http.post("/v1/me/tokens", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def policy_settled(app: FastAPI, timeout_s: float = 5.0) -> None:
    """Wait until this worker has loaded the current policy version. A write reloads it in
    the background after commit (other workers within the poll interval); a request sent
    in between may still be judged by the previous policy."""
    engine = app.state.db.engine
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        async with engine.connect() as conn:
            current = (await conn.execute(text("SELECT version FROM authz_state"))).scalar_one()
        if app.state.policy.version == current:
            return
        assert loop.time() < deadline, "the policy was not reloaded in time"
        await asyncio.sleep(0.02)
