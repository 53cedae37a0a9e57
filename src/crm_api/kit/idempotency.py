"""``Idempotency-Key`` for POST: a retry replays the first response; the same key with a
different body is 422 ``idempotency_key_reused``; concurrent requests with one key produce
one effect.

The key row is inserted in the request's own transaction, before the effect. A concurrent
request with the same key blocks on the primary key until the first transaction ends: if it
committed, the waiter replays its stored response; if it rolled back, the waiter proceeds.
Keys are kept 24 hours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import Header
from pydantic import BaseModel
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from crm_api.authz.types import Principal
from crm_api.errors import UnprocessableEntity
from crm_api.models.idempotency_key import IdempotencyKey

KEY_TTL = timedelta(hours=24)
_REPLAYED_HEADERS = ("location", "etag", "content-type")

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="A unique key (e.g. a UUID) making this POST safe to retry for 24 hours.",
    ),
]


# The three statements, built once with named parameters: Core statements on the table
# (not the ORM entity, whose DML goes through the ORM's bulk machinery) and no literal
# values to coerce per request.
_T: Table = IdempotencyKey.__table__  # type: ignore[assignment]
_FRESH = ("method", "path", "request_hash", "created_at")
_claim = insert(_T).values(
    principal=bindparam("principal"),
    key=bindparam("key"),
    status_code=0,
    response_body=b"",
    response_headers={},
    **{c: bindparam(c) for c in _FRESH},
)
_CLAIM = _claim.on_conflict_do_update(
    index_elements=[_T.c.principal, _T.c.key],
    set_={
        **{c: _claim.excluded[c] for c in _FRESH},
        "status_code": 0,
        "response_body": b"",
        "response_headers": {},
    },
    where=_T.c.created_at < bindparam("expired_before", type_=_T.c.created_at.type),
).returning(_T.c.key)
_THIS_KEY = (_T.c.principal == bindparam("p_principal"), _T.c.key == bindparam("p_key"))
_STORED = select(
    _T.c.request_hash, _T.c.status_code, _T.c.response_body, _T.c.response_headers
).where(*_THIS_KEY)
_STORE = (
    update(_T)
    .where(*_THIS_KEY)
    .values(
        status_code=bindparam("p_status_code"),
        response_body=bindparam("p_response_body"),
        response_headers=bindparam("p_response_headers"),
    )
)


def fingerprint(method: str, path: str, body: BaseModel | dict[str, Any] | None) -> str:
    if isinstance(body, BaseModel):
        payload: Any = body.model_dump(mode="json", exclude_unset=True)
    else:
        payload = body
    raw = orjson.dumps([method, path, payload], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


async def idempotent(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    key: str | None,
    body: BaseModel | dict[str, Any] | None,
    produce: Callable[[], Awaitable[Response]],
) -> Response:
    """``produce()``'s response, or with ``key`` (the ``Idempotency-Key`` header) the one
    stored for the same ``principal``, method, path and ``body`` (both read off
    ``request``): a replay. The same key with another request is a 422
    ``idempotency_key_reused``."""
    method, path = request.method, request.url.path
    if key is None:
        return await produce()
    request_hash = fingerprint(method, path, body)
    owner = principal.audit_key
    now = datetime.now(UTC)
    # One statement claims the key: a new key is inserted; an expired one (older than
    # KEY_TTL) is taken over as if new; a live one is left alone and nothing is returned.
    # Either way the row stays locked by whoever wrote it until their transaction ends.
    claimed = (
        await session.execute(
            _CLAIM,
            {
                "principal": owner,
                "key": key,
                "method": method,
                "path": path,
                "request_hash": request_hash,
                "created_at": now,
                "expired_before": now - KEY_TTL,
            },
        )
    ).scalar_one_or_none()
    if claimed is None:
        stored = (await session.execute(_STORED, {"p_principal": owner, "p_key": key})).one()
        if stored.request_hash != request_hash:
            raise UnprocessableEntity(
                "This Idempotency-Key was used with a different request.",
                code="idempotency_key_reused",
            )
        headers = dict(stored.response_headers)
        headers["Idempotent-Replayed"] = "true"
        return Response(stored.response_body, status_code=stored.status_code, headers=headers)
    response = await produce()
    kept = {k: v for k, v in response.headers.items() if k.lower() in _REPLAYED_HEADERS}
    await session.execute(
        _STORE,
        {
            "p_principal": owner,
            "p_key": key,
            "p_status_code": response.status_code,
            "p_response_body": bytes(response.body),
            "p_response_headers": kept,
        },
    )
    return response
