"""Bad input of any kind on the customers endpoints: a clear 4xx problem, and nothing changes.

Every case asserts the exact status and ``code`` of an RFC 9457 body carrying the request
id, and (through the ``existing`` fixture) that the customers, audit_events and
idempotency_keys tables and the existing customer's row are exactly what they were.
Cases are grouped per kind of input in one test each: a database reset per case would cost
more than every request of the file together.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import count_rows, problem
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user

JSON = {"Content-Type": "application/json"}


async def _counts(engine: AsyncEngine) -> tuple[int, ...]:
    return tuple(
        [await count_rows(engine, t) for t in ("customers", "audit_events", "idempotency_keys")]
    )


async def _row(engine: AsyncEngine, customer_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    text("SELECT * FROM customers WHERE id = :id"), {"id": customer_id}
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


@pytest.fixture
async def existing(client: httpx.AsyncClient, engine: AsyncEngine) -> AsyncIterator[dict]:
    """One customer; after the test, proof that no bad request changed anything."""
    unit = await make_org_unit(engine)
    owner = await make_user(engine, org_unit=unit)
    customer = await create_customer(
        client, owner, external_ref="ext-1", tax_number="91310000MA1FL0001X", tags=["vip"]
    )
    counts, row = await _counts(engine), await _row(engine, customer["id"])
    yield customer
    assert await _counts(engine) == counts, "a bad request changed the row counts"
    assert await _row(engine, customer["id"]) == row, "a bad request changed the customer"


def bad(response: httpx.Response, status: int, code: str, case: object = "") -> dict[str, Any]:
    """A problem response with ``status`` and ``code`` whose request id is the response's."""
    assert response.status_code == status, f"{case!r}: {response.status_code} {response.text}"
    body = problem(response, status, code)
    assert body["request_id"] and body["request_id"] == response.headers["x-request-id"], body
    assert body["type"].endswith("/" + code), body
    return body


def any_4xx(response: httpx.Response, case: object = "") -> dict[str, Any]:
    """For inputs where 400 and 422 are both honest answers: a problem, never a 500."""
    assert response.status_code in (400, 422), f"{case!r}: {response.status_code} {response.text}"
    return problem(response, response.status_code)


def field_codes(body: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["field"], e["code"]) for e in body["errors"]}


def _cursor(payload: Any) -> str:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- bodies ---------------------------------------------------------------------------------


async def test_malformed_json_is_400(client, existing):
    url = f"/v1/customers/{existing['id']}"
    for raw in (
        b"{",
        b'{"name": "x",}',
        b"[1, 2",
        b"nul",
        b"{'name': 'x'}",
        b'{"name": "\xff\xfe"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser's recursion limit
    ):
        body = bad(
            await client.post("/v1/customers", content=raw, headers=JSON),
            400,
            "malformed_json",
            raw[:20],
        )
        assert body["detail"] == "The request body is not valid JSON.", body
        assert body.get("errors") in (
            None,
            [{"field": "body", "code": "json_invalid", "message": "JSON decode error"}],
        ), body
        bad(await client.patch(url, content=raw, headers=JSON), 400, "malformed_json", raw[:20])


async def test_wrong_types_are_422(client, existing):
    url = f"/v1/customers/{existing['id']}"
    cases = [
        ({"name": 5}, "name", "string_type"),
        ({"name": ["a"]}, "name", "string_type"),
        # strict: JSON integers only (no "3", 3.0 or true)
        ({"credit_level": "high"}, "credit_level", "int_type"),
        ({"credit_level": 2.5}, "credit_level", "int_type"),
        ({"credit_level": "3"}, "credit_level", "int_type"),
        ({"credit_level": True}, "credit_level", "int_type"),
        ({"tags": "vip"}, "tags", "list_type"),
        ({"tags": [1]}, "tags.0", "string_type"),
        ({"custom_fields": [1]}, "custom_fields", "dict_type"),
        ({"owner_id": "not-a-uuid"}, "owner_id", "uuid_parsing"),
        ({"email": "not-an-email"}, "email", "value_error"),
        ({"phone": "call me"}, "phone", "value_error"),
        ({"website": "ftp://x"}, "website", "value_error"),
        ({"type": "alien"}, "type", "enum"),
        ({"lifecycle_stage": 1}, "lifecycle_stage", "enum"),
    ]
    for payload, field, code in cases:
        body = bad(
            await client.post("/v1/customers", json={"name": "x", **payload}),
            422,
            "validation_error",
            payload,
        )
        assert (field, code) in field_codes(body), (payload, body)
        body = bad(await client.patch(url, json=payload), 422, "validation_error", payload)
        assert (field, code) in field_codes(body), (payload, body)
    # JSON that is not an object, and an empty body
    for payload in ([], "name", 1, None, [{"name": "x"}]):
        bad(await client.post("/v1/customers", json=payload), 422, "validation_error", payload)
        bad(await client.patch(url, json=payload), 422, "validation_error", payload)
    body = bad(
        await client.post("/v1/customers", content=b"", headers=JSON), 422, "validation_error"
    )
    assert field_codes(body) == {("body", "missing")}, body


async def test_unknown_fields_are_422(client, existing):
    """Unknown and server-owned fields (mass assignment) are rejected by name."""
    url = f"/v1/customers/{existing['id']}"
    for extra in (
        {"id": str(uuid.uuid4())},
        {"version": 7},
        {"created_at": "2020-01-01T00:00:00Z"},
        {"updated_at": "2020-01-01T00:00:00Z"},
        {"deleted_at": None},
        {"nmae": "typo"},
    ):
        (name,) = extra
        body = bad(
            await client.post("/v1/customers", json={"name": "x", **extra}),
            422,
            "validation_error",
            extra,
        )
        assert (name, "unknown_field") in field_codes(body), body
        body = bad(
            await client.patch(url, json={"grade": "A", **extra}), 422, "validation_error", extra
        )
        assert (name, "unknown_field") in field_codes(body), body
    for query in ("colour=red", "limit=5&Sort=name", "q=a&deleted_at=x"):
        body = bad(await client.get(f"/v1/customers?{query}"), 422, "validation_error", query)
        assert {c for _, c in field_codes(body)} == {"unknown_field"}, body


async def test_oversized_body_is_413(client, existing, app):
    limit = app.state.settings.max_body_bytes
    url = f"/v1/customers/{existing['id']}"
    payload = orjson.dumps({"name": "x", "notes": "n" * (limit + 10)})
    # declared with Content-Length: refused before the body is read
    bad(await client.post("/v1/customers", content=payload, headers=JSON), 413, "payload_too_large")
    bad(await client.patch(url, content=payload, headers=JSON), 413, "payload_too_large")

    async def streamed():
        yield b'{"name": "x", "notes": "'
        for _ in range(limit // 65536 + 2):
            yield b"n" * 65536
        yield b'"}'

    # chunked, no Content-Length: counted while it is read
    for method, target in (("POST", "/v1/customers"), ("PATCH", url)):
        response = await client.request(method, target, content=streamed(), headers=JSON)
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        bad(response, 413, "payload_too_large", method)

    async def lying():
        yield payload

    # a small declared length does not let a larger streamed body through
    response = await client.post(
        "/v1/customers", content=lying(), headers={**JSON, "Content-Length": "20"}
    )
    bad(response, 413, "payload_too_large")


async def test_non_json_body_is_415(client, existing):
    url = f"/v1/customers/{existing['id']}"
    content = b'{"name": "x"}'
    for ctype in (
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "image/png",
        "text/json",
    ):
        headers = {"Content-Type": ctype}
        bad(
            await client.post("/v1/customers", content=content, headers=headers),
            415,
            "unsupported_media_type",
            ctype,
        )
        bad(
            await client.patch(url, content=content, headers=headers),
            415,
            "unsupported_media_type",
            ctype,
        )
    response = await client.post("/v1/customers", content=content)
    assert "content-type" not in response.request.headers
    bad(response, 415, "unsupported_media_type", "no content type")


# --- lists ----------------------------------------------------------------------------------


async def test_bad_cursor_is_400(client, existing):
    uid = str(uuid.uuid4())
    when = {"t": "2024-01-01T00:00:00+00:00"}
    cases: list[tuple[Any, str | None]] = [
        ("not-a-cursor!!", None),
        ("AAAA", None),
        (_cursor(b"not json"), None),
        (_cursor([1, 2]), None),
        (_cursor({"s": ["-created_at"]}), None),
        (_cursor({"s": ["-created_at"], "v": [], "id": uid}), None),
        (_cursor({"s": ["name"], "v": ["a"], "id": uid}), None),  # issued for another sort
        (_cursor({"s": ["-created_at"], "v": [when], "id": uid}), "created_at"),
        # tampered values of the wrong type
        (_cursor({"s": ["-created_at"], "v": [5], "id": uid}), None),
        (_cursor({"s": ["-created_at"], "v": ["2024-01-01"], "id": uid}), None),
        (_cursor({"s": ["-created_at"], "v": [{"t": 5}], "id": uid}), None),
        (_cursor({"s": ["-created_at"], "v": [{"t": "yesterday"}], "id": uid}), None),
        (_cursor({"s": ["-created_at"], "v": [{"t": "2024-01-01T00:00:00"}], "id": uid}), None),
        (_cursor({"s": ["-created_at"], "v": [None], "id": uid}), None),
        (_cursor({"s": ["-created_at"], "v": 5, "id": uid}), None),
        (_cursor({"s": ["-created_at"], "v": [when, when], "id": uid}), None),
        (_cursor({"s": ["-created_at"], "v": [when], "id": "nope"}), None),
        (_cursor({"s": ["-created_at"], "v": [when], "id": 5}), None),
        (_cursor({"s": ["-created_at"], "v": [when], "id": None}), None),
        (_cursor({"s": ["-created_at"], "v": [when], "id": ["x"]}), None),
        (_cursor({"s": ["-created_at"], "v": [when], "id": {"t": "x"}}), None),
        (_cursor({"s": ["name"], "v": [5], "id": uid}), "name"),
        (_cursor({"s": ["name"], "v": [when], "id": uid}), "name"),
        (_cursor({"s": ["name"], "v": [["a"]], "id": uid}), "name"),
        (_cursor({"s": ["name"], "v": [True], "id": uid}), "name"),
        (_cursor({"s": ["name"], "v": ["a\u0000b"], "id": uid}), "name"),
        (_cursor({"s": ["-name", "created_at"], "v": ["a", "b"], "id": uid}), "-name,created_at"),
    ]
    for cursor, sort in cases:
        params = {"cursor": cursor, **({"sort": sort} if sort else {})}
        bad(await client.get("/v1/customers", params=params), 400, "invalid_cursor", cursor)
    body = bad(
        await client.get("/v1/customers", params={"cursor": "A" * 1025}), 422, "validation_error"
    )
    assert ("query.cursor", "string_too_long") in field_codes(body)


async def test_bad_sort_and_limit_are_422(client, existing):
    for sort in (
        "colour",
        "-colour",
        "name,name",
        "name,-name",
        ",",
        "",
        "owner_id",
        "id;drop",
        "name,,colour",
        "--name",
        "+-name",
        "-+name",
        "- name",
        "s" * 201,
    ):
        code = "validation_error" if len(sort) > 200 else "invalid_sort"
        body = bad(await client.get("/v1/customers", params={"sort": sort}), 422, code, sort)
        assert body["errors"], body
    for limit in ("0", "-1", "201", "1000000000000000000000", "abc", "1.5", ""):
        body = bad(
            await client.get("/v1/customers", params={"limit": limit}),
            422,
            "validation_error",
            limit,
        )
        assert {f for f, _ in field_codes(body)} == {"query.limit"}, body


async def test_bad_filters_are_422(client, existing):
    cases = [
        ({"created_after": "yesterday"}, "query.created_after"),
        ({"created_after": "2024-01-01T00:00:00"}, "query.created_after"),  # naive
        ({"updated_before": "2024-13-01T00:00:00Z"}, "query.updated_before"),
        # valid timestamps whose UTC instant falls outside years 1-9999
        ({"created_after": "9999-12-31T23:59:59-23:59"}, "query.created_after"),
        ({"updated_before": "0001-01-01T00:00:00+14:00"}, "query.updated_before"),
        ({"grade": "Z"}, "query.grade"),
        ({"lifecycle_stage": "zombie"}, "query.lifecycle_stage"),
        ({"owner_id": "me"}, "query.owner_id"),
        ({"include_total": "perhaps"}, "query.include_total"),
        ({"deleted": "2"}, "query.deleted"),
        ({"q": ""}, "query.q"),
        ({"q": "x" * 201}, "query.q"),
        ({"tag": "a,b"}, "query.tag"),
        ({"region": ["r"] * 51}, "query.region"),
    ]
    for params, field in cases:
        body = bad(
            await client.get("/v1/customers", params=params), 422, "validation_error", params
        )
        assert any(e["field"].startswith(field) for e in body["errors"]), body
    any_4xx(await client.get("/v1/customers", params={"q": "a\x00b"}), "NUL in q")


async def test_query_string_too_long_is_414(client, existing, app):
    limit = app.state.settings.max_query_string_bytes
    long_q = {"q": "x" * (limit + 1)}
    bad(await client.get("/v1/customers", params=long_q), 414, "query_too_long")
    bad(
        await client.post("/v1/customers", params=long_q, json={"name": "x"}), 414, "query_too_long"
    )
    bad(await client.get("/v1/nowhere", params=long_q), 414, "query_too_long")


# --- single records -------------------------------------------------------------------------


async def test_stale_if_match_is_412(client, existing):
    url = f"/v1/customers/{existing['id']}"
    for if_match in ('"2"', '"0"', 'W/"9"', '"1 "', "1", "garbage", '"2", "3"'):
        body = bad(
            await client.patch(url, json={"grade": "A"}, headers={"If-Match": if_match}),
            412,
            "version_mismatch",
            if_match,
        )
        assert body["current_version"] == 1
        bad(
            await client.delete(url, headers={"If-Match": if_match}),
            412,
            "version_mismatch",
            if_match,
        )
    bad(
        await client.patch(url, json={"grade": "A"}, headers={"If-Match": "x" * 600}),
        422,
        "validation_error",
    )


async def test_bad_paths_and_methods(client, existing):
    for bad_id in ("123", "not-a-uuid", "00000000-0000-0000-0000-00000000000g", "%00"):
        for method in ("GET", "PATCH", "DELETE"):
            kwargs: dict[str, Any] = {"json": {"grade": "A"}} if method == "PATCH" else {}
            body = bad(
                await client.request(method, f"/v1/customers/{bad_id}", **kwargs),
                422,
                "validation_error",
                (method, bad_id),
            )
            assert ("path.customer_id", "uuid_parsing") in field_codes(body), body
        bad(await client.post(f"/v1/customers/{bad_id}/restore"), 422, "validation_error")
    missing = uuid.uuid4()
    bad(await client.get(f"/v1/customers/{missing}"), 404, "customer_not_found")
    bad(
        await client.patch(f"/v1/customers/{missing}", json={"grade": "A"}),
        404,
        "customer_not_found",
    )
    bad(await client.delete(f"/v1/customers/{missing}"), 404, "customer_not_found")
    # restore and purge want a deleted customer; this one is live
    bad(await client.post(f"/v1/customers/{existing['id']}/restore"), 404, "customer_not_found")
    bad(await client.post(f"/v1/customers/{existing['id']}/purge"), 404, "customer_not_found")

    body = bad(await client.get("/v1/nowhere"), 404, "not_found")
    assert body["instance"] == "/v1/nowhere"
    bad(await client.get("/v1/customers/a/b/c"), 404, "not_found")
    bad(await client.post("/nowhere", json={}), 404, "not_found")

    response = await client.put(f"/v1/customers/{existing['id']}", json={"name": "x"})
    bad(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    response = await client.delete("/v1/customers")
    bad(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}


async def test_null_for_non_nullable_patch_field_is_422(client, existing):
    url = f"/v1/customers/{existing['id']}"
    for field in ("name", "type", "lifecycle_stage", "tags", "custom_fields", "owner_id"):
        body = bad(await client.patch(url, json={field: None}), 422, "validation_error", field)
        assert field_codes(body) == {(field, "null_not_allowed")}, body
    body = bad(
        await client.patch(url, json={"name": None, "tags": None, "grade": "A"}),
        422,
        "validation_error",
    )
    assert field_codes(body) == {("name", "null_not_allowed"), ("tags", "null_not_allowed")}


async def test_out_of_range_values_are_422(client, existing):
    url = f"/v1/customers/{existing['id']}"
    cases = [
        ({"credit_level": 9}, "credit_level", "less_than_equal"),
        ({"credit_level": 0}, "credit_level", "greater_than_equal"),
        ({"credit_level": 2**70}, "credit_level", "less_than_equal"),
        ({"grade": "Z"}, "grade", "enum"),
        ({"grade": "a"}, "grade", "enum"),
        ({"name": "n" * 201}, "name", "string_too_long"),
        ({"name": ""}, "name", "string_too_short"),
        ({"name": "   "}, "name", "string_too_short"),
        ({"tags": [f"t{i}" for i in range(51)]}, "tags", "too_long"),
        ({"tags": [f"t{i}" for i in range(10_000)]}, "tags", "too_long"),
        ({"tags": ["x" * 51]}, "tags.0", "string_too_long"),
        ({"tags": ["a,b"]}, "tags.0", "string_pattern_mismatch"),
        ({"tags": [""]}, "tags.0", "string_too_short"),
        ({"external_ref": "e" * 201}, "external_ref", "string_too_long"),
        ({"tax_number": "t" * 65}, "tax_number", "string_too_long"),
        ({"bank_account": ""}, "bank_account", "string_too_short"),
        ({"notes": "n" * 10_001}, "notes", "string_too_long"),
        ({"address": "a" * 501}, "address", "string_too_long"),
        ({"phone": "1" * 41}, "phone", "string_too_long"),
        ({"custom_fields": {f"k{i}": i for i in range(101)}}, "custom_fields", "value_error"),
        ({"custom_fields": {"blob": "x" * 17_000}}, "custom_fields", "value_error"),
    ]
    for payload, field, code in cases:
        label = str(payload)[:60]
        body = bad(
            await client.post("/v1/customers", json={"name": "x", **payload}),
            422,
            "validation_error",
            label,
        )
        assert (field, code) in field_codes(body), (label, body)
        body = bad(await client.patch(url, json=payload), 422, "validation_error", label)
        assert (field, code) in field_codes(body), (label, body)


async def test_values_jsonb_cannot_store_are_rejected(client, existing):
    """Python's parser accepts what PostgreSQL's jsonb or the response encoder do not (NaN,
    Infinity, integers past 64 bits, deep nesting, NUL): a 4xx problem, never a 500."""
    url = f"/v1/customers/{existing['id']}"
    nested = b'{"a": ' * 300 + b"1" + b"}" * 300
    for value in (
        b"1" + b"0" * 30,
        b"-1" + b"0" * 30,
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e999",
        b"[1e999]",
        nested,
        b'"a\\u0000b"',
        b'{"a\\u0000b": 1}',
    ):
        raw = b'{"custom_fields": {"k": ' + value + b"}}"
        body = bad(
            await client.patch(url, content=raw, headers=JSON), 422, "validation_error", value[:20]
        )
        assert {f for f, _ in field_codes(body)} == {"custom_fields"}, body
        body = bad(
            await client.post(
                "/v1/customers", content=raw.replace(b"{", b'{"name": "x", ', 1), headers=JSON
            ),
            422,
            "validation_error",
            value[:20],
        )
    # NUL in plain text columns: PostgreSQL refuses it; the answer is still a 4xx
    any_4xx(await client.post("/v1/customers", json={"name": "a\x00b"}), "NUL in name")
    any_4xx(await client.patch(url, json={"notes": "a\x00b"}), "NUL in notes")


async def test_bad_references_and_headers(client, existing):
    url = f"/v1/customers/{existing['id']}"
    body = bad(
        await client.post("/v1/customers", json={"name": "x", "owner_id": str(uuid.uuid4())}),
        422,
        "invalid_owner",
    )
    assert body["errors"][0]["field"] == "owner_id"
    bad(await client.patch(url, json={"owner_id": str(uuid.uuid4())}), 422, "invalid_owner")
    bad(await client.patch(url, json={"org_unit_id": str(uuid.uuid4())}), 422, "invalid_org_unit")
    for key in (b"", b"x" * 256, b"has space", b"tab\tkey", "ключ".encode()):
        body = bad(
            await client.post(
                "/v1/customers", json={"name": "x"}, headers={"Idempotency-Key": key}
            ),
            422,
            "validation_error",
            key,
        )
        assert {f for f, _ in field_codes(body)} == {"header.Idempotency-Key"}, body
