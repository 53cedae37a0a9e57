"""/docs works offline, and its "Authorize" logs in with the OAuth2 password flow (issue #7,
item 16)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI

from factories.api_clients import bearer
from factories.identity import make_user


@pytest.fixture(scope="module")
def doc(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


async def test_docs_load_their_assets_locally(anon_client):
    for page in ("/docs", "/redoc"):
        response = await anon_client.get(page)
        assert response.status_code == 200
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", response.text)
        urls += re.findall(r"""url:\s*'([^']+)'""", response.text)
        assert urls, response.text
        remote = [u for u in urls if not u.startswith("/")]
        assert not remote, remote
        assert "cdn" not in response.text.lower()
        for url in urls:
            if url.startswith("/docs/static/"):
                asset = await anon_client.get(url)
                assert asset.status_code == 200, url
                assert len(asset.content) > 1000
    assert (await anon_client.get("/docs/oauth2-redirect")).status_code == 200


async def test_swagger_authorize_logs_in_with_the_password_flow(app, anon_client, engine, doc):
    from crm_api.auth.passwords import hash_password

    schemes = doc["components"]["securitySchemes"]
    flow = schemes["OAuth2Password"]["flows"]["password"]
    assert flow["tokenUrl"] == "/v1/auth/token"
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    security = doc["paths"]["/v1/customers"]["get"]["security"]
    assert {"OAuth2Password": []} in security and {"HTTPBearer": []} in security
    # what Swagger UI's Authorize sends for the password flow
    password = "Correct-horse-42"
    await make_user(engine, email="swagger@test.crm", password_hash=hash_password(password))
    response = await anon_client.post(
        f"/v1{flow['tokenUrl'][3:]}",
        data={
            "grant_type": "password",
            "username": "swagger@test.crm",
            "password": password,
        },
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert (await anon_client.get("/v1/me", headers=bearer(token))).status_code == 200
