"""Handlers read the settings the app was created with (``app.state.settings``, through the
``RequireIfMatch`` dependency), never the process-wide ``get_settings()``: so
``create_app(settings)`` decides ``require_if_match`` for every write that takes If-Match,
single-customer transfer included (issue #8)."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from conftest import problem
from factories.api_clients import create_api_client
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user

SRC = Path(__file__).resolve().parent.parent / "src" / "crm_api"


def test_no_handler_reads_the_global_settings():
    offenders = []
    for path in SRC.rglob("*endpoints.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name | ast.Attribute) and (
                getattr(node, "id", None) == "get_settings"
                or getattr(node, "attr", None) == "get_settings"
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and any(
                a.name == "get_settings" for a in node.names
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders


@pytest.fixture
async def strict(app: FastAPI) -> AsyncIterator[None]:
    """The shared app, as if created with ``require_if_match=True`` (the process-wide
    settings keep the default, ``False``)."""
    settings = app.state.settings
    app.state.settings = settings.model_copy(update={"require_if_match": True})
    try:
        yield
    finally:
        app.state.settings = settings


async def test_transfer_of_one_customer_honours_require_if_match(client, engine, strict):
    unit = await make_org_unit(engine, "East", kind="group")
    owner = await make_user(engine, org_unit=unit)
    taker = await make_user(engine, org_unit=unit)
    customer = await create_customer(client, owner)
    url = f"/v1/customers/{customer['id']}"
    got = await client.get(url)
    body = {"to_user_id": str(taker["id"])}

    problem(await client.post(f"{url}/transfer", json=body), 428, "if_match_required")
    assert (await client.get(url)).json() == got.json()  # nothing moved

    problem(
        await client.post(f"{url}/transfer", json=body, headers={"If-Match": '"99"'}),
        412,
        "version_mismatch",
    )
    moved = await client.post(
        f"{url}/transfer", json=body, headers={"If-Match": got.headers["etag"]}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["owner_id"] == str(taker["id"])
    assert moved.headers["etag"] != got.headers["etag"]


def test_transfer_documents_428(app):
    responses = app.openapi()["paths"]["/v1/customers/{customer_id}/transfer"]["post"]["responses"]
    assert {"404", "412", "428"} <= responses.keys()


async def _org_unit(client: Any, engine: Any) -> tuple[str, dict[str, Any]]:
    unit = await make_org_unit(engine, "Branch")
    return f"/v1/org-units/{unit['id']}", {"name": "Renamed"}


async def _user(client: Any, engine: Any) -> tuple[str, dict[str, Any]]:
    user = await make_user(engine)
    return f"/v1/users/{user['id']}", {"display_name": "Renamed"}


async def _role(client: Any, engine: Any) -> tuple[str, dict[str, Any]]:
    created = await client.post("/v1/roles", json={"name": "key_account"})
    assert created.status_code == 201, created.text
    return f"/v1/roles/{created.json()['id']}", {"description": "changed"}


async def _api_client(client: Any, engine: Any) -> tuple[str, dict[str, Any]]:
    created = await create_api_client(client)
    return f"/v1/api-clients/{created['id']}", {"name": "Renamed"}


@pytest.mark.parametrize("make", [_org_unit, _user, _role, _api_client])
async def test_updates_honour_the_apps_require_if_match(
    client, engine, strict, make: Callable[..., Any]
):
    url, patch = await make(client, engine)
    before = await client.get(url)
    assert before.status_code == 200, before.text
    problem(await client.patch(url, json=patch), 428, "if_match_required")
    assert (await client.get(url)).json() == before.json()
    ok = await client.patch(url, json=patch, headers={"If-Match": before.headers["etag"]})
    assert ok.status_code == 200, ok.text
