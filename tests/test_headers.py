"""Response headers and exposure: nosniff everywhere, no-store on what carries
credentials or problems, no Server header, /metrics and the readiness detail as
configured."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from conftest import _http_client, problem
from crm_api.config import Environment, Settings
from crm_api.main import create_app

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
METRICS_TOKEN = "metrics-token-0123456789abcdef"


async def test_every_response_is_nosniff(client, anon_client):
    responses = [
        await anon_client.get("/healthz"),
        await anon_client.get("/readyz"),
        await anon_client.get("/openapi.json"),
        await anon_client.get("/docs"),
        await anon_client.get("/v1/customers"),  # 401
        await anon_client.get("/no/such/route"),  # 404
        await client.get("/v1/customers"),
        await client.get("/v1/customers", params={"limit": 0}),  # 422
        await client.get("/v1/customers", params={"q": "x" * 5000}),  # 414 (middleware)
        await client.post("/v1/customers", content=b"x", headers={"Content-Type": "text/plain"}),
    ]
    for r in responses:
        assert r.headers.get("x-content-type-options") == "nosniff", (r.request.url, r.headers)


async def test_authenticated_and_problem_responses_are_no_store(client, anon_client):
    for r in (
        await client.get("/v1/customers"),
        await client.get("/v1/me"),
        await anon_client.get("/v1/customers"),  # problem 401
        await anon_client.get("/no/such/route"),  # problem 404
        await client.get("/v1/customers", params={"q": "x" * 5000}),  # problem 414
    ):
        assert r.headers.get("cache-control") == "no-store", (r.request.url, r.headers)
    # public, credential-free responses may be cached by whoever likes
    assert "cache-control" not in (await anon_client.get("/healthz")).headers


async def test_cors_preflight_is_nosniff_too(settings, database_url):
    app = create_app(
        settings.model_copy(update={"cors_origins": ["https://app.example.com"]}), database_url
    )
    async with app.router.lifespan_context(app), _http_client(app) as http:
        r = await http.options(
            "/v1/customers",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "GET",
            },
        )
        assert r.status_code == 200
        assert r.headers["x-content-type-options"] == "nosniff"


# --- /metrics and /readyz exposure ---------------------------------------------------------


@pytest.fixture
def with_settings(app):
    """``with_settings(**changes)``: the app's settings changed for this test only."""
    real = app.state.settings

    def change(**update: object) -> Settings:
        app.state.settings = real.model_copy(update=update)
        return app.state.settings  # type: ignore[no-any-return]

    yield change
    app.state.settings = real


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_metrics_public_by_default_outside_production(anon_client):
    assert Settings(env=Environment.development).metrics_mode == "public"
    response = await anon_client.get("/metrics")
    assert response.status_code == 200 and "crm_http_requests_total" in response.text


def test_metrics_need_a_token_by_default_in_production():
    settings = Settings(
        env="production",
        database_url="postgresql+asyncpg://crm@db.internal/crm",
        jwt_signing_key="q8Zr3vN1xW7kT4mB9pL2sD6fH0jG5cYa",
    )
    assert settings.metrics_mode == "token"


async def test_metrics_token_mode(anon_client, with_settings):
    with_settings(metrics="token", metrics_token=SecretStr(METRICS_TOKEN))
    problem(await anon_client.get("/metrics"), 401, "unauthorized")
    problem(await anon_client.get("/metrics", headers=_bearer("wrong-token")), 401)
    ok = await anon_client.get("/metrics", headers=_bearer(METRICS_TOKEN))
    assert ok.status_code == 200 and "crm_http_requests_total" in ok.text
    # token mode without a token configured refuses everyone
    with_settings(metrics="token", metrics_token=None)
    problem(await anon_client.get("/metrics", headers=_bearer(METRICS_TOKEN)), 401)


async def test_metrics_off(anon_client, with_settings):
    with_settings(metrics="off", metrics_token=SecretStr(METRICS_TOKEN))
    problem(await anon_client.get("/metrics", headers=_bearer(METRICS_TOKEN)), 404)


async def test_readiness_hides_the_revision_in_production(anon_client, with_settings):
    assert (await anon_client.get("/readyz")).json()["migration"]  # development: shown
    with_settings(env=Environment.production, metrics_token=SecretStr(METRICS_TOKEN))
    hidden = await anon_client.get("/readyz")
    assert hidden.status_code == 200
    assert hidden.json().get("migration") is None
    assert (await anon_client.get("/readyz", headers=_bearer("nope"))).json().get(
        "migration"
    ) is None
    shown = await anon_client.get("/readyz", headers=_bearer(METRICS_TOKEN))
    assert shown.json()["migration"]


# --- the real server ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(port: int, database_url: str, tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        CRM_DATABASE_URL=database_url, CRM_LOG_LEVEL="WARNING", CRM_DATA_DIR=str(tmp / "data")
    )
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "crm-api"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


async def test_crm_api_serve_sends_no_server_header(engine, database_url, tmp_path):
    port = _free_port()
    with _serve(port, database_url, tmp_path) as proc:
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    response = await http.get("/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "serve never answered"
                    await asyncio.sleep(0.25)
            assert response.status_code == 200
            assert "server" not in response.headers, response.headers
            assert response.headers["x-content-type-options"] == "nosniff"
