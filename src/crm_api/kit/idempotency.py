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
from sqlalchemy import CTE, Select, Table, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from crm_api.authz.types import Principal
from crm_api.errors import ProblemError, ServiceUnavailable, UnprocessableEntity
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


class Claim:
    """The key's claim, folded by the producer into its first statement (see
    :func:`idempotent_folded`): :meth:`attach` adds it to a ``SELECT`` as a data-modifying
    CTE plus a ``claimed`` column, :meth:`values` gives its parameters, and
    :meth:`settle` takes the ``claimed`` value the statement returned. A producer that has
    no statement to fold it into calls :meth:`run` before it writes anything."""

    __slots__ = ("_values", "ran", "session")

    def __init__(self, session: AsyncSession, values: dict[str, Any]) -> None:
        self.session = session
        self._values = values
        self.ran = False

    @staticmethod
    def source() -> CTE:
        """The claim as a CTE that returns one row when this request took the key, none
        when the key is live: an INSERT may select its values from it."""
        return _CLAIM.cte("idempotency_claim")

    @staticmethod
    def attach(stmt: Select[Any]) -> Select[Any]:
        """``stmt`` with the claim as a CTE and a ``claimed`` column (true when
        this request took the key). ``stmt`` must return at least one row, or the caller
        cannot tell; the statement is the same for every key (parameters only), so it
        can be built once and cached."""
        claim = Claim.source()
        claimed = select(func.count()).select_from(claim).scalar_subquery() > 0
        return stmt.add_cte(claim).add_columns(claimed.label("claimed"))

    def values(self) -> dict[str, Any]:
        return self._values

    def settle(self, claimed: bool) -> None:
        """Raise :class:`_Taken` when the key is someone's live key (the caller replays)."""
        self.ran = True
        if not claimed:
            raise _Taken

    async def run(self) -> None:
        """The claim as a statement of its own (a path with nothing to fold it into)."""
        claimed = (await self.session.execute(_CLAIM, self._values)).scalar_one_or_none()
        self.settle(claimed is not None)


class _Taken(Exception):
    """The key is live: replay its stored response (or refuse a different body)."""


def _claim_values(
    owner: str, key: str, method: str, path: str, request_hash: str
) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "principal": owner,
        "key": key,
        "method": method,
        "path": path,
        "request_hash": request_hash,
        "created_at": now,
        "expired_before": now - KEY_TTL,
    }


async def _replay(session: AsyncSession, owner: str, key: str, request_hash: str) -> Response:
    stored = (await session.execute(_STORED, {"p_principal": owner, "p_key": key})).one()
    if stored.request_hash != request_hash:
        raise UnprocessableEntity(
            "This Idempotency-Key was used with a different request.",
            code="idempotency_key_reused",
        )
    headers = dict(stored.response_headers)
    headers["Idempotent-Replayed"] = "true"
    return Response(stored.response_body, status_code=stored.status_code, headers=headers)


async def _store(session: AsyncSession, owner: str, key: str, response: Response) -> None:
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
    # One statement claims the key: a new key is inserted; an expired one (older than
    # KEY_TTL) is taken over as if new; a live one is left alone and nothing is returned.
    # Either way the row stays locked by whoever wrote it until their transaction ends.
    claim = Claim(session, _claim_values(owner, key, method, path, request_hash))
    try:
        await claim.run()
    except _Taken:
        return await _replay(session, owner, key, request_hash)
    response = await produce()
    await _store(session, owner, key, response)
    return response


async def idempotent_folded(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    key: str | None,
    body: BaseModel | dict[str, Any] | None,
    produce: Callable[[Claim | None], Awaitable[Response]],
) -> Response:
    """:func:`idempotent` with the key's claim run inside the producer's first statement
    (one round trip fewer): ``produce(claim)`` must, before it writes anything, either
    run a statement built with :meth:`Claim.attach` and pass its ``claimed`` value to
    :meth:`Claim.settle`, or call :meth:`Claim.run`. ``produce(None)`` without a key.

    The semantics are :func:`idempotent`'s: a live key replays (or refuses a different
    body) whatever the producer would have answered now, also when the producer failed
    before its claim ran (the claim then runs on its own to decide); concurrent requests
    with one key wait on the key's row and produce one effect."""
    if key is None:
        return await produce(None)
    method, path = request.method, request.url.path
    request_hash = fingerprint(method, path, body)
    owner = principal.audit_key
    claim = Claim(session, _claim_values(owner, key, method, path, request_hash))
    try:
        response = await produce(claim)
    except _Taken:
        return await _replay(session, owner, key, request_hash)
    except ProblemError as exc:
        if claim.ran or isinstance(exc, ServiceUnavailable):
            raise
        # refused before claiming (the body alone, or a read): a live key's first answer
        # still wins, as it would have with the claim first
        try:
            await claim.run()
        except _Taken:
            return await _replay(session, owner, key, request_hash)
        raise
    if not claim.ran:
        raise RuntimeError("the producer never claimed the Idempotency-Key")
    await _store(session, owner, key, response)
    return response
