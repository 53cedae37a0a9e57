"""The OpenAPI document says what the API does (issue #7, item 9).

Each test names the mismatch it pins down; each failed on the code before the fix.
"""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from conftest import problem
from factories.api_clients import bearer, create_api_client, create_pat
from factories.contacts import create_contact
from factories.customers import create_customer
from factories.identity import make_user

SRC = Path(__file__).resolve().parent.parent / "src" / "crm_api"


@pytest.fixture(scope="module")
def doc(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(doc["components"]["schemas"][name])


def _nullable(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "null" or any(_nullable(p) for p in prop.get("anyOf", ()))


# --- the document --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (
            "CustomerUpdate",
            ("name", "type", "lifecycle_stage", "tags", "custom_fields", "owner_id"),
        ),
        ("UserUpdate", ("email", "display_name", "roles", "password")),
        ("ApiClientUpdate", ("name", "roles", "active")),
        ("ContactUpdate", ("name", "is_primary")),
    ],
)
def test_update_fields_the_api_cannot_clear_are_not_nullable(doc, model, fields):
    properties = _schema(doc, model)["properties"]
    assert not [f for f in fields if _nullable(properties[f])]
    assert not _schema(doc, model).get("required")
    # the optional ones still say null clears them
    if model == "CustomerUpdate":
        assert _nullable(properties["grade"]) and _nullable(properties["notes"])


def test_create_fields_with_defaults_are_not_required(doc):
    create = _schema(doc, "CustomerCreate")
    assert create["required"] == ["name"]
    assert create["properties"]["lifecycle_stage"]["default"] == "lead"


def test_validators_are_in_the_schema(doc):
    customer = _schema(doc, "CustomerCreate")["properties"]
    phone = next(p for p in customer["phone"]["anyOf"] if p.get("type") == "string")
    website = next(p for p in customer["website"]["anyOf"] if p.get("type") == "string")
    assert re.match(phone["pattern"], "+86 138 0013 8000 ext. 12")
    assert not re.match(phone["pattern"], "call me")
    assert re.match(website["pattern"], "HTTPS://example.com/x")
    assert not re.match(website["pattern"], "ftp://example.com")
    pat = _schema(doc, "PersonalAccessTokenCreate")
    assert pat["not"]["required"] == ["expires_at", "expires_in_days"]
    # strict JSON types are still plain integers / booleans in the schema
    assert _schema(doc, "ContactUpdate")["properties"]["is_primary"]["type"] == "boolean"


def test_errors_are_problem_json_and_body_and_query_problems_are_documented(doc):
    checked = 0
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if status[0] in "45":
                    assert response["content"] == {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    }, (method, path, status)
                    checked += 1
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= responses.keys(), (method, path)
            if any(p["in"] == "query" for p in operation.get("parameters", ())):
                assert "414" in responses, (method, path)
    assert checked > 100
    assert "414" in doc["paths"]["/v1/customers"]["get"]["responses"]
    assert "400" in doc["paths"]["/v1/customers/{customer_id}"]["patch"]["responses"]


def test_audit_resource_types_cover_every_audited_resource(doc):
    from crm_api.audit.schemas import AuditResource
    from crm_api.resources import REGISTRY

    # every registered resource audits its writes (the kit's lifecycle helpers), and any
    # service still naming its resource by hand does too
    declared = set(REGISTRY)
    for path in SRC.glob("*/*.py"):
        declared |= set(re.findall(r'^RESOURCE = "(\w+)"', path.read_text(), re.M))
    assert declared <= {r.value for r in AuditResource}, declared
    parameter = next(
        p
        for p in doc["paths"]["/v1/audit-events"]["get"]["parameters"]
        if p["name"] == "resource_type"
    )
    assert "customers" in orjson.dumps(parameter["schema"]).decode()


# --- behaviour that now matches ------------------------------------------------------------
async def test_null_for_fields_that_cannot_be_cleared_is_422(client, engine):
    user = await make_user(engine)
    for field in ("email", "display_name", "roles", "password"):
        body = problem(
            await client.patch(f"/v1/users/{user['id']}", json={field: None}),
            422,
            "validation_error",
        )
        assert {(e["field"], e["code"]) for e in body["errors"]} == {(field, "null_not_allowed")}
    api_client = await create_api_client(client)
    for field in ("name", "roles", "active"):
        body = problem(
            await client.patch(f"/v1/api-clients/{api_client['id']}", json={field: None}),
            422,
            "validation_error",
        )
        assert {(e["field"], e["code"]) for e in body["errors"]} == {(field, "null_not_allowed")}


async def test_json_booleans_and_integers_are_strict(client, admin_user):
    customer = await create_customer(client, admin_user)
    contact = await create_contact(client, customer)
    for value in ("yes", "true", 1):
        body = problem(
            await client.patch(f"/v1/contacts/{contact['id']}", json={"is_primary": value}),
            422,
            "validation_error",
        )
        assert body["errors"][0]["field"] == "is_primary"
    for value in (True, "3", 3.0):
        problem(
            await client.post("/v1/customers", json={"name": "x", "credit_level": value}),
            422,
            "validation_error",
        )
    api_client = await create_api_client(client)
    problem(
        await client.patch(f"/v1/api-clients/{api_client['id']}", json={"active": "false"}),
        422,
        "validation_error",
    )
    problem(
        await client.post(
            "/v1/me/tokens",
            json={
                "name": "x",
                "permissions": [{"resource": "customers", "action": "read"}],
                "expires_in_days": "7",
            },
        ),
        422,
        "validation_error",
    )
    # the real types still work
    response = await client.patch(f"/v1/contacts/{contact['id']}", json={"is_primary": True})
    assert response.status_code == 200, response.text
    await create_customer(client, admin_user, credit_level=3)


async def test_both_expiries_is_422_but_null_for_one_is_fine(client):
    perms = [{"resource": "customers", "action": "read"}]
    problem(
        await client.post(
            "/v1/me/tokens",
            json={
                "name": "x",
                "permissions": perms,
                "expires_in_days": 7,
                "expires_at": "2030-01-01T00:00:00Z",
            },
        ),
        422,
        "validation_error",
    )
    response = await client.post(
        "/v1/me/tokens",
        json={
            "name": "x",
            "permissions": perms,
            "expires_in_days": 7,
            "expires_at": None,
        },
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE", "PUT"])
async def test_other_methods_on_transfer_are_405(client, method):
    response = await client.request(method, "/v1/customers/transfer", json={})
    problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def _cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


@pytest.mark.parametrize(
    "timestamp",
    [
        "9999-12-31T23:59:59-05:00",
        "0001-01-01T00:00:00+05:00",
    ],
)
async def test_cursor_with_an_out_of_range_timestamp_is_400(client, timestamp):
    cursor = _cursor({"s": ["-created_at"], "v": [{"t": timestamp}], "id": str(uuid.uuid4())})
    problem(await client.get("/v1/customers", params={"cursor": cursor}), 400, "invalid_cursor")


async def test_wildcard_token_is_what_the_schema_says(client, client_for, anon_client, engine):
    """`*` is every action on the resource, held as such: the admin's token for
    customers:* can do anything to customers and nothing else, and /me shows exactly that
    (it showed no permission at all: the admin's `*:*` grant was not in the token's set)."""
    from crm_api.pat.schemas import TokenPermission

    assert "must hold" in (TokenPermission.__doc__ or "")
    pat = bearer((await create_pat(client, ("customers", "*")))["token"])
    created = await anon_client.post("/v1/customers", json={"name": "x"}, headers=pat)
    assert created.status_code == 201, created.text
    purged = await anon_client.delete(f"/v1/customers/{created.json()['id']}", headers=pat)
    assert purged.status_code == 204, purged.text
    problem(await anon_client.get("/v1/contacts", headers=pat), 403)
    me = (await anon_client.get("/v1/me", headers=pat)).json()
    assert [(g["resource"], g["action"]) for g in me["permissions"]] == [("customers", "*")]
    # a rep holds some customer actions, not `*`: listed actions only
    rep = await client_for(await make_user(engine, roles=("sales_rep",)))
    response = await rep.post(
        "/v1/me/tokens",
        json={
            "name": "x",
            "permissions": [{"resource": "customers", "action": "*"}],
        },
    )
    assert response.status_code in (403, 422), response.text


async def test_admin_token_narrows_the_admin_grant(client, anon_client):
    pat = bearer((await create_pat(client, ("customers", "read")))["token"])
    me = (await anon_client.get("/v1/me", headers=pat)).json()
    assert [(g["resource"], g["action"]) for g in me["permissions"]] == [("customers", "read")]


async def test_unknown_audit_resource_type_is_422(client):
    body = problem(
        await client.get("/v1/audit-events", params={"resource_type": "customer"}),
        422,
        "validation_error",
    )
    assert body["errors"][0]["field"].startswith("query.resource_type")
    response = await client.get("/v1/audit-events", params={"resource_type": "customers"})
    assert response.status_code == 200, response.text
