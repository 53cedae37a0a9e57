"""The suite's response check (tests/conftest.py, :class:`ContractChecker`) catches what it
is there to catch: every response the shared clients get is held against the committed
OpenAPI document, and a status or body the document does not describe fails the test."""

from __future__ import annotations

import uuid

import orjson
import pytest

from conftest import ContractViolation, _check_response, contract


def test_the_shared_clients_check_every_response(client, anon_client):
    for http in (client, anon_client):
        assert _check_response in http.event_hooks["response"]


def test_a_documented_answer_passes():
    body = {
        "type": "https://crm-api.dev/problems/customer_not_found",
        "title": "Not Found",
        "status": 404,
        "detail": "No customer with that id.",
        "code": "customer_not_found",
        "instance": "/v1/customers/x",
        "request_id": "abc",
    }
    contract().check(
        "GET", f"/v1/customers/{uuid.uuid4()}", 404, "application/problem+json", orjson.dumps(body)
    )
    contract().check("DELETE", f"/v1/customers/{uuid.uuid4()}", 204, "", b"")


def test_an_undocumented_status_fails_readably():
    with pytest.raises(ContractViolation) as caught:
        contract().check(
            "GET", f"/v1/customers/{uuid.uuid4()}", 418, "application/problem+json", b"{}"
        )
    message = str(caught.value)
    assert "status 418 is not documented for GET /v1/customers/{customer_id}" in message
    assert "(customers_get)" in message


def test_a_body_off_its_schema_fails_naming_the_field():
    page = {"data": [{"id": "not-a-uuid"}], "next_cursor": None, "has_more": False}
    with pytest.raises(ContractViolation) as caught:
        contract().check("GET", "/v1/customers", 200, "application/json", orjson.dumps(page))
    message = str(caught.value)
    assert "does not match the schema documented for GET /v1/customers (customers_list)" in (
        message
    )
    assert "at data/0:" in message and '"name" is a required property' in message


def test_a_problem_body_off_the_problem_schema_fails():
    with pytest.raises(ContractViolation, match="status"):
        contract().check(
            "GET",
            "/v1/customers",
            422,
            "application/problem+json",
            orjson.dumps({"detail": "no status, type, title or code"}),
        )


def test_a_body_of_an_undocumented_type_fails():
    with pytest.raises(ContractViolation, match="documents application/json"):
        contract().check("GET", "/v1/customers", 200, "text/html", b"<html></html>")


def test_an_operation_the_document_lacks_may_only_be_404_or_405():
    contract().check(
        "GET",
        "/v1/customers/transfer",
        405,
        "application/problem+json",
        orjson.dumps(
            {"type": "t", "title": "t", "status": 405, "detail": "d", "code": "method_not_allowed"}
        ),
    )
    with pytest.raises(ContractViolation, match="no operation PUT /v1/customers"):
        contract().check("PUT", "/v1/customers", 200, "application/json", b"{}")
