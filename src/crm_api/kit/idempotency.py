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
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
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


def fingerprint(method: str, path: str, body: BaseModel | dict[str, Any] | None) -> str:
    if isinstance(body, BaseModel):
        payload: Any = body.model_dump(mode="json", exclude_unset=True)
    else:
        payload = body
    raw = orjson.dumps([method, path, payload], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


async def idempotent(
    session: AsyncSession,
    principal: Principal,
    key: str | None,
    *,
    method: str,
    path: str,
    body: BaseModel | dict[str, Any] | None,
    produce: Callable[[], Awaitable[Response]],
) -> Response:
    if key is None:
        return await produce()
    request_hash = fingerprint(method, path, body)
    owner = principal.audit_key
    now = datetime.now(UTC)
    fresh = {
        "method": method,
        "path": path,
        "request_hash": request_hash,
        "status_code": 0,
        "response_body": b"",
        "response_headers": {},
        "created_at": now,
    }
    # One statement claims the key: a new key is inserted; an expired one (older than
    # KEY_TTL) is taken over as if new; a live one is left alone and nothing is returned.
    # Either way the row stays locked by whoever wrote it until their transaction ends.
    stmt = insert(IdempotencyKey).values(principal=owner, key=key, **fresh)
    inserted = (
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[IdempotencyKey.principal, IdempotencyKey.key],
                set_=fresh,
                where=IdempotencyKey.created_at < now - KEY_TTL,
            ).returning(IdempotencyKey.key)
        )
    ).scalar_one_or_none()
    if inserted is None:
        stored = (
            await session.execute(
                select(IdempotencyKey).where(
                    IdempotencyKey.principal == owner, IdempotencyKey.key == key
                )
            )
        ).scalar_one()
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
        update(IdempotencyKey)
        .where(IdempotencyKey.principal == owner, IdempotencyKey.key == key)
        .values(
            status_code=response.status_code,
            response_body=bytes(response.body),
            response_headers=kept,
        )
    )
    return response
