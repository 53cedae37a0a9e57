"""Who is calling: the bearer token, verified, turned into a :class:`Principal`.

Every route except health, metrics, docs and token issuance depends on this through
``authz.require``; a missing or bad token is 401 with ``WWW-Authenticate``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crm_api.auth import tokens
from crm_api.auth.principals import PrincipalResolver, Rejected
from crm_api.authz.types import Principal
from crm_api.errors import TooManyRequests, Unauthorized
from crm_api.middleware import InflightCap

_bearer = HTTPBearer(auto_error=False, description="Access token (JWT) or personal access token.")

ACCESS_TYPES = frozenset({"access", "pat"})

#: Verified tokens → claims, so a client's repeated requests skip the HMAC and claim checks
#: (~90 µs each). Bounded; an entry is used only while the token's ``exp`` is in the future,
#: and revocation is still checked on every request by the principal resolver.
_VERIFIED_MAX = 10_000


def _verify_cached(request: Request, raw: str) -> tokens.Claims:
    state = request.app.state
    cache: OrderedDict[str, tokens.Claims] | None = getattr(state, "verified_tokens", None)
    if cache is None:
        cache = state.verified_tokens = OrderedDict()
    claims = cache.get(raw)
    if claims is not None and claims.expires_at > time.time():
        return claims
    settings = request.app.state.settings
    claims = tokens.verify(
        request.app.state.keyring,
        raw,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        token_types=ACCESS_TYPES,
    )
    cache[raw] = claims
    if len(cache) > _VERIFIED_MAX:
        cache.popitem(last=False)
    return claims


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("A bearer token is required.", code="missing_token")
    try:
        claims = _verify_cached(request, credentials.credentials)
    except tokens.InvalidToken as exc:
        raise Unauthorized("The token is invalid or expired.", code="invalid_token") from exc
    cap: InflightCap | None = getattr(request.app.state, "inflight", None)
    if cap is not None and not cap.enter(request.scope, claims.subject):
        raise TooManyRequests(
            f"At most {cap.limit} requests of one caller may be in progress at once; retry "
            "when one has finished.",
            code="too_many_concurrent_requests",
            headers={"Retry-After": "1"},
        )
    resolver: PrincipalResolver = request.app.state.principals
    try:
        return await resolver.resolve(claims)
    except Rejected as exc:
        raise Unauthorized("The token has been revoked.", code="invalid_token") from exc


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
