"""``/v1/me/tokens``: the caller's personal access tokens."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response

from crm_api.authz.dependencies import get_policy, own_records
from crm_api.authz.state import PolicySession
from crm_api.authz.types import Access, Action
from crm_api.db.session import ReadConnection, WriteSession
from crm_api.kit.responses import json_response
from crm_api.kit.routing import StrictRoute, problems, query_model
from crm_api.kit.schemas import Page
from crm_api.pat import service as pat
from crm_api.pat.schemas import (
    PersonalAccessToken,
    PersonalAccessTokenCreate,
    PersonalAccessTokenCreated,
    PersonalAccessTokenListQuery,
)

router = APIRouter(prefix="/me/tokens", tags=["me"], route_class=StrictRoute)

#: The caller's own tokens (``own``, whatever their roles: nobody reaches another's).
R = "personal_access_tokens"
OwnRead = Annotated[Access, own_records(R, Action.read)]
OwnCreate = Annotated[Access, own_records(R, Action.create)]
OwnDelete = Annotated[Access, own_records(R, Action.delete)]


@router.post(
    "",
    operation_id="me_tokens_create",
    summary="Create a personal access token",
    status_code=201,
    response_model=PersonalAccessTokenCreated,
    responses=problems(),
)
async def create_personal_access_token(
    request: Request, body: PersonalAccessTokenCreate, access: OwnCreate, session: WriteSession
) -> Response:
    """The token (a bearer token for scripts) is in this response only. Each permission
    must be one you hold (403 `grant_not_allowed`); without an expiry it lasts 365 days.
    API clients, and callers using a personal access token, get 403 `pat_not_allowed`."""
    state = request.app.state
    row = await pat.create_token(
        session, access, get_policy(request), state.keyring, state.settings, body
    )
    return json_response(
        row,
        201,
        {
            "Location": f"/v1/me/tokens/{row['id']}",
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
        },
    )


@router.get(
    "",
    operation_id="me_tokens_list",
    summary="List your personal access tokens",
    response_model=Page[PersonalAccessToken],
    responses=problems(400),
)
async def list_personal_access_tokens(
    access: OwnRead,
    conn: ReadConnection,
    query: Annotated[PersonalAccessTokenListQuery, query_model(PersonalAccessTokenListQuery)],
) -> Response:
    return json_response(await pat.list_tokens(conn, access, query))


@router.get(
    "/{token_id}",
    operation_id="me_tokens_get",
    summary="Get a personal access token",
    response_model=PersonalAccessToken,
    responses=problems(404),
)
async def get_personal_access_token(
    token_id: uuid.UUID, access: OwnRead, conn: ReadConnection
) -> Response:
    return json_response(await pat.get_token(conn, access, token_id))


@router.delete(
    "/{token_id}",
    operation_id="me_tokens_revoke",
    summary="Revoke a personal access token",
    status_code=204,
    responses=problems(404),
)
async def revoke_personal_access_token(
    token_id: uuid.UUID, access: OwnDelete, session: PolicySession
) -> Response:
    """Stops the token everywhere within the policy poll interval (at once on this worker).
    Idempotent."""
    await pat.revoke_token(session, access, token_id)
    return Response(status_code=204)
