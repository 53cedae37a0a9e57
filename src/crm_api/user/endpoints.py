from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response

from crm_api.authz.dependencies import get_policy, optional, require
from crm_api.authz.state import PolicySession
from crm_api.authz.types import Access, Action
from crm_api.db.session import ReadConnection
from crm_api.kit.concurrency import IfMatch, RequireIfMatch
from crm_api.kit.idempotency import IdempotencyKeyHeader, idempotent
from crm_api.kit.responses import json_response, with_etag
from crm_api.kit.routing import ETAG_HEADER, StrictRoute, problems, query_model
from crm_api.kit.schemas import Page
from crm_api.user import service
from crm_api.user.schemas import User, UserCreate, UserListQuery, UserUpdate

router = APIRouter(prefix="/users", tags=["users"], route_class=StrictRoute)

R = "users"
UsersRead = Annotated[Access, require(R, Action.read)]
UsersCreate = Annotated[Access, require(R, Action.create)]
UsersUpdate = Annotated[Access, require(R, Action.update)]
UsersAssign = Annotated[Access | None, optional(R, Action.assign)]


@router.get(
    "",
    operation_id="users_list",
    summary="List users",
    response_model=Page[User],
    responses=problems(400),
)
async def list_users(
    access: UsersRead,
    conn: ReadConnection,
    query: Annotated[UserListQuery, query_model(UserListQuery)],
) -> Response:
    """Users in your scope (`own` is yourself; org scopes go by the user's org unit).
    The accounts behind API clients are listed only with `kind=service`."""
    return json_response(await service.list_users(conn, access, query))


@router.post(
    "",
    operation_id="users_create",
    summary="Create a user",
    status_code=201,
    response_model=User,
    responses={**problems(409), 201: {"headers": ETAG_HEADER}},
)
async def create_user(
    request: Request,
    body: UserCreate,
    access: UsersCreate,
    assign: UsersAssign,
    session: PolicySession,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A person who can log in. A taken e-mail (any case) is 409 `email_taken`; a password
    breaking the policy is 422 `weak_password` listing every violation; giving `roles`
    needs `users:assign`."""

    async def produce() -> Response:
        row = await service.create_user(session, get_policy(request), access, assign, body)
        return with_etag(row, 201, f"/v1/users/{row['id']}")

    return await idempotent(request, session, access.principal, idempotency_key, body, produce)


@router.get(
    "/{user_id}",
    operation_id="users_get",
    summary="Get a user",
    response_model=User,
    responses={**problems(404), 200: {"headers": ETAG_HEADER}},
)
async def get_user(user_id: uuid.UUID, access: UsersRead, conn: ReadConnection) -> Response:
    return with_etag(await service.get_user(conn, access, user_id))


@router.patch(
    "/{user_id}",
    operation_id="users_update",
    summary="Update a user",
    response_model=User,
    responses=problems(404, 409, 412, 428),
)
async def update_user(
    request: Request,
    user_id: uuid.UUID,
    body: UserUpdate,
    access: UsersUpdate,
    assign: UsersAssign,
    session: PolicySession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Change the fields sent; `roles` replaces the user's roles (needs `users:assign`). A
    new `manager_id` moves everyone reporting to the user along (a cycle is 409
    `invalid_manager`); a new `password` ends every existing session. Changing the
    `password`, `email`, `manager_id` or `org_unit_id` of a user holding more than you
    could give (judged where they stand and where the change puts them) is 403
    `grant_not_allowed` with `reason: target_outranks`."""
    row = await service.update_user(
        session,
        get_policy(request),
        access,
        assign,
        user_id,
        body,
        if_match,
        require_if_match=strict,
    )
    return with_etag(row)


@router.post(
    "/{user_id}/deactivate",
    operation_id="users_deactivate",
    summary="Deactivate a user",
    response_model=User,
    responses=problems(404, 409, 412),
)
async def deactivate_user(
    request: Request,
    user_id: uuid.UUID,
    access: UsersUpdate,
    session: PolicySession,
    if_match: IfMatch = None,
) -> Response:
    """The user can no longer log in, and every token already issued stops working at once.
    Their records stay theirs: hand them over with `POST /v1/customers/transfer`. A user
    holding more than you could give is not yours to switch off (403 `grant_not_allowed`,
    `reason: target_outranks`)."""
    return with_etag(
        await service.set_active(session, get_policy(request), access, user_id, False, if_match)
    )


@router.post(
    "/{user_id}/activate",
    operation_id="users_activate",
    summary="Reactivate a user",
    response_model=User,
    responses=problems(404, 409, 412),
)
async def activate_user(
    request: Request,
    user_id: uuid.UUID,
    access: UsersUpdate,
    session: PolicySession,
    if_match: IfMatch = None,
) -> Response:
    """Refused (403 `grant_not_allowed`, `reason: target_outranks`) for a user holding
    more than you could give."""
    return with_etag(
        await service.set_active(session, get_policy(request), access, user_id, True, if_match)
    )
