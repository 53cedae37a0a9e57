"""The platform around the resources: health, readiness, metrics, request ids, settings
that refuse unsafe production defaults, the OpenAPI contract and route protection."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from pydantic import ValidationError
from sqlalchemy import text

from conftest import problem
from crm_api.authz.dependencies import PERMISSION_ATTR
from crm_api.cli import OPENAPI_PATH, render_openapi
from crm_api.config import Environment, Settings
from crm_api.db.engine import create_database
from crm_api.middleware import RequestMiddleware

ROOT = Path(__file__).resolve().parents[1]
HEX32 = re.compile(r"^[0-9a-f]{32}$")


# --- health -------------------------------------------------------------------------------


async def test_healthz_and_readyz(anon_client, app):
    live = await anon_client.get("/healthz")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await anon_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ok",
        "database": "ok",
        "migration": app.state.migration_head,
    }
    assert app.state.migration_head is not None


async def test_readyz_503_when_migrations_differ(anon_client, app, engine):
    async with engine.begin() as conn:
        head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        await conn.execute(text("UPDATE alembic_version SET version_num = 'stale'"))
    try:
        body = problem(await anon_client.get("/readyz"), 503, "migrations_pending")
        assert "stale" in body["detail"] and head in body["detail"]
        # liveness does not depend on the database
        assert (await anon_client.get("/healthz")).status_code == 200
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    assert (await anon_client.get("/readyz")).status_code == 200


async def test_readyz_503_when_database_unreachable(anon_client, app, settings):
    real = app.state.db
    app.state.db = create_database(
        settings.model_copy(update={"db_pool_timeout_s": 2.0}),
        "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere",
    )
    try:
        problem(await anon_client.get("/readyz"), 503, "database_unavailable")
        assert (await anon_client.get("/healthz")).status_code == 200
    finally:
        await app.state.db.dispose()
        app.state.db = real
    assert (await anon_client.get("/readyz")).status_code == 200


async def test_readyz_503_quickly_when_database_hangs(anon_client, app, settings):
    """A server that accepts connections but never answers (a hung host, a dead proxy)
    is reported within the pool timeout, not after asyncpg's default minute."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes handshakes; nothing ever reads or answers
    port = silent.getsockname()[1]
    real = app.state.db
    app.state.db = create_database(
        settings.model_copy(update={"db_pool_timeout_s": 1.0}),
        f"postgresql+asyncpg://postgres@127.0.0.1:{port}/hung",
    )
    try:
        started = time.monotonic()
        problem(await anon_client.get("/readyz"), 503, "database_unavailable")
        assert time.monotonic() - started < 10
    finally:
        await app.state.db.dispose()
        app.state.db = real
        silent.close()


# --- metrics and request ids --------------------------------------------------------------


def _sample(metrics: str, name: str, **labels: str) -> float:
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels_part, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels_part))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


async def test_metrics_count_requests_by_route_template(client, anon_client):
    route = "/v1/customers/{customer_id}"
    before = (await anon_client.get("/metrics")).text
    for _ in range(3):
        problem(await client.get(f"/v1/customers/{uuid.uuid4()}"), 404, "customer_not_found")
    await client.get("/v1/nowhere")
    assert (await client.get("/v1/customers")).status_code == 200
    response = await anon_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    assert "# TYPE crm_http_requests_total counter" in after
    labels = {"method": "GET", "route": route, "status": "404"}
    assert _sample(after, "crm_http_requests_total", **labels) == (
        _sample(before, "crm_http_requests_total", **labels) + 3
    )
    # unmatched paths share one label: no cardinality explosion from scanners
    assert _sample(after, "crm_http_requests_total", route="unmatched", status="404") >= 1
    assert "/v1/nowhere" not in after
    assert (
        _sample(
            after,
            "crm_http_request_duration_seconds_count",
            method="GET",
            route=route,
            status="404",
        )
        >= 3
    )
    # every label is a route template, never a concrete id
    routes = set(re.findall(r'route="([^"]*)"', after))
    assert route in routes and "/v1/customers" in routes
    assert not any(re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", r) for r in routes), routes


async def test_request_id_echoed_or_generated(client):
    for good in ("abc-123", "Req.1:2_3", "x" * 128, str(uuid.uuid4())):
        response = await client.get(f"/v1/customers/{uuid.uuid4()}", headers={"X-Request-ID": good})
        assert response.headers["x-request-id"] == good
        assert problem(response, 404)["request_id"] == good
    for bad in ("has space", "x" * 129, "semi;colon", "", "<script>"):
        response = await client.get(f"/v1/customers/{uuid.uuid4()}", headers={"X-Request-ID": bad})
        rid = response.headers["x-request-id"]
        assert HEX32.match(rid), (bad, rid)
        assert problem(response, 404)["request_id"] == rid
    response = await client.get(
        f"/v1/customers/{uuid.uuid4()}", headers={"X-Request-ID": "é".encode()}
    )
    assert HEX32.match(response.headers["x-request-id"])
    # every response has one, generated ones are unique, success included
    a, b = await client.get("/v1/customers"), await client.get("/v1/customers")
    assert a.status_code == 200 and HEX32.match(a.headers["x-request-id"])
    assert a.headers["x-request-id"] != b.headers["x-request-id"]
    # problems produced by the middleware itself carry it too
    big = await client.get(
        "/v1/customers", params={"q": "x" * 5000}, headers={"X-Request-ID": "qs-1"}
    )
    assert problem(big, 414, "query_too_long")["request_id"] == "qs-1"


async def test_cors_headers_on_every_answer(settings):
    """Browser apps must be able to read every answer, the middleware's own problems
    included (413 and 414 are produced before the app is reached)."""
    from crm_api.main import create_app

    origin = "https://app.example.com"
    app = create_app(settings.model_copy(update={"cors_origins": [origin], "max_body_bytes": 1024}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        preflight = await http.options(
            "/v1/customers/x",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "If-Match, Idempotency-Key, Content-Type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"]
        assert "If-Match" in allowed and "Idempotency-Key" in allowed
        answers = [
            await http.get("/healthz", headers={"Origin": origin}),
            await http.post(
                "/v1/customers",
                content=b"x" * 2048,
                headers={"Origin": origin, "Content-Type": "application/json"},
            ),
            await http.get("/v1/customers", params={"q": "x" * 5000}, headers={"Origin": origin}),
        ]
        assert [a.status_code for a in answers] == [200, 413, 414]
        for answer in answers:
            assert answer.headers["access-control-allow-origin"] == origin, answer.headers
            assert "X-Request-ID" in answer.headers["access-control-expose-headers"]
        stranger = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers


async def test_overload_is_a_quick_503():
    """Past the concurrency cap, requests are refused at once instead of queueing."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = RequestMiddleware(
        slow_app, max_body_bytes=1024, max_query_string_bytes=256, max_concurrent=1
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        first = asyncio.create_task(http.get("/slow"))
        await asyncio.wait_for(entered.wait(), 5)
        second = await asyncio.wait_for(http.get("/slow"), 5)
        body = problem(second, 503, "overloaded")
        assert body["request_id"] == second.headers["x-request-id"]
        release.set()
        assert (await first).status_code == 200
        assert (await http.get("/slow")).status_code == 200


async def test_unhandled_error_is_a_500_problem_without_internals():
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("secret internals")

    app = RequestMiddleware(
        broken, max_body_bytes=1024, max_query_string_bytes=256, max_concurrent=4
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.get("/x", headers={"X-Request-ID": "boom-1"})
    body = problem(response, 500, "internal_error")
    assert body["request_id"] == "boom-1"
    assert "secret" not in response.text and "Traceback" not in response.text


# --- settings -----------------------------------------------------------------------------

SAFE_PRODUCTION: dict[str, Any] = {
    "env": "production",
    "database_url": "postgresql+asyncpg://crm@db.internal/crm",
    "jwt_signing_key": "q8Zr3vN1xW7kT4mB9pL2sD6fH0jG5cYa",
    "cors_origins": ["https://app.example.com"],
}


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings built here see only what the test passes (no CRM_* variables, no .env)."""
    import os

    for name in list(os.environ):
        if name.startswith("CRM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_production_settings_refuse_unsafe_defaults(no_env):
    ok = Settings(**SAFE_PRODUCTION)
    assert ok.is_production and ok.env is Environment.production
    unsafe = [
        ({"database_url": None}, "CRM_DATABASE_URL"),
        ({"jwt_signing_key": None}, "CRM_JWT_SIGNING_KEY"),
        ({"jwt_signing_key": "short"}, "CRM_JWT_SIGNING_KEY"),
        ({"jwt_signing_key": "changeme-changeme-changeme-changeme"}, "CRM_JWT_SIGNING_KEY"),
        ({"jwt_signing_key": "a" * 64}, "CRM_JWT_SIGNING_KEY"),
        ({"demo_data": True}, "CRM_DEMO_DATA"),
        ({"cors_origins": ["*"]}, "CRM_CORS_ORIGINS"),
        ({"cors_origins": "https://a.example.com, *"}, "CRM_CORS_ORIGINS"),
        ({"db_echo": True}, "CRM_DB_ECHO"),
    ]
    for change, named in unsafe:
        with pytest.raises(ValidationError) as caught:
            Settings(**{**SAFE_PRODUCTION, **change})
        assert named in str(caught.value), (change, str(caught.value))
    # everything wrong at once: every problem is named in one error
    with pytest.raises(ValidationError) as caught:
        Settings(env="production")
    message = str(caught.value)
    assert "CRM_DATABASE_URL" in message and "CRM_JWT_SIGNING_KEY" in message
    # outside production the same values are allowed (zero-configuration development)
    dev = Settings(env="development", demo_data=True, cors_origins=["*"])
    assert dev.database_url is None and dev.demo_data


def test_production_settings_from_the_environment(no_env, monkeypatch):
    monkeypatch.setenv("CRM_ENV", "production")
    monkeypatch.setenv("CRM_DATABASE_URL", SAFE_PRODUCTION["database_url"])
    monkeypatch.setenv("CRM_JWT_SIGNING_KEY", SAFE_PRODUCTION["jwt_signing_key"])
    monkeypatch.setenv("CRM_CORS_ORIGINS", "https://a.example.com,https://b.example.com")
    settings = Settings()
    assert settings.cors_origins == ["https://a.example.com", "https://b.example.com"]
    monkeypatch.setenv("CRM_CORS_ORIGINS", "*")
    with pytest.raises(ValidationError, match="CRM_CORS_ORIGINS"):
        Settings()


# --- OpenAPI and routes -------------------------------------------------------------------


def test_openapi_operations_are_complete(app: FastAPI):
    document = app.openapi()
    operation_ids: list[str] = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op.get("operationId"), f"{where}: no operationId"
            assert re.fullmatch(r"[a-z][a-z0-9_]*", op["operationId"]), where
            assert op.get("summary"), f"{where}: no summary"
            assert op.get("tags"), f"{where}: no tags"
            operation_ids.append(op["operationId"])
            # an operation that takes any input can fail validation: 422 is documented
            # (health and metrics take none, so cannot answer 422)
            if op.get("parameters") or op.get("requestBody"):
                responses = op["responses"]
                assert "422" in responses, f"{where}: 422 not documented"
                error = responses["422"]["content"]
                assert "application/problem+json" in error, f"{where}: 422 is not a problem"
            if path.startswith("/v1/") and not path.startswith("/v1/auth/"):
                assert {"401", "403"} <= set(op["responses"]), f"{where}: 401/403 undocumented"
    assert len(operation_ids) == len(set(operation_ids)), "duplicate operationId"
    assert {
        "customers_list",
        "customers_create",
        "customers_get",
        "customers_update",
        "customers_delete",
        "health_live",
        "health_ready",
    } <= set(operation_ids)


def test_committed_openapi_matches_the_app():
    """`crm-api openapi --check`: the committed contract is what the code serves."""
    committed = (ROOT / OPENAPI_PATH).read_text(encoding="utf-8")
    assert render_openapi() == committed, (
        f"{OPENAPI_PATH} is out of date: run `crm-api openapi` and commit it"
    )


def _markers(dependant: Any) -> list[tuple[str, str]]:
    """The permission markers anywhere in a route's dependency tree."""
    found = []
    pending = list(dependant.dependencies)
    while pending:
        dep = pending.pop()
        marker = getattr(dep.call, PERMISSION_ATTR, None)
        if marker:
            found.append(marker)
        pending.extend(dep.dependencies)
    return found


def _has_permission(dependant: Any) -> bool:
    return bool(_markers(dependant))


def test_every_route_declares_its_permission(app: FastAPI):
    """A route without `require(...)`, `authenticated()` or `public()` is a hole: fail."""
    checked = []
    unguarded = []
    for route in iter_route_contexts(app.routes):
        if route.path in {
            "/openapi.json",
            "/docs",
            "/docs/oauth2-redirect",
            "/redoc",
            "/docs/static",
        }:
            continue
        dependant = getattr(route, "dependant", None)
        assert dependant is not None, f"{route.path}: not an API route"
        checked.append(route.path)
        if not _has_permission(dependant):
            unguarded.append(f"{sorted(route.methods or [])} {route.path}")
    assert not unguarded, f"routes without a permission dependency: {unguarded}"
    assert "/v1/customers/{customer_id}" in checked and "/healthz" in checked
    assert len(checked) >= 10


def test_every_enforced_resource_is_grantable(app: FastAPI):
    """Roles may be granted exactly the resources some route enforces (plus defaults)."""
    from crm_api.authz.catalog import known_resources

    enforced = {
        resource
        for route in iter_route_contexts(app.routes)
        if getattr(route, "dependant", None) is not None
        for resource, _ in _markers(route.dependant)
        if resource not in {"self", "public"}
    }
    assert {"customers", "contacts", "authz"} <= enforced
    assert enforced <= known_resources(app), enforced - known_resources(app)


def test_route_walk_sees_an_unguarded_route(app: FastAPI):
    """The check above can fail: a route added without a permission is caught."""
    from fastapi import APIRouter

    probe = FastAPI()
    router = APIRouter(prefix="/v1")

    @router.get("/open")
    async def open_route() -> dict[str, str]:
        return {}

    probe.include_router(router)
    (route,) = list(iter_route_contexts(probe.routes))[-1:]
    assert route.path == "/v1/open"
    assert not _has_permission(route.dependant)
    guarded = [r for r in iter_route_contexts(app.routes) if r.path == "/v1/customers"]
    assert guarded and all(_has_permission(r.dependant) for r in guarded)


async def test_the_apps_connections_run_no_parallel_plans_and_no_jit(app) -> None:
    """Both paths (the write engine and the read pool) open their connections with
    ``max_parallel_workers_per_gather = 0`` and ``jit = off`` (CRM_DB_PARALLEL_WORKERS_PER_GATHER,
    CRM_DB_JIT): a request's short statement must not start worker processes or compile."""
    db = app.state.db
    async with db.engine.connect() as conn:
        written = (
            await conn.execute(
                text(
                    "SELECT current_setting('max_parallel_workers_per_gather'),"
                    " current_setting('jit')"
                )
            )
        ).one()
    assert tuple(written) == ("0", "off")
    read = await db.reads.reader.execute(
        text("SELECT current_setting('max_parallel_workers_per_gather'), current_setting('jit')")
    )
    assert tuple(read.one()) == ("0", "off")
