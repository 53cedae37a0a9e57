"""Bad input, third round: a key twice in one JSON object, query parameters an operation
does not take, bodies declared in another charset (or not UTF-8), bodies past the size cap
on any route.

Each case asserts the problem (status, ``type``/``code``, and the pointer, parameter or
charset it names) and, through the ``unchanged`` fixture, that no table gained or lost a
row and no customer, order or order line changed.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import problem
from crm_api.errors import ProblemError
from crm_api.kit.body import loads_body
from crm_api.kit.routing import StrictRoute
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user
from factories.orders import create_order, line, make_product

JSON = {"Content-Type": "application/json"}
#: Whose content must not change; every table's row count must not change either.
WATCHED = ("customers", "orders", "order_lines", "audit_events", "idempotency_keys")


async def _snapshot(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        tables = (
            await conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename <> 'alembic_version' ORDER BY 1"
                )
            )
        ).scalars()
        snapshot: dict[str, Any] = {}
        for table in list(tables):
            snapshot[table] = (
                await conn.execute(text(f"SELECT count(*) FROM {table}"))
            ).scalar_one()
        for table in WATCHED:
            snapshot[f"{table} content"] = (
                await conn.execute(
                    text(f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t")
                )
            ).scalar_one()
    return snapshot


@pytest.fixture
async def world(client: httpx.AsyncClient, engine: AsyncEngine) -> AsyncIterator[dict[str, Any]]:
    """A customer with an order; after the test, proof that no bad request wrote anything."""
    unit = await make_org_unit(engine)
    owner = await make_user(engine, org_unit=unit)
    customer = await create_customer(client, owner, external_ref="ext-1", tags=["vip"])
    product = await make_product(engine)
    order = await create_order(client, customer, line(product, "2"))
    before = await _snapshot(engine)
    yield {"customer": customer, "order": order, "product": product}
    assert await _snapshot(engine) == before, "a bad request wrote something"


def bad(response: httpx.Response, status: int, code: str, case: object = "") -> dict[str, Any]:
    assert response.status_code == status, f"{case!r}: {response.status_code} {response.text}"
    body = problem(response, status, code)
    assert body["type"] == f"https://crm-api.dev/problems/{code}", body
    assert body["request_id"] == response.headers["x-request-id"], body
    return body


# --- duplicate keys -------------------------------------------------------------------------


async def test_a_key_twice_in_one_object_is_400_naming_its_pointer(client, world, anon_client):
    customer, order, product = world["customer"], world["order"], world["product"]
    pid = str(product["id"])
    cases: list[tuple[str, str, bytes, str]] = [
        ("POST", "/v1/customers", b'{"name": "a", "name": "b"}', "/name"),
        # equal after decoding: the escape is the same key
        ("POST", "/v1/customers", b'{"name": "a", "na\\u006de": "b"}', "/name"),
        # the same value twice is still two keys
        ("POST", "/v1/customers", b'{"name": "a", "grade": "A", "grade": "A"}', "/grade"),
        # nested, with keys RFC 6901 escapes
        (
            "POST",
            "/v1/customers",
            b'{"name": "a", "custom_fields": {"a/b~c": 1, "x": 2, "a/b~c": 3}}',
            "/custom_fields/a~1b~0c",
        ),
        # the slow path's triggers: an escaped colon, a 19-digit run, NaN
        (
            "POST",
            "/v1/customers",
            b'{"name": "\\u003a", "custom_fields": {"k": 1, "k": 2}}',
            "/custom_fields/k",
        ),
        (
            "POST",
            "/v1/customers",
            b'{"name": "a", "notes": "1234567890123456789", "notes": "b"}',
            "/notes",
        ),
        (
            "POST",
            "/v1/customers",
            b'{"name": "a", "custom_fields": {"k": NaN, "k": 1}}',
            "/custom_fields/k",
        ),
        # the first in document order, inside an array
        (
            "POST",
            "/v1/orders",
            b'{"customer_id": "%s", "lines": [{"product_id": "%s", "quantity": "1"},'
            b' {"product_id": "%s", "quantity": "1", "quantity": "9"}], "lines": []}'
            % (customer["id"].encode(), pid.encode(), pid.encode()),
            "/lines/1/quantity",
        ),
        ("PATCH", f"/v1/customers/{customer['id']}", b'{"grade": "A", "grade": "B"}', "/grade"),
        (
            "PUT",
            "/v1/customers/by-external-ref/ext-1",
            b'{"name": "a", "tags": ["x"], "tags": []}',
            "/tags",
        ),
        ("PATCH", f"/v1/orders/{order['id']}", b'{"notes": "a", "notes": "b"}', "/notes"),
    ]
    for method, url, raw, pointer in cases:
        response = await client.request(method, url, content=raw, headers=JSON)
        body = bad(response, 400, "duplicate_key", (method, raw[:60]))
        assert body["pointer"] == pointer, body
        field = ".".join(p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:])
        assert body["errors"] == [
            {
                "field": field,
                "code": "duplicate_key",
                "message": "This key appears more than once in its object.",
            }
        ], body
    # a handler that reads its body itself: the token endpoint
    body = bad(
        await anon_client.post(
            "/v1/auth/token",
            content=b'{"grant_type": "password", "grant_type": "refresh_token"}',
            headers=JSON,
        ),
        400,
        "duplicate_key",
    )
    assert body["pointer"] == "/grant_type", body


def _reference(raw: bytes) -> Any:
    """What loads_body must answer: json.loads of UTF-8, a repeated key refused."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise KeyError("duplicate")
        return dict(pairs)

    try:
        text = raw.decode("utf-8-sig")
        json.loads(text)
    except (ValueError, RecursionError):
        return ("malformed_json",)
    try:
        return ("ok", json.loads(text, object_pairs_hook=unique))
    except KeyError:
        return ("duplicate_key",)


def _random_json(rng: random.Random, depth: int = 0) -> str:
    """JSON text, with what tells the two paths apart: repeated and escaped keys, colons,
    long digit runs, numbers past 64 bits, NaN, unicode and escapes."""
    kind = rng.random()
    if depth < 4 and kind < 0.3:
        keys = [rng.choice(["a", "b", "a:b", "\\u0061", "\\u003a", "ü", "k\\"])]
        for _ in range(rng.randint(0, 4)):
            keys.append(rng.choice(["a", "b", "c", "a:b", ":", "\\u003a", "\\u003A", "x/y~"]))
        if rng.random() < 0.7:  # mostly without repeats: the fast path must accept those
            keys = list(dict.fromkeys(keys))
        members = [f'"{k}":{_random_json(rng, depth + 1)}' for k in keys]
        return "{" + ", ".join(members) + "}"
    if depth < 4 and kind < 0.45:
        return "[" + ",".join(_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"
    return rng.choice(
        [
            "1",
            "-0",
            "12345678901234567890",
            "-9223372036854775809",
            "9223372036854775807",
            "18446744073709551616",
            "1e999",
            "NaN",
            "2.5e-3",
            '"2024-01-01T00:00:00Z"',
            '"ü\\n\\u003a"',
            '"1234567890123456789"',
            '"\\ud800"',
            "true",
            "null",
        ]
    )


def test_loads_body_answers_as_the_standard_parser():
    """The fast path (orjson, then a count of ``:``) and the slow one agree with json.loads
    plus a repeated-key check on every generated body, the tricky ones included."""
    rng = random.Random(20261202)
    outcomes: set[str] = set()
    for _ in range(3000):
        raw = _random_json(rng).encode()
        expected = _reference(raw)
        try:
            got: tuple[Any, ...] = ("ok", loads_body(raw))
        except ProblemError as exc:
            got = (exc.code,)
        assert got[0] == expected[0], raw
        if got[0] == "ok":
            # equal values of equal types (an int stays an int, past 64 bits too)
            assert repr(got[1]) == repr(expected[1]), raw
        outcomes.add(got[0])
    assert outcomes == {"ok", "duplicate_key", "malformed_json"}
    for raw in (b"{", b"", b'{"a": 1}x', b"\xff", '{"a": 1}'.encode("utf-16"), b"[" * 5000):
        with pytest.raises(ProblemError) as caught:
            loads_body(raw)
        assert caught.value.code == "malformed_json", raw
    assert loads_body(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}  # a UTF-8 byte order mark is skipped


# --- query parameters -----------------------------------------------------------------------


async def test_unknown_query_parameters_are_422_on_every_operation(client, world, anon_client):
    customer, order = world["customer"], world["order"]
    listed = bad(await client.get("/v1/customers?colour=red"), 422, "validation_error")
    get_path_error = listed["errors"]
    assert get_path_error == [
        {
            "field": "query.colour",
            "code": "unknown_field",
            "message": "Extra inputs are not permitted",
        }
    ]
    cid, oid = customer["id"], order["id"]
    cases: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/customers?colour=red", {"name": "new"}),
        ("PATCH", f"/v1/customers/{cid}?colour=red", {"grade": "D"}),
        ("PUT", "/v1/customers/by-external-ref/ext-1?colour=red", {"name": "changed"}),
        ("DELETE", f"/v1/customers/{cid}?colour=red", None),
        ("POST", f"/v1/customers/{cid}/purge?colour=red", None),
        ("POST", f"/v1/orders/{oid}/cancel?colour=red", None),
        ("DELETE", f"/v1/orders/{oid}?colour=red", None),
        ("GET", f"/v1/customers/{cid}?colour=red", None),
        ("GET", "/healthz?colour=red", None),
    ]
    for method, url, payload in cases:
        response = await client.request(method, url, json=payload)
        body = bad(response, 422, "validation_error", (method, url))
        assert body["errors"] == get_path_error, body
    # every unknown parameter is named, once
    body = bad(
        await client.post("/v1/customers?a=1&b=2&a=3&=4", json={"name": "new"}),
        422,
        "validation_error",
    )
    assert [e["field"] for e in body["errors"]] == ["query.a", "query.b", "query."], body
    assert {e["code"] for e in body["errors"]} == {"unknown_field"}
    # a handler that reads its own body (no token issued)
    bad(
        await anon_client.post(
            "/v1/auth/token?colour=red",
            data={"grant_type": "password", "username": "x@y.z", "password": "p"},
        ),
        422,
        "validation_error",
    )
    # routes that only refuse a method still answer 405
    bad(await client.get("/v1/customers/transfer?colour=red"), 405, "method_not_allowed")


def test_every_route_is_strict(app: FastAPI):
    """A router made without ``route_class=StrictRoute`` would take duplicate keys and
    unknown query parameters again."""
    loose = [
        context.path_format
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        and context.original_route.include_in_schema
        and not isinstance(context.original_route, StrictRoute)
    ]
    assert not loose


# --- charsets -------------------------------------------------------------------------------


async def test_a_charset_other_than_utf8_is_415_naming_it(client, world, anon_client):
    customer = world["customer"]
    url = f"/v1/customers/{customer['id']}"
    for charset in (
        "latin-1",
        "ISO-8859-1",
        "utf-16",
        "UTF-16LE",
        "us-ascii",
        "utf8",
        '"utf-16"',
        "",
    ):
        ctype = f"application/json; charset={charset}"
        for method, target, payload in (
            ("POST", "/v1/customers", {"name": "x"}),
            ("PATCH", url, {"grade": "D"}),
        ):
            response = await client.request(
                method, target, content=orjson.dumps(payload), headers={"Content-Type": ctype}
            )
            body = bad(response, 415, "unsupported_media_type", ctype)
            named = charset.strip('"')
            assert body["charset"] == named, body
            assert repr(named) in body["detail"], body
    # forms too (the token endpoint)
    body = bad(
        await anon_client.post(
            "/v1/auth/token",
            content=b"grant_type=password&username=x&password=y",
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=ISO-8859-1"},
        ),
        415,
        "unsupported_media_type",
    )
    assert body["charset"] == "ISO-8859-1"


async def test_utf8_in_any_spelling_is_accepted(client, engine):
    for ctype in (
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        'application/json; charset="Utf-8"',
        "application/json; foo=bar; charset=utf-8",
    ):
        response = await client.post(
            "/v1/customers", content=orjson.dumps({"name": ctype}), headers={"Content-Type": ctype}
        )
        assert response.status_code == 201, (ctype, response.text)
    names = await _names(engine)
    assert len(names) == 5


async def _names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT name FROM customers"))).scalars())


async def test_a_body_that_is_not_utf8_is_400(client, world):
    url = f"/v1/customers/{world['customer']['id']}"
    for raw in (
        '{"name": "utf-16"}'.encode("utf-16"),  # with a byte order mark: json.loads took it
        '{"name": "utf-16"}'.encode("utf-16-le"),
        '{"name": "utf-32"}'.encode("utf-32"),
        '{"name": "latin-1 é"}'.encode("latin-1"),
        b'{"name": "\xc3"}',  # truncated sequence
        b'{"name": "\xed\xa0\x80"}',  # an encoded surrogate
    ):
        for method, target in (("POST", "/v1/customers"), ("PATCH", url)):
            body = bad(
                await client.request(method, target, content=raw, headers=JSON),
                400,
                "malformed_json",
                raw,
            )
            assert body["detail"] == "The request body is not valid JSON.", body


# --- size cap -------------------------------------------------------------------------------


async def test_a_declared_length_past_the_cap_is_refused_before_reading(app, world):
    """The ASGI app itself: 413 without a single ``receive``."""
    limit = app.state.settings.max_body_bytes
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for method, path in (
        ("POST", "/v1/customers"),
        ("PATCH", f"/v1/customers/{world['customer']['id']}"),
        ("POST", f"/v1/orders/{world['order']['id']}/cancel"),
        ("POST", "/v1/auth/token"),
    ):
        sent.clear()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"test"),
                (b"content-type", b"application/json"),
                (b"content-length", str(limit + 1).encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
        }
        await app(scope, receive, send)
        assert sent[0]["status"] == 413, (path, sent)
        assert orjson.loads(sent[1]["body"])["code"] == "payload_too_large"


async def test_a_chunked_body_past_the_cap_is_413_on_any_route(app, client, world, anon_client):
    limit = app.state.settings.max_body_bytes

    def streamed(prefix: bytes = b'{"notes": "') -> Any:
        async def chunks() -> AsyncIterator[bytes]:
            yield prefix
            for _ in range(limit // 65536 + 2):
                yield b"n" * 65536

        return chunks()

    order = world["order"]
    for method, target, ctype in (
        ("POST", f"/v1/orders/{order['id']}/cancel", "application/json"),  # takes no body
        ("POST", f"/v1/customers/{world['customer']['id']}/purge", "application/json"),
        ("PATCH", f"/v1/orders/{order['id']}", "application/json"),
    ):
        response = await client.request(
            method, target, content=streamed(), headers={"Content-Type": ctype}
        )
        assert response.request.headers["transfer-encoding"] == "chunked"
        bad(response, 413, "payload_too_large", target)
    response = await anon_client.post(
        "/v1/auth/token",
        content=streamed(b"grant_type=password&username="),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    bad(response, 413, "payload_too_large", "form")
    # the order was not cancelled by the request whose body was refused
    got = await client.get(f"/v1/orders/{order['id']}")
    assert got.json()["status"] == order["status"]


async def test_a_small_chunked_body_on_a_route_without_one_is_ignored(client, engine):
    """Read to enforce the cap, then ignored as before (``axios.post(url, {})`` sends one)."""
    owner = await make_user(engine, org_unit=await make_org_unit(engine))
    customer = await create_customer(client, owner)
    order = await create_order(client, customer, line(await make_product(engine)))

    async def small() -> AsyncIterator[bytes]:
        yield b"{}"

    response = await client.post(f"/v1/orders/{order['id']}/cancel", content=small(), headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
