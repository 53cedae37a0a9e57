"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task and a copy per request).

One middleware does the per-request work in a fixed order: request id, query-string limit
and encoding (percent-escapes must decode to UTF-8), body-size limits, a concurrency cap,
Prometheus metrics and the access log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote_to_bytes

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_api.errors import RETRY_AFTER_S, problem_body
from crm_api.logs import request_id_var
from crm_api.warmup import WarmUp

logger = logging.getLogger("crm_api.access")

REQUESTS = Counter("crm_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "crm_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _query_has_nul(query_string: bytes) -> bool:
    """Whether a query parameter would hold U+0000, which no PostgreSQL text (a filter, a
    search term) can: refused here rather than as a database error naming nothing."""
    return b"%00" in query_string or b"\x00" in query_string


def _query_is_utf8(query_string: bytes) -> bool:
    """Whether the percent-decoded query string is UTF-8. Starlette decodes it with
    ``errors="replace"``, so ``q=%ff`` would otherwise search for U+FFFD and a filter
    would compare against a value the client never sent: a malformed request answered
    as if it were well-formed."""
    if b"%" not in query_string and query_string.isascii():
        return True
    try:
        unquote_to_bytes(query_string).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the cap. An HTTPException, so
    FastAPI's body parsing re-raises it untouched and the problem handler renders 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The body exceeds {limit} bytes.")


async def _send_problem(
    send: Send,
    status: int,
    code: str,
    detail: str,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    fields: dict[str, Any] | None = None,
) -> None:
    import orjson

    body = orjson.dumps(problem_body(status, code, detail, **(fields or {})))
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_INFLIGHT_KEY = "crm.inflight"
#: What the warm-up gate holds back: the API, not health, metrics or the docs.
_API_PREFIX = "/v1/"


class InflightCap:
    """At most ``limit`` requests of one principal in flight in this worker (0: no cap),
    so one caller's slow requests cannot take every read connection from everyone else.

    The auth dependency calls :meth:`enter` once the token is verified (the principal is
    not known earlier) and before any database work; :class:`RequestMiddleware` calls
    :func:`leave_inflight` when the response is finished, whatever happened in between
    (error, cancellation), so no generator dependency is needed. Single event loop, no
    awaits between check and update: no lock."""

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def enter(self, scope: Scope, principal_key: str) -> bool:
        """Count this request for ``principal_key``; False when the principal is at the
        cap (the request must be refused and is not counted)."""
        if self.limit <= 0 or _INFLIGHT_KEY in scope:
            return True
        held = self.counts.get(principal_key, 0)
        if held >= self.limit:
            return False
        self.counts[principal_key] = held + 1
        scope[_INFLIGHT_KEY] = (self, principal_key)
        return True

    def leave(self, principal_key: str) -> None:
        held = self.counts.get(principal_key, 0) - 1
        if held > 0:
            self.counts[principal_key] = held
        else:
            self.counts.pop(principal_key, None)


def leave_inflight(scope: Scope) -> None:
    counted = scope.pop(_INFLIGHT_KEY, None)
    if counted is not None:
        cap, key = counted
        cap.leave(key)


def _without_body(send: Send) -> Send:
    async def head_send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return head_send


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_query_string_bytes: int,
        max_concurrent: int,
        warm_up: WarmUp | None = None,
    ) -> None:
        self.app = app
        self.warm_up = warm_up
        self.max_body = max_body_bytes
        self.max_qs = max_query_string_bytes
        self.semaphore = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]  # for the metrics and the log: HEAD stays HEAD
        if method == "HEAD":
            # RFC 9110: HEAD wherever GET is, answered as GET without the body (headers,
            # ETag and Content-Length included). The routes declare GET only.
            scope = {**scope, "method": "GET"}
            send = _without_body(send)
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if incoming and _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status_holder: list[int] = [500]
        rid_header = (b"x-request-id", rid.encode())
        authenticated = any(name == b"authorization" for name, _ in scope["headers"])

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = _secured(message.get("headers", []), authenticated)
                message["headers"].append(rid_header)
            await send(message)

        try:
            if len(scope.get("query_string", b"")) > self.max_qs:
                status_holder[0] = 414
                await _send_problem(
                    send_wrapper,
                    414,
                    "query_too_long",
                    f"The query string exceeds {self.max_qs} bytes.",
                )
                return
            if not _query_is_utf8(scope.get("query_string", b"")):
                status_holder[0] = 400
                await _send_problem(
                    send_wrapper,
                    400,
                    "invalid_query",
                    "The query string is not valid UTF-8 once percent-decoded.",
                )
                return
            if _query_has_nul(scope.get("query_string", b"")):
                status_holder[0] = 400
                await _send_problem(
                    send_wrapper,
                    400,
                    "invalid_query",
                    "The query string holds a NUL character (%00).",
                )
                return
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                status_holder[0] = 413
                await _send_problem(
                    send_wrapper,
                    413,
                    "payload_too_large",
                    f"The body exceeds {self.max_body} bytes.",
                )
                return
            if scope["method"] in _BODY_METHODS and _has_body(scope):
                refused = _refused_media_type(scope)
                if refused is not None:
                    detail, extra = refused
                    status_holder[0] = 415
                    await _send_problem(
                        send_wrapper, 415, "unsupported_media_type", detail, fields=extra
                    )
                    return
            if (
                self.warm_up is not None
                and not self.warm_up.ready
                and scope["path"].startswith(_API_PREFIX)
            ):
                # started without its database: nothing under /v1 may run (no policy to
                # authorise it against) until the warm-up has loaded it (crm_api.warmup)
                status_holder[0] = 503
                await _send_problem(
                    send_wrapper,
                    503,
                    "database_unavailable",
                    "The database is not available yet; retry.",
                    extra_headers=[(b"retry-after", RETRY_AFTER_S.encode())],
                )
                return
            if self.semaphore.locked():
                status_holder[0] = 503
                await _send_problem(
                    send_wrapper, 503, "overloaded", "The server is at capacity; retry shortly."
                )
                return
            async with self.semaphore:
                await self._call_limited(scope, receive, send_wrapper, status_holder)
        finally:
            leave_inflight(scope)
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            REQUESTS.labels(method, route, str(status_holder[0])).inc()
            LATENCY.labels(method, route, str(status_holder[0])).observe(elapsed)
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "request",
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "route": route,
                        "status": status_holder[0],
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)

    async def _call_limited(
        self, scope: Scope, receive: Receive, send: Send, status_holder: list[int]
    ) -> None:
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                status_holder[0] = 413
                await _send_problem(
                    send, 413, "payload_too_large", f"The body exceeds {self.max_body} bytes."
                )
        except Exception:
            # Last line of defence, inside the request-id context: log, answer a bare 500.
            logger.exception("unhandled error")
            if not response_started:
                status_holder[0] = 500
                await _send_problem(
                    send,
                    500,
                    "internal_error",
                    "An unexpected error occurred. Quote the request id when reporting it.",
                )


_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")


def _secured(headers: Any, authenticated: bool) -> list[tuple[bytes, bytes]]:
    """The response headers plus ``X-Content-Type-Options: nosniff`` (always) and
    ``Cache-Control: no-store`` on what a shared cache must never keep: responses to a
    request carrying credentials, and problem responses. A handler's own Cache-Control
    wins."""
    out = list(headers)
    no_store = authenticated
    has_cache_control = has_nosniff = False
    for name, value in out:
        lower = name.lower()
        if lower == b"cache-control":
            has_cache_control = True
        elif lower == b"x-content-type-options":
            has_nosniff = True
        elif lower == b"content-type" and value.startswith(b"application/problem+json"):
            no_store = True
    if not has_nosniff:
        out.append(_NOSNIFF)
    if no_store and not has_cache_control:
        out.append(_NO_STORE)
    return out


class SecurityHeadersMiddleware:
    """The headers of :func:`_secured` for responses answered outside
    :class:`RequestMiddleware` (CORS preflights, when CORS is configured: the CORS
    middleware must sit outermost)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]  # for the metrics and the log: HEAD stays HEAD
        if method == "HEAD":
            # RFC 9110: HEAD wherever GET is, answered as GET without the body (headers,
            # ETag and Content-Length included). The routes declare GET only.
            scope = {**scope, "method": "GET"}
            send = _without_body(send)
        authenticated = any(name == b"authorization" for name, _ in scope["headers"])

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _secured(message.get("headers", []), authenticated)
            await send(message)

        await self.app(scope, receive, send_secured)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_ACCEPTED_TYPES = (b"application/json", b"application/x-www-form-urlencoded")


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def _refused_media_type(scope: Scope) -> tuple[str, dict[str, str]] | None:
    """Why a body's ``Content-Type`` is refused (the problem's detail and extension
    members), or ``None``: JSON or a form, in UTF-8. A body is read as UTF-8 whatever it
    declares, so a declared ``charset=latin-1`` (or ``utf-16``, ...) would be misread,
    not converted; ``charset=utf-8`` in any case, quoted or not, is the same as none."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media, *params = value.split(b";")
            media = media.strip().lower()
            if not (media in _ACCEPTED_TYPES or media.endswith(b"+json")):
                break
            for param in params:
                key, _, charset = param.partition(b"=")
                if key.strip().lower() != b"charset":
                    continue
                charset = charset.strip()
                if charset[:1] == b'"' and charset[-1:] == b'"' and len(charset) > 1:
                    charset = charset[1:-1]
                if charset.lower() != b"utf-8":
                    named = charset.decode("latin-1")
                    return (
                        f"The body's charset {named!r} is not supported: send it in UTF-8.",
                        {"charset": named},
                    )
            return None
    return "Send the body as application/json.", {}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _route_template(scope: Scope) -> str:
    # FastAPI keeps an included router's routes as they were declared and puts that route,
    # without the prefixes it was mounted under, in scope["route"] ("/customers/{id}" for
    # /v1/customers/{id}). The route as mounted is its effective route context.
    fastapi_scope: Any = scope.get("fastapi")
    effective = fastapi_scope.get("effective_route_context") if fastapi_scope else None
    path = getattr(effective, "path_format", None) or getattr(scope.get("route"), "path", None)
    return str(path) if path else "unmatched"
