"""Reading the audit trail: ``/v1/audit-events``. Writing it is
:mod:`crm_api.audit.service`'s job, inside each mutation's transaction."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Response

from crm_api.audit import service
from crm_api.audit.schemas import AuditEvent, AuditEventListQuery
from crm_api.authz.dependencies import require
from crm_api.authz.types import Access, Action
from crm_api.db.session import ReadConnection
from crm_api.kit.responses import json_response
from crm_api.kit.routing import StrictRoute, problems, query_model
from crm_api.kit.schemas import Page

router = APIRouter(prefix="/audit-events", tags=["audit"], route_class=StrictRoute)

AuditEventsRead = Annotated[Access, require("audit_events", Action.read)]


@router.get(
    "",
    operation_id="audit_events_list",
    summary="List audit events",
    response_model=Page[AuditEvent],
    responses=problems(400),
)
async def list_audit_events(
    access: AuditEventsRead,
    conn: ReadConnection,
    query: Annotated[AuditEventListQuery, query_model(AuditEventListQuery)],
) -> Response:
    """Who changed what, newest first: the events of records in your data scope (their
    owner and org unit at the time of the change)."""
    return json_response(await service.list_events(conn, access, query))


@router.get(
    "/{event_id}",
    operation_id="audit_events_get",
    summary="Get an audit event",
    response_model=AuditEvent,
    responses=problems(404),
)
async def get_audit_event(
    event_id: uuid.UUID, access: AuditEventsRead, conn: ReadConnection
) -> Response:
    return json_response(await service.get_event(conn, access, event_id))
