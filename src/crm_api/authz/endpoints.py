"""Access explained: why a user may or may not act, and which records they can reach."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response

from crm_api.authz import explain as service
from crm_api.authz.dependencies import get_policy, require
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.schemas import ExplainQuery, Explanation, Visibility, VisibilityQuery
from crm_api.authz.types import Access, Action
from crm_api.db.session import ReadConnection
from crm_api.kit.responses import json_response
from crm_api.kit.routing import StrictRoute, problems, query_model

router = APIRouter(prefix="/authz", tags=["access control"], route_class=StrictRoute)


async def _fresh_policy(request: Request) -> PolicyEngine:
    """The policy as of now: an explanation right after a grant change must not describe
    the previous policy, even before the poller has noticed."""
    policy = get_policy(request)
    await policy.refresh_if_changed(request.app.state.db.engine)
    return policy


#: Explaining reveals other users' permissions and records: administrators only by default.
AuthzManage = Annotated[Access, require("authz", Action.manage)]


@router.get(
    "/explain",
    operation_id="authz_explain",
    summary="Explain a user's permission",
    response_model=Explanation,
    responses=problems(404),
)
async def explain(
    request: Request,
    access: AuthzManage,
    conn: ReadConnection,
    query: Annotated[ExplainQuery, query_model(ExplainQuery)],
) -> Response:
    """Whether `user_id` may `action` on `resource`, over which scope, through which
    grants; with `record_id`, whether that record is inside the scope and why — decided by
    the resource's own scoped query, exactly as the API enforces it."""
    return json_response(
        await service.explain(
            conn,
            await _fresh_policy(request),
            access,
            query.user_id,
            query.resource,
            query.action,
            query.record_id,
        )
    )


@router.get(
    "/visibility",
    operation_id="authz_visibility",
    summary="Which records a user can reach",
    response_model=Visibility,
    responses=problems(404),
)
async def visibility(
    request: Request,
    access: AuthzManage,
    conn: ReadConnection,
    query: Annotated[VisibilityQuery, query_model(VisibilityQuery)],
) -> Response:
    """The user's scope on `resource`, the SQL predicate their queries get (values
    inlined) and how many records it covers now."""
    return json_response(
        await service.visibility(
            conn,
            await _fresh_policy(request),
            access,
            query.user_id,
            query.resource,
            query.action,
        )
    )
