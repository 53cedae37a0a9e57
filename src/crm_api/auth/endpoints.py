from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from crm_api.auth import service
from crm_api.auth.client_ip import client_key
from crm_api.auth.schemas import Grant, Me, RefreshRequest, TokenRequest, TokenResponse
from crm_api.authz.dependencies import authenticated, get_policy, public
from crm_api.authz.enforcer import subject_of
from crm_api.authz.types import Principal
from crm_api.db.session import ReadConnection, WriteSession
from crm_api.errors import BadRequest, UnprocessableEntity
from crm_api.kit.body import loads_body
from crm_api.kit.responses import json_response
from crm_api.kit.routing import StrictRoute, problems
from crm_api.user import service as users

router = APIRouter(prefix="/auth", tags=["auth"], route_class=StrictRoute)
me_router = APIRouter(prefix="/me", tags=["me"], route_class=StrictRoute)

_TOKEN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": TokenRequest.model_json_schema()},
            "application/json": {"schema": TokenRequest.model_json_schema()},
        },
    }
}


async def _token_request(request: Request) -> TokenRequest:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data: dict[str, Any]
    if content_type == "application/x-www-form-urlencoded":
        form = await request.form()
        data = {k: v for k, v in form.items() if isinstance(v, str)}
    else:
        raw = loads_body(await request.body())
        if not isinstance(raw, dict):
            raise UnprocessableEntity("Expected a JSON object.", code="validation_error")
        data = raw
    basic = request.headers.get("authorization", "")
    if basic.lower().startswith("basic ") and "client_id" not in data:
        try:
            cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise BadRequest("Malformed Basic credentials.", code="invalid_client") from exc
        data = {**data, "client_id": cid, "client_secret": secret}
    try:
        return TokenRequest.model_validate(data)
    except ValidationError as exc:
        raise UnprocessableEntity(
            "The token request is invalid.",
            code="invalid_request",
            errors=[
                {
                    "field": ".".join(str(p) for p in e["loc"]),
                    "code": e["type"],
                    "message": e["msg"],
                }
                for e in exc.errors()
            ],
        ) from exc


def _missing(*fields: str) -> UnprocessableEntity:
    return UnprocessableEntity(
        "Required for this grant type: " + ", ".join(fields),
        code="invalid_request",
        errors=[{"field": f, "code": "missing", "message": "required"} for f in fields],
    )


def _tokens(issued: service.IssuedTokens) -> Response:
    body = {
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_in": issued.expires_in,
        "refresh_token": issued.refresh_token,
    }
    return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@router.post(
    "/token",
    operation_id="auth_token",
    summary="Issue tokens (OAuth2)",
    response_model=TokenResponse,
    dependencies=[public()],
    openapi_extra=_TOKEN_BODY,
    responses=problems(400, 429, 503),
)
async def issue_token(request: Request, session: WriteSession) -> Response:
    """`password` (people: username = e-mail), `client_credentials` (API clients; form
    fields or HTTP Basic) or `refresh_token`. Wrong credentials are 401 `invalid_grant`;
    too many failed logins (for one account from one client, from one client overall —
    wrong client secrets included — or for one account overall) are 429
    `too_many_attempts` with `Retry-After`; when every
    password-check slot of the worker is busy, 503 `login_busy` with `Retry-After`."""
    body = await _token_request(request)
    app = request.app.state
    if body.grant_type == "password":
        if not body.username or body.password is None:
            raise _missing("username", "password")
        issued = await service.password_grant(
            session,
            app.db.engine,
            app.keyring,
            app.settings,
            app.passwords,
            body.username,
            body.password,
            client_key(request, app.settings.trusted_proxies),
        )
    elif body.grant_type == "client_credentials":
        if not body.client_id or body.client_secret is None:
            raise _missing("client_id", "client_secret")
        issued = await service.client_credentials_grant(
            session,
            app.db.engine,
            app.keyring,
            app.settings,
            app.passwords,
            body.client_id,
            body.client_secret,
            client_key(request, app.settings.trusted_proxies),
        )
    else:
        if not body.refresh_token:
            raise _missing("refresh_token")
        issued = await service.refresh_grant(
            session,
            app.db.engine,
            app.keyring,
            app.settings,
            body.refresh_token,
            app.principals.revoked_sessions,
        )
    return _tokens(issued)


@router.post(
    "/refresh",
    operation_id="auth_refresh",
    summary="Rotate a refresh token",
    response_model=TokenResponse,
    dependencies=[public()],
    responses=problems(),
)
async def refresh(request: Request, body: RefreshRequest, session: WriteSession) -> Response:
    """Returns a new access token and a new refresh token; the old one is spent. Presenting
    a spent refresh token again revokes the whole session (every token of its family)."""
    app = request.app.state
    return _tokens(
        await service.refresh_grant(
            session,
            app.db.engine,
            app.keyring,
            app.settings,
            body.refresh_token,
            app.principals.revoked_sessions,
        )
    )


@router.post(
    "/logout",
    operation_id="auth_logout",
    summary="End a session",
    status_code=204,
    dependencies=[public()],
    responses=problems(),
)
async def logout(request: Request, body: RefreshRequest, session: WriteSession) -> Response:
    """Ends the session: revokes the refresh token, every token rotated from it, and the
    access tokens the session issued (refused by every worker within about a second).
    Idempotent."""
    app = request.app.state
    await service.logout(session, app.settings, body.refresh_token, app.principals.revoked_sessions)
    return Response(status_code=204)


def _token_part(
    resource: str, action: str, token: frozenset[tuple[str, str]]
) -> list[tuple[str, str]]:
    """What of a role's grant ``(resource, action)`` (either may be ``*``) a personal access
    token may use: ``customers:*`` on the token keeps every customers grant, and narrows an
    admin's ``*:*`` to ``customers:*``; ``customers:read`` narrows it to ``customers:read``."""
    part = []
    for t_resource, t_action in sorted(token):
        if resource not in ("*", t_resource):
            continue
        if t_action == "*":
            part.append((t_resource, action))
        elif action in ("*", t_action):
            part.append((t_resource, t_action))
    return part


@me_router.get(
    "",
    operation_id="me_get",
    summary="The caller, with effective permissions",
    response_model=Me,
    responses=problems(),
)
async def get_me(
    request: Request, principal: Annotated[Principal, authenticated()], conn: ReadConnection
) -> Response:
    policy = get_policy(request)
    subject = subject_of(principal)
    roles = policy.roles_of(principal)
    grants: list[dict[str, Any]] = []
    for role, resource, action, scope, units in policy.enforcer.get_implicit_permissions_for_user(
        subject
    ):
        usable = (
            [(resource, action)]
            if principal.token_permissions is None
            else _token_part(resource, action, principal.token_permissions)
        )
        grants.extend(
            Grant(
                role=role,
                resource=res,
                action=act,
                scope=scope,
                org_unit_ids=[u for u in units.split("|") if u],
            ).model_dump(mode="json")
            for res, act in usable
        )
    user = await users.me_facts(conn, principal.id)
    body = {
        "id": principal.id,
        "kind": principal.kind.value,
        "email": user["email"] if user and user["kind"] == "person" else None,
        "display_name": principal.name,
        "org_unit_id": principal.org_unit_id,
        "manager_id": user["manager_id"] if user else None,
        "roles": roles,
        "permissions": grants,
        "token_permissions": sorted([list(p) for p in principal.token_permissions])
        if principal.token_permissions is not None
        else None,
    }
    return json_response(body)
