from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response

from crm_api.authz.dependencies import get_policy, require
from crm_api.authz.state import PolicySession
from crm_api.authz.types import Access, Action
from crm_api.db.session import ReadConnection, WriteSession
from crm_api.kit.concurrency import IfMatch, RequireIfMatch
from crm_api.kit.idempotency import IdempotencyKeyHeader, idempotent
from crm_api.kit.responses import json_response, with_etag
from crm_api.kit.routing import ETAG_HEADER, StrictRoute, problems, query_model
from crm_api.kit.schemas import Page
from crm_api.org_unit import service
from crm_api.org_unit.schemas import (
    OrgUnit,
    OrgUnitCreate,
    OrgUnitListQuery,
    OrgUnitMove,
    OrgUnitUpdate,
)

router = APIRouter(prefix="/org-units", tags=["org units"], route_class=StrictRoute)

R = "org_units"
OrgUnitsRead = Annotated[Access, require(R, Action.read)]
OrgUnitsCreate = Annotated[Access, require(R, Action.create)]
OrgUnitsUpdate = Annotated[Access, require(R, Action.update)]


@router.get(
    "",
    operation_id="org_units_list",
    summary="List org units",
    response_model=Page[OrgUnit],
    responses=problems(400),
)
async def list_org_units(
    access: OrgUnitsRead,
    conn: ReadConnection,
    query: Annotated[OrgUnitListQuery, query_model(OrgUnitListQuery)],
) -> Response:
    """Units in your scope, in tree order by default (`sort=path`)."""
    return json_response(await service.list_org_units(conn, access, query))


@router.post(
    "",
    operation_id="org_units_create",
    summary="Create an org unit",
    status_code=201,
    response_model=OrgUnit,
    responses={**problems(409), 201: {"headers": ETAG_HEADER}},
)
async def create_org_unit(
    request: Request,
    body: OrgUnitCreate,
    access: OrgUnitsCreate,
    session: WriteSession,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A unit under `parent_id` (which your scope must cover), or a new root (scope `all`).
    A deactivated parent is a 409 `parent_inactive`."""

    async def produce() -> Response:
        row = await service.create_org_unit(session, access, body)
        return with_etag(row, 201, f"/v1/org-units/{row['id']}")

    return await idempotent(request, session, access.principal, idempotency_key, body, produce)


@router.get(
    "/{org_unit_id}",
    operation_id="org_units_get",
    summary="Get an org unit",
    response_model=OrgUnit,
    responses={**problems(404), 200: {"headers": ETAG_HEADER}},
)
async def get_org_unit(
    org_unit_id: uuid.UUID, access: OrgUnitsRead, conn: ReadConnection
) -> Response:
    return with_etag(await service.get_org_unit(conn, access, org_unit_id))


@router.patch(
    "/{org_unit_id}",
    operation_id="org_units_update",
    summary="Rename or re-kind an org unit",
    response_model=OrgUnit,
    responses=problems(404, 412, 428),
)
async def update_org_unit(
    org_unit_id: uuid.UUID,
    body: OrgUnitUpdate,
    access: OrgUnitsUpdate,
    session: WriteSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Change `name` and/or `kind`. With `If-Match`, a stale version is a 412."""
    row = await service.update_org_unit(
        session,
        access,
        org_unit_id,
        body,
        if_match,
        require_if_match=strict,
    )
    return with_etag(row)


@router.post(
    "/{org_unit_id}/move",
    operation_id="org_units_move",
    summary="Move an org unit (with its subtree) under another parent",
    response_model=OrgUnit,
    responses=problems(404, 409, 412),
)
async def move_org_unit(
    request: Request,
    org_unit_id: uuid.UUID,
    body: OrgUnitMove,
    access: OrgUnitsUpdate,
    session: PolicySession,
    if_match: IfMatch = None,
) -> Response:
    """Every unit below moves along (one statement rewrites their paths), and every
    `org_subtree` scope follows at once. Under itself or a descendant: 409 `invalid_move`.
    Your scope must cover the unit, its current parent and the new one (else 403
    `grant_not_allowed`, `reason: source_out_of_scope`, or 422 `invalid_parent`); moving
    a unit into your own subtree, or the unit you belong to, is 403 `grant_not_allowed`
    with `reason: self` (administrators excepted)."""
    row = await service.move_org_unit(
        session, get_policy(request), access, org_unit_id, body.parent_id, if_match
    )
    return with_etag(row)


@router.post(
    "/{org_unit_id}/deactivate",
    operation_id="org_units_deactivate",
    summary="Deactivate an org unit",
    response_model=OrgUnit,
    responses=problems(404, 409, 412),
)
async def deactivate_org_unit(
    org_unit_id: uuid.UUID,
    access: OrgUnitsUpdate,
    session: PolicySession,
    if_match: IfMatch = None,
) -> Response:
    """Refused (409 `org_unit_in_use`, with `active_children` and `active_users`) while
    active units or users remain in it. Idempotent."""
    return with_etag(await service.set_active(session, access, org_unit_id, False, if_match))


@router.post(
    "/{org_unit_id}/activate",
    operation_id="org_units_activate",
    summary="Reactivate an org unit",
    response_model=OrgUnit,
    responses=problems(404, 409, 412),
)
async def activate_org_unit(
    org_unit_id: uuid.UUID,
    access: OrgUnitsUpdate,
    session: PolicySession,
    if_match: IfMatch = None,
) -> Response:
    """Refused (409 `parent_inactive`) under a deactivated parent. Idempotent."""
    return with_etag(await service.set_active(session, access, org_unit_id, True, if_match))
