from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response

from crm_api.authz.catalog import known_resources
from crm_api.authz.dependencies import get_policy, require
from crm_api.authz.state import PolicySession
from crm_api.authz.types import Access, Action
from crm_api.db.session import ReadConnection, WriteSession
from crm_api.kit.concurrency import IfMatch, RequireIfMatch
from crm_api.kit.idempotency import IdempotencyKeyHeader, idempotent
from crm_api.kit.responses import json_response, with_etag
from crm_api.kit.routing import ETAG_HEADER, StrictRoute, problems, query_model
from crm_api.kit.schemas import Page
from crm_api.role import service
from crm_api.role.schemas import (
    Grant,
    GrantCreate,
    GrantListQuery,
    Role,
    RoleCreate,
    RoleListQuery,
    RoleUpdate,
)

router = APIRouter(prefix="/roles", tags=["roles"], route_class=StrictRoute)

R = "roles"
RolesRead = Annotated[Access, require(R, Action.read)]
RolesCreate = Annotated[Access, require(R, Action.create)]
RolesUpdate = Annotated[Access, require(R, Action.update)]
RolesDelete = Annotated[Access, require(R, Action.delete)]


@router.get(
    "",
    operation_id="roles_list",
    summary="List roles",
    response_model=Page[Role],
    responses=problems(400),
)
async def list_roles(
    access: RolesRead,
    conn: ReadConnection,
    query: Annotated[RoleListQuery, query_model(RoleListQuery)],
) -> Response:
    return json_response(await service.list_roles(conn, access, query))


@router.post(
    "",
    operation_id="roles_create",
    summary="Create a role",
    status_code=201,
    response_model=Role,
    responses={**problems(409), 201: {"headers": ETAG_HEADER}},
)
async def create_role(
    request: Request,
    body: RoleCreate,
    access: RolesCreate,
    session: WriteSession,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A role with no grants yet (add them with `POST /v1/roles/{role_id}/grants`). A taken
    name is 409 `role_exists`."""

    async def produce() -> Response:
        row = await service.create_role(session, access, body)
        return with_etag(row, 201, f"/v1/roles/{row['id']}")

    return await idempotent(request, session, access.principal, idempotency_key, body, produce)


@router.get(
    "/{role_id}",
    operation_id="roles_get",
    summary="Get a role",
    response_model=Role,
    responses={**problems(404), 200: {"headers": ETAG_HEADER}},
)
async def get_role(role_id: uuid.UUID, access: RolesRead, conn: ReadConnection) -> Response:
    return with_etag(await service.get_role(conn, access, role_id))


@router.patch(
    "/{role_id}",
    operation_id="roles_update",
    summary="Change a role's description",
    response_model=Role,
    responses=problems(404, 412, 428),
)
async def update_role(
    role_id: uuid.UUID,
    body: RoleUpdate,
    access: RolesUpdate,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    row = await service.update_role(
        session,
        access,
        role_id,
        body,
        if_match,
        require_if_match=strict,
    )
    return with_etag(row)


@router.delete(
    "/{role_id}",
    operation_id="roles_delete",
    summary="Delete a role",
    status_code=204,
    responses=problems(404, 409, 412, 428),
)
async def delete_role(
    role_id: uuid.UUID,
    access: RolesDelete,
    session: PolicySession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Removes the role and its grants for good. Built-in roles cannot be deleted (409
    `role_builtin`), nor roles someone holds (409 `role_in_use`, with `holders`)."""
    await service.delete_role(session, access, role_id, if_match, require_if_match=strict)
    return Response(status_code=204)


@router.get(
    "/{role_id}/grants",
    operation_id="roles_grants_list",
    summary="List a role's grants",
    response_model=Page[Grant],
    responses=problems(400, 404),
)
async def list_grants(
    role_id: uuid.UUID,
    access: RolesRead,
    conn: ReadConnection,
    query: Annotated[GrantListQuery, query_model(GrantListQuery)],
) -> Response:
    return json_response(await service.list_grants(conn, access, role_id, query))


@router.post(
    "/{role_id}/grants",
    operation_id="roles_grants_create",
    summary="Grant a role an action",
    status_code=201,
    response_model=Grant,
    responses=problems(404, 409),
)
async def create_grant(
    request: Request,
    role_id: uuid.UUID,
    body: GrantCreate,
    access: RolesUpdate,
    session: PolicySession,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """`action` on `resource` over `scope` (`custom` takes `org_unit_ids`). Every worker
    enforces it within the policy poll interval. The same grant twice is 409
    `grant_exists`; an unknown resource or action is 422. You may grant only what you
    hold over no wider a scope, never to a role you hold, and only administrators edit
    a built-in role's grants (403 `grant_not_allowed`, `reason` `admin_role` or
    `builtin_role`: make a custom role instead)."""
    resources = known_resources(request.app)

    async def produce() -> Response:
        row = await service.add_grant(
            session, get_policy(request), access, role_id, body, resources
        )
        return json_response(row, 201, {"Location": f"/v1/roles/{role_id}/grants/{row['id']}"})

    return await idempotent(request, session, access.principal, idempotency_key, body, produce)


@router.delete(
    "/{role_id}/grants/{grant_id}",
    operation_id="roles_grants_delete",
    summary="Withdraw a grant",
    status_code=204,
    responses=problems(404, 409),
)
async def delete_grant(
    request: Request,
    role_id: uuid.UUID,
    grant_id: uuid.UUID,
    access: RolesUpdate,
    session: PolicySession,
) -> Response:
    """The admin role's `*`/`*`/`all` grant cannot be withdrawn (409 `grant_protected`).
    Only administrators withdraw a built-in role's grants (403 `grant_not_allowed`,
    `reason: builtin_role`)."""
    await service.remove_grant(session, get_policy(request), access, role_id, grant_id)
    return Response(status_code=204)
