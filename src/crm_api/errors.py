"""Errors carry their HTTP status and a stable machine-readable ``code``; one place renders
them as RFC 9457 ``application/problem+json``.

Services raise these; handlers never build error responses themselves.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidRequestError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from crm_api.logs import request_id_var

logger = logging.getLogger("crm_api.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://crm-api.dev/problems/"


class ProblemError(Exception):
    """Base of every expected failure. Subclasses set ``status`` and a default ``code``."""

    status: int = 400
    code: str = "bad_request"
    title: str | None = None

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.code)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra = extra


class BadRequest(ProblemError):
    status, code = 400, "bad_request"


class Unauthorized(ProblemError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str | None = "Authentication required.", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="crm-api"'})
        super().__init__(detail, **kw)


class Forbidden(ProblemError):
    status, code = 403, "forbidden"


class NotFound(ProblemError):
    status, code = 404, "not_found"


class Conflict(ProblemError):
    status, code = 409, "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class PreconditionFailed(ProblemError):
    status, code = 412, "precondition_failed"


class PreconditionRequired(ProblemError):
    status, code = 428, "precondition_required"


class PayloadTooLarge(ProblemError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ProblemError):
    status, code = 415, "unsupported_media_type"


class UnprocessableEntity(ProblemError):
    status, code = 422, "validation_error"


class TooManyRequests(ProblemError):
    status, code = 429, "rate_limited"


class ServiceUnavailable(ProblemError):
    status, code = 503, "service_unavailable"


def problem_body(
    status: int,
    code: str,
    detail: str | None = None,
    *,
    title: str | None = None,
    instance: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    try:
        default_title = HTTPStatus(status).phrase
    except ValueError:
        default_title = "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title or default_title,
        "status": status,
        "detail": detail or title or default_title,
        "instance": instance,
        "code": code,
        "request_id": request_id_var.get(),
    }
    body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extra: Any,
) -> Response:
    body = problem_body(status, code, detail, instance=instance, **extra)
    return Response(
        orjson.dumps(body, default=str),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


_STARLETTE_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        where, rest = parts[0], parts[1:]
        return ".".join(rest) if where == "body" and rest else ".".join([where, *rest])
    return ".".join(parts)


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        code = str(err.get("type", "invalid"))
        if code == "extra_forbidden":
            code = "unknown_field"
        loc = tuple(err.get("loc", ()))
        if code == "json_invalid":  # loc is ("body", <character offset>): name the body
            loc = ("body",)
        out.append(
            {
                "field": _loc_to_field(loc),
                "code": code,
                "message": str(err.get("msg", "invalid value")),
            }
        )
    return out


#: Set on a handler that only refuses methods (``kit.routing.reserve_path``): its route
#: does not make those methods allowed.
REFUSES_ONLY_ATTR = "__crm_refuses_only__"


def _allowed_methods(request: Request) -> str:
    """The methods of the resource at the request's path. A route without path parameters
    that matches it is the resource (``/v1/customers/transfer``), whatever a parameterised
    route's pattern also matches (``/v1/customers/{customer_id}``)."""
    path = request.scope["path"]
    methods: set[str] = set()
    static: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if getattr(getattr(route, "endpoint", None), REFUSES_ONLY_ATTR, False):
            continue
        if regex is not None and regex.match(path):
            methods |= set(route.methods or ())
            if not getattr(route, "param_convertors", None):
                static |= set(route.methods or ())
    return ", ".join(sorted(static or methods))


#: Seconds a client is asked to wait after a 503 (or a 409 worth retrying).
RETRY_AFTER_S = "1"

#: SQLSTATEs that mean "no usable connection right now", whatever the statement: the server
#: is shutting down or starting (57P01-57P03), refuses for lack of resources (class 53:
#: too many connections, out of memory or disk) or the connection failed (class 08).
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "57P04"})
_UNAVAILABLE_CLASSES = ("08", "53")

#: Errors without a SQLSTATE that mean the same: refused or lost sockets, a statement or a
#: pool wait past its deadline, asyncpg's client-side connection errors.
_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    SQLAlchemyTimeoutError,
)

#: SQLAlchemy's message when a checkout's reconnect attempts are exhausted.
_CHECKOUT_EXHAUSTED = "This connection is closed"

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: SQLAlchemy's ``DBAPIError.orig`` (the dialect's adapted
    error), whose ``__cause__`` is the driver's own; bounded, cycle-safe."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 6:
        chain.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return chain


def classify_database_error(exc: BaseException, method: str) -> tuple[int, str, str] | None:
    """``(status, code, detail)`` for a database failure, or ``None`` when it is not one
    this layer understands (a bug: 500). Works on driver errors raised directly (the read
    path, :mod:`crm_api.db.reader`) and on SQLAlchemy's wrappers alike."""
    chain = _error_chain(exc)
    sqlstate = next((s for e in chain if isinstance(s := getattr(e, "sqlstate", None), str)), None)
    if sqlstate in {"55P03", "40P01", "40001"}:  # lock timeout, deadlock, serialization
        if method in _READ_METHODS:
            # A read waited for a lock a write (or DDL, or a maintenance job) holds: the
            # data is busy, not in conflict with anything the caller sent.
            return 503, "database_busy", "The data is locked by other work; retry."
        return 409, "concurrent_update", "The record is being changed by another request; retry."
    if sqlstate == "57014":  # statement timeout
        return 503, "query_timeout", "The query took too long."
    if sqlstate is not None and (
        sqlstate in _UNAVAILABLE_STATES or sqlstate.startswith(_UNAVAILABLE_CLASSES)
    ):
        return 503, "database_unavailable", "The database is not available; retry."
    if (sqlstate is not None and sqlstate.startswith("22")) or any(
        isinstance(e, asyncpg.DataError)
        for e in chain  # a value the driver cannot encode
    ):  # bad input reached SQL
        return 422, "invalid_value", "A value is out of range."
    if is_database_unavailable(exc, chain):
        return 503, "database_unavailable", "The database is not available; retry."
    return None


def is_database_unavailable(exc: BaseException, chain: list[BaseException] | None = None) -> bool:
    """True when ``exc`` says the connection is unusable (lost, refused, hung, none free),
    rather than the statement failing: the caller should drop the connection, not reuse it."""
    for e in chain or _error_chain(exc):
        if isinstance(e, _UNAVAILABLE_TYPES):
            return True
        if getattr(e, "connection_invalidated", False):  # SQLAlchemy saw a disconnect
            return True
        if isinstance(e, InvalidRequestError) and str(e) == _CHECKOUT_EXHAUSTED:
            # the pool's checkout found only dead connections three times over (a restart
            # while new connections are refused or killed too): no connection, not a bug
            return True
        state = getattr(e, "sqlstate", None)
        if isinstance(state, str) and (
            state in _UNAVAILABLE_STATES or state.startswith(_UNAVAILABLE_CLASSES)
        ):
            return True
    return False


def install_error_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            headers=exc.headers,
            instance=request.url.path,
            **exc.extra,
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = validation_errors(exc)
        json_invalid = any(e["code"] == "json_invalid" for e in errors)
        return problem_response(
            400 if json_invalid else 422,
            "malformed_json" if json_invalid else "validation_error",
            "The request body is not valid JSON."
            if json_invalid
            else "The request has invalid or unknown fields.",
            instance=request.url.path,
            errors=errors,
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STARLETTE_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        if isinstance(exc.__cause__, ProblemError):
            # raised inside FastAPI's body parser, which wraps what it does not know in a
            # 400 (kit.routing.StrictRoute parses first, so this is a safety net)
            return await on_problem(request, exc.__cause__)
        if exc.status_code == 404:
            detail = "No such resource or route."
        elif exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI's body reader failed below json.JSONDecodeError (not UTF-8, nested
            # past the recursion limit, an integer of more than 4300 digits): still bad JSON.
            code, detail = "malformed_json", "The request body is not valid JSON."
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route matching the path only (GET
            # for PUT /v1/customers/{id}); RFC 9110 wants every method the resource has.
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        return problem_response(
            exc.status_code,
            code,
            detail,
            headers=headers,
            instance=request.url.path,
        )

    async def on_integrity(request: Request, exc: Exception) -> Response:
        # Expected conflicts are raised explicitly by services; this is the safety net.
        logger.warning("integrity error reached the safety net", exc_info=exc)
        return problem_response(
            409,
            "conflict",
            "The change conflicts with existing data.",
            instance=request.url.path,
        )

    async def on_database(request: Request, exc: Exception) -> Response:
        verdict = classify_database_error(exc, request.method)
        if verdict is None:
            return await on_unexpected(request, exc)
        status, code, detail = verdict
        if code == "database_unavailable":
            # one line, no traceback: during an outage every request lands here
            logger.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        headers = {"Retry-After": RETRY_AFTER_S} if status in (409, 503) else None
        return problem_response(status, code, detail, instance=request.url.path, headers=headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.error("unhandled error", exc_info=exc)
        return problem_response(
            500,
            "internal_error",
            "An unexpected error occurred. Quote the request id when reporting it.",
            instance=request.url.path,
        )

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(IntegrityError, on_integrity)
    for database_error in (
        DBAPIError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        SQLAlchemyTimeoutError,
        InvalidRequestError,
        OSError,
        TimeoutError,
    ):
        app.add_exception_handler(database_error, on_database)
    app.add_exception_handler(Exception, on_unexpected)
