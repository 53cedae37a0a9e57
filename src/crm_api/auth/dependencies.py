"""Who is calling: the bearer token, verified, turned into a :class:`Principal`.

Every route except health, metrics, docs and token issuance depends on this through
``authz.require``; a missing or bad token is 401 with ``WWW-Authenticate``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crm_api.auth import tokens
from crm_api.auth.principals import PrincipalResolver, Rejected
from crm_api.authz.types import Principal
from crm_api.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="Access token (JWT) or personal access token.")

ACCESS_TYPES = frozenset({"access", "pat"})


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("A bearer token is required.", code="missing_token")
    settings = request.app.state.settings
    try:
        claims = tokens.verify(
            request.app.state.keyring,
            credentials.credentials,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            token_types=ACCESS_TYPES,
        )
    except tokens.InvalidToken as exc:
        raise Unauthorized("The token is invalid or expired.", code="invalid_token") from exc
    resolver: PrincipalResolver = request.app.state.principals
    try:
        return await resolver.resolve(claims)
    except Rejected as exc:
        raise Unauthorized("The token has been revoked.", code="invalid_token") from exc


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
