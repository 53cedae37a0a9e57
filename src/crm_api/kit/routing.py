"""Route helpers: the route class of every router, documented problem responses, common
headers, query models."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

from fastapi import APIRouter, Depends, FastAPI, Request, Response, params
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from crm_api.errors import REFUSES_ONLY_ATTR, BadRequest, ProblemError
from crm_api.kit.body import is_json_media, loads_body
from crm_api.kit.pagination import CommaSeparated, ListQuery
from crm_api.kit.schemas import Problem

M = TypeVar("M", bound=BaseModel)

_DESCRIPTIONS = {
    400: "Malformed request (bad JSON, a key twice in one JSON object, bad cursor, a query"
    " string that is not UTF-8).",
    401: "Missing or invalid credentials.",
    403: "Your role lacks this permission.",
    404: "Not found, or outside your data scope.",
    409: "Conflict (duplicate, invalid state transition, concurrent change).",
    412: "If-Match does not match the current version.",
    413: "Request body too large.",
    414: "Query string too long.",
    415: "Body is not application/json, or not in UTF-8.",
    422: "Validation failed (a field, or a query parameter the operation does not take);"
    " see `errors`.",
    428: "If-Match required.",
    429: "Too many requests (login throttling, or too many of your requests in flight);"
    " retry after `Retry-After` seconds.",
    503: "Temporarily unavailable (database unreachable or busy, query timeout, server at"
    " capacity); retry after `Retry-After` seconds.",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given problem statuses (plus 401/403/422 always).

    FastAPI documents ``model`` under ``application/json``; :func:`document_problems`
    moves it to ``application/problem+json``, the content type errors are answered with."""
    wanted = sorted({401, 403, 422, *statuses})
    return {s: {"model": Problem, "description": _DESCRIPTIONS.get(s, "Error")} for s in wanted}


PROBLEM_JSON = "application/problem+json"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
#: Answered by the body parser for any operation with a body: 400 ``malformed_json``,
#: ``duplicate_key``.
_BODY_PROBLEMS = (400,)
#: Answered by the request middleware for any POST, PUT or PATCH that carries a body,
#: whether or not the operation takes one: 415 (not JSON or a form, not UTF-8).
_BODY_METHOD_PROBLEMS = (415,)
#: Answered for any request, whether or not the operation takes query parameters: 414
#: ``query_too_long`` and 400 ``invalid_query`` (percent-escapes that are not UTF-8) by the
#: request middleware before routing, 422 (a query parameter the operation does not take)
#: by :class:`StrictRoute`.
_QUERY_PROBLEMS = (400, 414, 422)
#: Answered for any authenticated operation: the per-principal in-flight cap.
_AUTHENTICATED_PROBLEMS = (429,)
#: Answered for any operation: 413 (a body past the cap, declared or streamed: the request
#: middleware), 503 (the server at capacity or the database unavailable).
_ANY_PROBLEMS = (413, 503)
#: Statuses a client should retry after the ``Retry-After`` header's seconds.
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def document_problems(app: FastAPI) -> None:
    """Wrap ``app.openapi`` so that the document says what the app answers on errors:

    * every error response (4xx/5xx) is ``application/problem+json`` with the ``Problem``
      schema (and not ``application/json``, which errors never are), so generated clients
      type their errors;
    * every operation with a body documents 400 (``malformed_json``, ``duplicate_key``),
      every POST, PUT and PATCH 415, and every operation 413: the body parser and the
      request middleware answer them before any handler runs, the last two whether or not
      the operation takes a body (``POST /orders/{id}/cancel`` with a text/plain body, or
      one past the size cap);
    * every operation documents 414 (``query_too_long``) and 400 (``invalid_query``): the
      request middleware answers them before routing, for any operation (tests/conftest.py's
      response check found ``POST /v1/customers?q=<5 kB>`` answered with an undocumented 414),
      and 422: :class:`StrictRoute` refuses a query parameter the operation does not take
      (``/healthz?x=1``);
    * every authenticated operation documents 429 (the per-principal in-flight cap) and
      every operation 503 (database unavailable, query timeout, server at capacity), both
      with their ``Retry-After`` header.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        for path in schema.get("paths", {}).values():
            for method, operation in path.items():
                responses = operation.setdefault("responses", {})
                extra: list[int] = []
                if "requestBody" in operation:
                    extra.extend(_BODY_PROBLEMS)
                if method in ("post", "put", "patch"):
                    extra.extend(_BODY_METHOD_PROBLEMS)
                extra.extend(_QUERY_PROBLEMS)
                if operation.get("security"):
                    extra.extend(_AUTHENTICATED_PROBLEMS)
                extra.extend(_ANY_PROBLEMS)
                for status in extra:
                    responses.setdefault(
                        str(status), {"description": _DESCRIPTIONS.get(status, "Error")}
                    )
                for status, response in responses.items():
                    if status[0] in "45":
                        response["content"] = {PROBLEM_JSON: {"schema": dict(_PROBLEM_REF)}}
                    if status in {"429", "503"}:
                        response.setdefault("headers", {}).update(_RETRY_AFTER)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class MethodNotAllowed(ProblemError):
    status, code = 405, "method_not_allowed"


def reserve_path(router: APIRouter, path: str, *allowed: str, dependencies: list[Any]) -> None:
    """Answer 405 (with ``Allow``) for the other methods of a literal ``path`` that a
    sibling ``/{id}`` route would otherwise capture: ``GET /customers/transfer`` matched
    ``GET /customers/{customer_id}`` and answered 422 on the id. Call it before the
    ``/{id}`` routes are added (the first full match wins). ``dependencies``: the
    route's permission marker (``[public()]``: it only refuses)."""
    others = sorted({"GET", "PATCH", "PUT", "DELETE", "POST"} - set(allowed))
    allow = ", ".join(sorted(allowed))

    async def method_not_allowed(request: Request) -> None:
        raise MethodNotAllowed(
            f"{request.method} is not allowed here; use {allow}.", headers={"Allow": allow}
        )

    setattr(method_not_allowed, REFUSES_ONLY_ATTR, True)
    router.add_api_route(
        path,
        method_not_allowed,
        methods=others,
        include_in_schema=False,
        dependencies=dependencies,
    )


ETAG_HEADER = {
    "ETag": {"description": "Current version, for If-Match.", "schema": {"type": "string"}}
}


# --- query models ------------------------------------------------------------------------
#: Marker on a :func:`query_model` dependency: the model whose fields it documents.
QUERY_MODEL_ATTR = "__crm_query_model__"


def _is_sequence(annotation: Any) -> bool:
    if get_origin(annotation) in (Union, UnionType):
        return any(_is_sequence(a) for a in get_args(annotation) if a is not type(None))
    return get_origin(annotation) in (list, tuple, set, frozenset)


def query_model(model: type[M]) -> Any:
    """``Depends()``: the query string validated into ``model`` (a pydantic model with
    ``extra="forbid"``), what ``Annotated[model, Query()]`` does. FastAPI re-inspects
    every field's annotation on every request for that; with 20 list filters it cost
    ~0.3 ms per list request (docs/benchmarks.md). Repeated keys become lists for list
    fields; repeated keys of a :class:`~crm_api.kit.pagination.CommaSeparated` field
    (``sort=a&sort=b``) mean ``sort=a,b``; any other field sent twice is a 422
    ``repeated_parameter`` (FastAPI takes the last value, though the document says one).
    Errors are the same 422
    (``query.<field>``). :func:`document_query_models` puts the fields in the OpenAPI
    document as query parameters."""
    lists = frozenset(name for name, f in model.model_fields.items() if _is_sequence(f.annotation))
    joined = frozenset(
        name
        for name, f in model.model_fields.items()
        if isinstance(f.json_schema_extra, CommaSeparated)
    )

    async def dependency(request: Request) -> M:
        data: dict[str, Any] = {}
        repeated: list[dict[str, Any]] = []
        for key, value in request.query_params.multi_items():
            if key in lists:
                data.setdefault(key, []).append(value)
            elif key in joined and key in data:
                data[key] = f"{data[key]},{value}"
            elif key in data and key in model.model_fields:
                # one value documented, several sent: which one was meant is a guess
                repeated.append(
                    {
                        "type": "repeated_parameter",
                        "loc": ("query", key),
                        "input": value,
                        "msg": "Send this parameter once.",
                    }
                )
            else:
                data[key] = value
        try:
            validated = model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            for error in errors:
                error["loc"] = ("query", *error["loc"])
            raise RequestValidationError([*repeated, *errors]) from None
        if repeated:
            raise RequestValidationError(repeated)
        if isinstance(validated, ListQuery):
            validated._count_cap = request.app.state.settings.list_count_cap
        return validated

    setattr(dependency, QUERY_MODEL_ATTR, model)
    dependency.__name__ = f"query_{model.__name__}"
    return Depends(dependency)


def document_query_models(app: FastAPI) -> None:
    """Wrap ``app.openapi`` so that every :func:`query_model` dependency appears as the
    operation's query parameters (one per field, as FastAPI documents a query model)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for route in iter_route_contexts(app.routes):
            if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
                continue
            pending = list(route.dependant.dependencies)
            while pending:
                dep = pending.pop()
                pending.extend(dep.dependencies)
                model = getattr(dep.call, QUERY_MODEL_ATTR, None)
                if model is None:
                    continue
                for method in route.methods or ():
                    operation = schema["paths"][route.path_format][method.lower()]
                    operation.setdefault("parameters", []).extend(
                        _query_parameters(model, components)
                    )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _query_parameters(model: type[BaseModel], components: dict[str, Any]) -> list[dict[str, Any]]:
    model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in model_schema.get("$defs", {}).items():
        components.setdefault(name, definition)
    properties = model_schema["properties"]
    parameters = []
    for name, field in model.model_fields.items():
        schema = dict(properties[field.alias or name])
        if "default" in schema and schema["default"] is None:
            del schema["default"]  # as FastAPI documents an optional query parameter
        parameter: dict[str, Any] = {
            "name": field.alias or name,
            "in": "query",
            "required": field.is_required(),
            "schema": schema,
        }
        if field.description:
            parameter["description"] = field.description
        if isinstance(field.json_schema_extra, CommaSeparated):
            parameter.update(style="form", explode=False)
        parameters.append(parameter)
    return parameters


# --- the route class ---------------------------------------------------------------------
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class _ParsedJsonRequest(Request):
    """A request whose JSON body :class:`StrictRoute` has already parsed with
    :func:`~crm_api.kit.body.loads_body`; FastAPI's ``await request.json()`` gets that."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_body(await self.body())
        return self._json


class StrictRoute(APIRoute):
    """The route class of every router (``APIRouter(route_class=StrictRoute)``; a test
    fails when a route is not one). Before the dependencies and the handler run:

    * a query parameter the operation does not declare is a 422 ``validation_error`` whose
      ``errors`` name it (``query.<name>``, ``unknown_field``), the answer a
      :func:`query_model` (``extra="forbid"``) gives on the list routes, which check their
      own; an operation that declares none takes none;
    * a JSON body is parsed by :func:`~crm_api.kit.body.loads_body` (400 ``malformed_json``
      or ``duplicate_key``) instead of ``json.loads``, so no handler sees a body that names a
      key twice;
    * a chunked body sent to an operation that takes none is still read up to the size cap
      (the request middleware answers 413 past it), as a declared ``Content-Length`` past
      the cap is refused before routing: an oversized body is refused whatever the route.

    Problems found here come before authentication, as FastAPI's own body errors do: they
    depend on nothing but the request and the published contract."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        allowed = _declared_query(self.dependant)
        if getattr(self.endpoint, REFUSES_ONLY_ATTR, False):
            allowed = None  # it answers 405 whatever the query says
        takes_json = self.body_field is not None and not isinstance(
            self.body_field.field_info, params.Form
        )
        # a handler may read the body itself (the token endpoint: a form or JSON)
        takes_body = self.body_field is not None or "requestBody" in (self.openapi_extra or {})

        async def strict_handler(request: Request) -> Response:
            if allowed is not None and request.scope["query_string"]:
                _refuse_unknown_query(request, allowed)
            if request.method in _BODY_METHODS:
                try:
                    if takes_json:
                        request = _ParsedJsonRequest(request.scope, request.receive)
                        media = request.headers.get("content-type")
                        if is_json_media(media) and await request.body():
                            await request.json()  # problems raised here, not in FastAPI's
                    elif not takes_body and "transfer-encoding" in request.headers:
                        await request.body()  # counted against the cap, then ignored
                except ClientDisconnect:
                    # the client left mid-body (or the server cut a body past its limits):
                    # nothing ran; a 400 as FastAPI's own body reader answers, not a 500
                    raise BadRequest(
                        "The request body was not received whole.", code="incomplete_body"
                    ) from None
            return await handle(request)

        return strict_handler


def _declared_query(dependant: Dependant) -> frozenset[str] | None:
    """The query parameters an operation declares, or ``None`` when a :func:`query_model`
    of its checks them (with every other error of the query string, in one answer)."""
    names: set[str] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        if current.call is not None and getattr(current.call, QUERY_MODEL_ATTR, None):
            return None
        names.update(param.alias for param in current.query_params)
        pending.extend(current.dependencies)
    return frozenset(names)


def _refuse_unknown_query(request: Request, allowed: frozenset[str]) -> None:
    unknown = {
        key: value for key, value in request.query_params.multi_items() if key not in allowed
    }
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", key),
                    "msg": "Extra inputs are not permitted",
                    "input": value,
                }
                for key, value in unknown.items()
            ]
        )
