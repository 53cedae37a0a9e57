"""Leaks found by probing a demo server as a low-privilege caller (second attack round),
each pinned here so it cannot come back:

- a duplicate ``tax_number`` 409 named the customer holding the number to a caller who
  sees that customer's tax number masked: a rep could confirm a guessed (masked) tax
  number of a specific customer by sending it on another one (``existing_id`` linked the
  masked value to its record).
"""

from __future__ import annotations

from conftest import count_rows, problem
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user

TAX = "91310000MA1FL8XQ3K"


async def test_a_duplicate_masked_tax_number_names_no_record(client, client_for, engine):
    unit = await make_org_unit(engine, "East")
    rep = await make_user(engine, org_unit=unit)  # sales_rep: own, tax numbers masked
    manager = await make_user(engine, roles=("sales_manager",), org_unit=unit)
    holder = await create_customer(client, rep, tax_number=TAX, external_ref="ext-holder")
    other = await create_customer(client, rep, name="another")
    as_rep = await client_for(rep)
    shown = (await as_rep.get(f"/v1/customers/{holder['id']}")).json()
    assert shown["tax_number"] != TAX  # masked for the rep
    customers = await count_rows(engine, "customers")

    # the 409 stays (the number is unique), but it does not say who holds the number
    for response in (
        await as_rep.patch(f"/v1/customers/{other['id']}", json={"tax_number": TAX}),
        await as_rep.post("/v1/customers", json={"name": "probe", "tax_number": TAX}),
    ):
        body = problem(response, 409, "customer_duplicate")
        assert body["field"] == "tax_number" and body.get("existing_id") is None, body
    assert await count_rows(engine, "customers") == customers

    # a field the rep sees in full is still named: nothing masked is revealed
    body = problem(
        await as_rep.post("/v1/customers", json={"name": "probe", "external_ref": "ext-holder"}),
        409,
        "customer_duplicate",
    )
    assert body["existing_id"] == holder["id"]

    # a caller who sees tax numbers unmasked is told which customer holds it
    as_manager = await client_for(manager)
    body = problem(
        await as_manager.patch(f"/v1/customers/{other['id']}", json={"tax_number": TAX}),
        409,
        "customer_duplicate",
    )
    assert body["existing_id"] == holder["id"]


async def test_a_nul_character_is_a_422_naming_the_field_and_writes_nothing(client, engine):
    """PostgreSQL text cannot hold U+0000. A NUL in a body's string reached SQL and came
    back as ``invalid_value`` "A value is out of range." naming no field; in the query
    string or the path it did the same. Now: refused before any SQL, naming the field."""
    customer = await create_customer(client, await make_user(engine), name="nul")
    customers = await count_rows(engine, "customers")
    for body, field in (
        ({"name": "a\x00b"}, "name"),
        ({"name": "ok", "tags": ["vip", "\x00"]}, "tags"),
        ({"name": "ok", "notes": "\x00"}, "notes"),
    ):
        refused = problem(await client.post("/v1/customers", json=body), 422, "validation_error")
        assert [e["field"] for e in refused["errors"]] == [field], refused
        refused = problem(
            await client.patch(f"/v1/customers/{customer['id']}", json=body),
            422,
            "validation_error",
        )
        assert field in [e["field"] for e in refused["errors"]], refused
    refused = problem(
        await client.put("/v1/customers/by-external-ref/ref-1", json={"name": "a\x00"}),
        422,
        "validation_error",
    )
    assert [e["field"] for e in refused["errors"]] == ["name"]
    # a nested body: an order's customer block
    refused = problem(
        await client.post(
            "/v1/orders",
            json={
                "channel": "web",
                "customer": {"email": "nul@example.cn", "name": "x\x00"},
                "lines": [],
            },
        ),
        422,
        "validation_error",
    )
    assert "customer.name" in [e["field"] for e in refused["errors"]], refused
    for query in ("q=a%00", "external_ref=%00", "sort=name&tag=v%00ip"):
        problem(await client.get(f"/v1/customers?{query}"), 400, "invalid_query")
    refused = problem(
        await client.put("/v1/customers/by-external-ref/a%00b", json={"name": "x"}),
        422,
        "validation_error",
    )
    assert [e["field"] for e in refused["errors"]] == ["path.external_ref"], refused
    assert await count_rows(engine, "customers") == customers
    stored = (await client.get(f"/v1/customers/{customer['id']}")).json()
    assert stored["name"] == "nul" and stored["version"] == 1


async def test_a_nul_in_product_parameters_is_a_422_naming_the_field(client, engine):
    products = await count_rows(engine, "products")
    for parameters in ({"a": "b\x00"}, {"a\x00": 1}, {"a": ["x", "\x00"]}):
        body = {"sku": "NUL-1", "name": "n", "list_price": "1", "parameters": parameters}
        refused = problem(await client.post("/v1/products", json=body), 422, "validation_error")
        assert [e["field"] for e in refused["errors"]] == ["parameters"], refused
    assert await count_rows(engine, "products") == products
    # a backslash and "u0000" are ordinary text
    body = {"sku": "NUL-2", "name": "n", "list_price": "1", "parameters": {"a": "\\u0000"}}
    assert (await client.post("/v1/products", json=body)).status_code == 201


async def test_a_nul_in_a_login_is_a_422_naming_the_field(anon_client):
    for form, field in (
        ({"grant_type": "password", "username": "a\x00@x.cn", "password": "x"}, "username"),
        (
            {"grant_type": "client_credentials", "client_id": "a\x00", "client_secret": "x"},
            "client_id",
        ),
    ):
        refused = problem(
            await anon_client.post("/v1/auth/token", data=form), 422, "invalid_request"
        )
        assert [e["field"] for e in refused["errors"]] == [field], refused


async def test_timestamps_are_iso_8601_strings_not_unix_numbers(client, engine):
    """The contract says ``format: date-time``; pydantic also took a number as Unix
    seconds (``updated_before=0.5`` was 1970-01-01T00:00:00.5Z, a JSON ``expires_at``
    of 1893456000 a token valid until 2030): a client's mistake answered as valid."""
    for query in (
        "updated_before=0.5",
        "created_after=1733000000",
        "created_before=1e9",
    ):
        for path in ("/v1/customers", "/v1/orders", "/v1/products"):
            refused = problem(await client.get(f"{path}?{query}"), 422, "validation_error")
            assert refused["errors"][0]["field"] == f"query.{query.split('=')[0]}", refused
    problem(await client.get("/v1/audit-events?occurred_after=0"), 422, "validation_error")
    tokens = await count_rows(engine, "personal_access_tokens")
    body = {"name": "t", "permissions": [{"resource": "customers", "action": "read"}]}
    for expires_at in (1893456000, "1893456000", 1.5e9):
        refused = problem(
            await client.post("/v1/me/tokens", json={**body, "expires_at": expires_at}),
            422,
            "validation_error",
        )
        assert [e["field"] for e in refused["errors"]] == ["expires_at"], refused
    assert await count_rows(engine, "personal_access_tokens") == tokens
    # ISO-8601 with an offset (or Z) still works, in the query and in a body
    for value in ("2026-01-01T00:00:00Z", "2026-01-01T08:00:00+08:00", "2026-01-01 00:00:00Z"):
        response = await client.get("/v1/customers", params={"updated_before": value})
        assert response.status_code == 200, (value, response.text)
    made = await client.post("/v1/me/tokens", json={**body, "expires_in_days": 1})
    assert made.status_code == 201, made.text


async def test_allow_names_the_methods_of_the_static_route(client):
    """``/v1/customers/transfer`` also matches ``/v1/customers/{customer_id}``'s pattern,
    so its 405 advertised ``DELETE, GET, PATCH, POST, PUT`` (schemathesis: ST205); a path
    that a route without parameters matches is that route's resource."""
    for method in ("OPTIONS", "PUT"):
        response = await client.request(method, "/v1/customers/transfer")
        problem(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "POST", response.headers


def _nested(depth: int) -> dict:
    value: dict = {"a": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def test_deeply_nested_custom_fields_are_refused_not_stored(client, engine):
    """custom_fields nested ~250 levels passed validation (orjson, which renders responses,
    stops at 255) and was stored: then every page listing the customer (two levels more)
    and its audit events (four more) answered 500 to everyone who could see it — a stored
    denial of service by any caller who may create a customer. A depth of 254 was a 500 on
    the create itself (rolled back). Now nesting past 32 levels is a 422 naming the field."""
    customers = await count_rows(engine, "customers")
    for depth in (33, 250, 254):
        refused = problem(
            await client.post(
                "/v1/customers", json={"name": "deep", "custom_fields": _nested(depth)}
            ),
            422,
            "validation_error",
        )
        assert [e["field"] for e in refused["errors"]] == ["custom_fields"], refused
    assert await count_rows(engine, "customers") == customers
    made = await client.post("/v1/customers", json={"name": "deep", "custom_fields": _nested(32)})
    assert made.status_code == 201, made.text
    problem(
        await client.patch(
            f"/v1/customers/{made.json()['id']}", json={"custom_fields": _nested(250)}
        ),
        422,
        "validation_error",
    )
    for path in ("/v1/customers", f"/v1/audit-events?resource_id={made.json()['id']}"):
        assert (await client.get(path)).status_code == 200, path


async def test_head_is_answered_like_get_without_a_body(client, anon_client, engine):
    """RFC 9110: a general-purpose server MUST support HEAD wherever GET is. It was a 405
    everywhere, /healthz and /readyz included (load balancers' and monitors' HEAD checks
    marked the service down), and a client could not read a record's ETag without its body."""
    customer = await create_customer(client, await make_user(engine), name="head")
    got = await client.get(f"/v1/customers/{customer['id']}")
    head = await client.head(f"/v1/customers/{customer['id']}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == got.headers["etag"]
    assert head.headers["content-length"] == got.headers["content-length"]
    for path in ("/healthz", "/readyz"):
        response = await anon_client.head(path)
        assert response.status_code == 200 and response.content == b"", path
    missing = await client.head("/v1/customers/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.content == b""
    assert (await anon_client.head("/v1/customers")).status_code == 401
    # no GET there: still a 405
    refused = await client.head("/v1/customers/transfer")
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
