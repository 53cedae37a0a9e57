"""Fast JSON rendering: rows become dicts and go straight through orjson.

Routes still declare their pydantic response model for the OpenAPI contract; returning a
:class:`JSONResponse` from here skips FastAPI's re-validation and default encoder, the
largest per-request cost on list endpoints (DESIGN §6). A contract test validates real
responses against the declared models.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg.pgproto.pgproto
import orjson
from starlette.responses import Response

_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


#: asyncpg's own UUID type (a uuid.UUID subclass, which orjson only serializes natively
#: when the type is exactly uuid.UUID): the most frequent value by far in read responses.
_PG_UUID = asyncpg.pgproto.pgproto.UUID


def _default(value: Any) -> Any:
    if type(value) is _PG_UUID:
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_OPTS)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        dumps(content), status_code=status_code, headers=headers, media_type="application/json"
    )


def with_etag(
    row: Mapping[str, Any],
    status_code: int = 200,
    location: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A record as JSON with its ``ETag`` (its ``version``), ``Location`` on a create, and
    any other ``headers`` (``Cache-Control: no-store`` beside a secret)."""
    from crm_api.kit.concurrency import etag

    sent = {"ETag": etag(int(row["version"])), **(headers or {})}
    if location:
        sent["Location"] = location
    return json_response(row, status_code, sent)
