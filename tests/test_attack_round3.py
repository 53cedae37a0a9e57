"""Defects found by probing a demo server as a low-privilege caller (third attack round),
each pinned here so it cannot come back:

- the request head had no size limit: uvicorn's httptools parser buffers a header of any
  length, re-concatenating it as it arrives, so one unauthenticated request with a 50 MB
  ``Authorization`` header held the worker's event loop for seconds (``/healthz`` took
  3.5 s meanwhile) and its memory grew with the header; a few in parallel, and the worker
  is gone. A chunked body's trailer fields were buffered the same way, after the body the
  middleware counts (a 50 MB trailer: 19 s of a stalled worker). A request line past 64 KiB
  got uvicorn's ``text/plain`` 400, not a problem.
- a path with a trailing slash was redirected (307) to the path without it, on the host the
  request named: ``GET /v1/customers/`` with ``Host: evil.example`` answered ``Location:
  http://evil.example/v1/customers`` (host-header reflection: a poisoned cache or a
  link through a proxy that passes Host sends clients, and their retried POST bodies,
  elsewhere). No path of the API ends in a slash: it is a 404 ``not_found`` now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import httpx

from conftest import count_rows, problem
from crm_api.auth.passwords import hash_password
from factories.identity import make_org_unit, make_user
from test_uvicorn import BIN, PASSWORD, _env, _free_port, _log, _process, _wait_ready

HEAD_LIMIT = 32 * 1024  # Settings.max_request_head_bytes' default


async def _exchange(port: int, head: bytes, *, send_at_most: int | None = None) -> bytes:
    """Send ``head`` (only its first ``send_at_most`` bytes, when given, without ever
    finishing it) on a fresh connection and return everything the server answers before it
    closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head if send_at_most is None else head[:send_at_most])
        with contextlib.suppress(ConnectionError):  # the server may stop reading early
            await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=60)
    finally:
        writer.close()


def _problem(raw: bytes, status: int, code: str) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), raw[:300]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/problem+json", headers
    assert headers["connection"] == "close", headers
    assert int(headers["content-length"]) == len(body), headers
    problem = json.loads(body)
    assert problem["status"] == status and problem["code"] == code, problem
    assert {"type", "title", "detail", "request_id"} <= problem.keys()
    assert headers["x-request-id"] == problem["request_id"]
    return problem


async def test_an_oversized_request_head_is_refused_early_as_a_problem(
    database_url, engine, tmp_path
):
    rep = await make_user(
        engine,
        org_unit=await make_org_unit(engine),
        email="round3-rep@test.crm",
        password_hash=hash_password(PASSWORD),
    )
    port = _free_port()
    log = tmp_path / "serve.log"
    env = _env(
        CRM_DATABASE_URL=database_url,
        CRM_PORT=str(port),
        CRM_LOG_LEVEL="WARNING",
        CRM_DATA_DIR=str(tmp_path / "data"),
    )
    # `crm-api serve`, as deployed (the Dockerfile's entry point): the limit is the
    # server's, before the application sees a byte
    with _process([str(BIN / "crm-api"), "serve"], env, log) as proc:
        await _wait_ready(f"http://127.0.0.1:{port}", proc, log, within_s=90)

        # a header of 50 MB: refused after at most the limit, without the rest being sent
        huge = b"GET /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * (
            50 * 1024 * 1024
        )
        raw = await _exchange(port, huge, send_at_most=HEAD_LIMIT + 65_536)
        body = _problem(raw, 431, "request_head_too_large")
        assert str(HEAD_LIMIT) in body["detail"]

        # many headers add up the same way, and a whole head sent in one piece too
        many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-Pad-%d: %s\r\n" % (i, b"p" * 100) for i in range(400)
        )
        _problem(await _exchange(port, many + b"\r\n"), 431, "request_head_too_large")

        # a request line past the limit is a 414 (uvicorn answered a URL past 64 KiB with
        # a text/plain 400)
        long_url = b"GET /v1/customers/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        _problem(await _exchange(port, long_url), 414, "uri_too_long")

        # what the parser cannot read at all is a problem too, not text/plain
        _problem(await _exchange(port, b"NOT HTTP AT ALL\r\n\r\n"), 400, "invalid_http_request")

        # a head just under the limit, a body far over it, keep-alive: all still served
        pad = b"p" * (HEAD_LIMIT - 1024)
        ok = await _exchange(
            port,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + pad + b"\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert ok.count(b"HTTP/1.1 200 OK") == 2, ok[:500]
        body_ok = json.dumps({"name": "n" * (HEAD_LIMIT * 4)}).encode()
        raw = await _exchange(
            port,
            b"POST /v1/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body_ok) + body_ok,
        )
        _problem(raw, 401, "missing_token")  # reached the application, body and all

        # a chunked body's trailer fields count like headers (the parser buffers them so)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            login = {"grant_type": "password", "username": rep["email"], "password": PASSWORD}
            token = (await http.post("/v1/auth/token", data=login)).json()["access_token"]
        customers = await count_rows(engine, "customers")
        chunked = (
            b"POST /v1/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n"
        )
        body = b'{"name": "trailer"}'
        trailer = b"%x\r\n%s\r\n0\r\nX-Trailer: " % (len(body), body) + b"t" * (50 * 1024 * 1024)
        signed_in = chunked + b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
        raw = await _exchange(port, signed_in + trailer, send_at_most=HEAD_LIMIT * 3)
        assert "trailer" in _problem(raw, 431, "request_head_too_large")["detail"]
        assert await count_rows(engine, "customers") == customers

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM, 128 + signal.SIGTERM), _log(log)
    assert "Traceback" not in _log(log), _log(log)


async def test_a_trailing_slash_is_no_redirect_to_the_host_the_request_named(
    client, anon_client, engine
):
    customers = await count_rows(engine, "customers")
    for http in (client, anon_client):
        for method, path in (
            ("GET", "/v1/customers/"),
            ("POST", "/v1/customers/"),
            ("GET", "/v1/customers/%2e%2e/"),
            ("GET", "/v1/me/"),
            ("GET", "/healthz/"),
        ):
            response = await http.request(
                method, path, headers={"Host": "evil.example"}, json={"name": "slash"}
            )
            problem(response, 404, "not_found")
            assert "location" not in response.headers, (path, response.headers)
    assert await count_rows(engine, "customers") == customers
    # the paths themselves answer as before
    assert (await client.get("/v1/customers")).status_code == 200
