"""``/v1/api-clients``: OAuth2 client-credentials callers (partners, storefronts).

Create and rotate-secret return the secret once; they take no ``Idempotency-Key`` on
purpose, since replaying a response would mean keeping the secret in plain text.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response

from crm_api.api_client import service
from crm_api.api_client.schemas import (
    ApiClient,
    ApiClientCreate,
    ApiClientListQuery,
    ApiClientUpdate,
    ApiClientWithSecret,
    RotateSecret,
)
from crm_api.authz.dependencies import get_policy, require
from crm_api.authz.state import PolicySession
from crm_api.authz.types import Access, Action
from crm_api.db.session import ReadConnection
from crm_api.kit.concurrency import IfMatch, RequireIfMatch
from crm_api.kit.responses import json_response, with_etag
from crm_api.kit.routing import ETAG_HEADER, StrictRoute, problems, query_model
from crm_api.kit.schemas import Page

router = APIRouter(prefix="/api-clients", tags=["api-clients"], route_class=StrictRoute)

R = "api_clients"
ApiClientsRead = Annotated[Access, require(R, Action.read)]
ApiClientsCreate = Annotated[Access, require(R, Action.create)]
ApiClientsUpdate = Annotated[Access, require(R, Action.update)]
ApiClientsDelete = Annotated[Access, require(R, Action.delete)]

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.get(
    "",
    operation_id="api_clients_list",
    summary="List API clients",
    response_model=Page[ApiClient],
    responses=problems(400),
)
async def list_api_clients(
    access: ApiClientsRead,
    conn: ReadConnection,
    query: Annotated[ApiClientListQuery, query_model(ApiClientListQuery)],
) -> Response:
    return json_response(await service.list_clients(conn, access, query))


@router.post(
    "",
    operation_id="api_clients_create",
    summary="Create an API client",
    status_code=201,
    response_model=ApiClientWithSecret,
    responses={**problems(), 201: {"headers": ETAG_HEADER}},
)
async def create_api_client(
    request: Request,
    body: ApiClientCreate,
    access: ApiClientsCreate,
    session: PolicySession,
) -> Response:
    """Returns `client_id` and `client_secret`; the secret is shown only in this response.
    Roles must exist (422 `unknown_role`); you may only give roles whose every grant you
    hold yourself over no wider a scope (403 `role_not_grantable`)."""
    row = await service.create_client(session, get_policy(request), access, body)
    return with_etag(row, 201, f"/v1/api-clients/{row['id']}", _NO_STORE)


@router.get(
    "/{client_id}",
    operation_id="api_clients_get",
    summary="Get an API client",
    response_model=ApiClient,
    responses={**problems(404), 200: {"headers": ETAG_HEADER}},
)
async def get_api_client(
    client_id: uuid.UUID, access: ApiClientsRead, conn: ReadConnection
) -> Response:
    return with_etag(await service.get_client(conn, access, client_id))


@router.patch(
    "/{client_id}",
    operation_id="api_clients_update",
    summary="Update an API client",
    response_model=ApiClient,
    responses=problems(404, 412, 428),
)
async def update_api_client(
    request: Request,
    client_id: uuid.UUID,
    body: ApiClientUpdate,
    access: ApiClientsUpdate,
    session: PolicySession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Rename, replace the roles, or (de)activate. Deactivating stops the client's tokens
    at once; reactivating lets it request new ones. Roles given or taken must be ones you
    could give (403 `role_not_grantable`)."""
    row = await service.update_client(
        session,
        get_policy(request),
        access,
        client_id,
        body,
        if_match,
        require_if_match=strict,
    )
    return with_etag(row)


@router.delete(
    "/{client_id}",
    operation_id="api_clients_delete",
    summary="Deactivate an API client (restorable)",
    status_code=204,
    responses=problems(404, 412, 428),
)
async def delete_api_client(
    request: Request,
    client_id: uuid.UUID,
    access: ApiClientsDelete,
    session: PolicySession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """The client can no longer get tokens and those it holds stop working. Restore with
    `PATCH {"active": true}`."""
    await service.deactivate_client(
        session,
        get_policy(request),
        access,
        client_id,
        if_match,
        require_if_match=strict,
    )
    return Response(status_code=204)


@router.post(
    "/{client_id}/rotate-secret",
    operation_id="api_clients_rotate_secret",
    summary="Issue a new client secret",
    response_model=ApiClientWithSecret,
    responses={**problems(404, 412, 428), 200: {"headers": ETAG_HEADER}},
)
async def rotate_api_client_secret(
    request: Request,
    client_id: uuid.UUID,
    access: ApiClientsUpdate,
    session: PolicySession,
    strict: RequireIfMatch,
    body: RotateSecret | None = None,
    if_match: IfMatch = None,
) -> Response:
    """The new secret is shown only in this response. With `grace_period_s` the old one
    keeps working that long (for rolling the change out); otherwise it stops at once."""
    row = await service.rotate_secret(
        session,
        get_policy(request),
        access,
        client_id,
        body or RotateSecret(),
        if_match,
        require_if_match=strict,
    )
    return with_etag(row, headers=_NO_STORE)
