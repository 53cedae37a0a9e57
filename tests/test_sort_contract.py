"""``sort`` is published as what it is (issue #8): an array of the resource's keys, each
ascending or descending, sent comma-separated (``style: form, explode: false``), so a
generated client types it instead of reading prose."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from crm_api.kit.pagination import sort_values
from crm_api.resources import REGISTRY
from factories.customers import create_customer


@pytest.fixture(scope="module")
def doc(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def _sort_parameters(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": p
        for path, item in doc["paths"].items()
        for method, op in item.items()
        for p in op.get("parameters", ())
        if p["in"] == "query" and p["name"] == "sort"
    }


def test_every_sort_parameter_is_an_array_of_enum_keys(doc):
    params = _sort_parameters(doc)
    # every list endpoint: customers, a customer's contacts, contacts, users, org units,
    # roles, a role's grants, API clients, tokens, audit events (and the trash lists)
    assert len(params) >= 10, sorted(params)
    for where, p in params.items():
        schema = p["schema"]
        assert (p["style"], p["explode"]) == ("form", False), where
        assert schema["type"] == "array", where
        values = schema["items"]["enum"]
        keys = [v for v in values if not v.startswith("-")]
        assert values == [v for k in keys for v in (k, f"-{k}")], where
        assert schema["uniqueItems"] is True and schema["minItems"] == 1, where
        assert schema["maxItems"] == len(keys), where
        assert set(schema["default"]) <= set(values), where
        assert "maxLength" not in schema, where


def test_published_keys_are_the_ones_the_resource_sorts_by(doc):
    params = _sort_parameters(doc)
    for resource in REGISTRY.values():
        got = params[f"GET {resource.samples.path}"]["schema"]["items"]["enum"]
        assert got == list(sort_values(resource.sorts)), resource.name


def test_every_list_operation_documents_sort(doc):
    lists = [
        f"GET {path}"
        for path, item in doc["paths"].items()
        if "Page_" in str(item.get("get", {}).get("responses", {}).get("200", ""))
    ]
    assert len(lists) >= 10, lists
    assert set(lists) <= set(_sort_parameters(doc)), set(lists) - set(_sort_parameters(doc))


async def test_sort_sent_exploded_or_comma_separated_is_the_same_sort(client, admin_user):
    for name in ("b", "a", "b", "c"):
        await create_customer(client, admin_user, name=name)

    async def names(params: Any) -> list[str]:
        response = await client.get("/v1/customers", params=params)
        assert response.status_code == 200, response.text
        return [c["name"] for c in response.json()["data"]]

    joined = await names({"sort": "name,-created_at"})
    exploded = await names([("sort", "name"), ("sort", "-created_at")])
    assert joined == exploded
    assert joined == ["a", "b", "b", "c"]
    # each at most once, however it is sent
    bad = await client.get("/v1/customers", params=[("sort", "name"), ("sort", "-name")])
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_sort"


async def test_a_single_valued_parameter_sent_twice_is_422(client):
    """Found by schemathesis once ``sort`` became an array: ``active=x&active=false`` was
    answered as ``active=false`` (the last value won), though the document says one
    boolean."""
    response = await client.get("/v1/org-units", params=[("active", "x"), ("active", "false")])
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0] == {
        "field": "query.active",
        "code": "repeated_parameter",
        "message": "Send this parameter once.",
    }
    # list filters take several values, as documented
    ok = await client.get("/v1/customers", params=[("type", "company"), ("type", "individual")])
    assert ok.status_code == 200, ok.text
