"""All SQL of API clients. Reads start from :func:`scoped`: a client belongs to the org unit
of its service account, so org-scoped grants on ``api_clients`` see their own units' clients.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Select, String, delete, func, literal, or_, select
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.api_client.schemas import ApiClientListQuery, ApiClientSort
from crm_api.authz.scope import scope_clause
from crm_api.authz.types import Access
from crm_api.kit.filtering import contains_pattern
from crm_api.kit.repository import Executor, fetch_page
from crm_api.models import ApiClient, AuthzRule, OrgUnit, Role, User


def subject(user_id: uuid.UUID) -> str:
    """The Casbin subject of the client whose service account is ``user_id``."""
    return f"client:{user_id}"


def _roles_column() -> ColumnElement[Any]:
    """The client's role names, sorted, as one array (one index probe per row)."""
    names = (
        select(AuthzRule.v1)
        .where(AuthzRule.ptype == "g", AuthzRule.v0 == literal("client:") + User.id.cast(String))
        .order_by(AuthzRule.v1)
        .scalar_subquery()
    )
    return func.array(names, type_=ARRAY(String)).label("roles")


COLUMNS: list[Any] = [
    ApiClient.id,
    ApiClient.client_id,
    ApiClient.name,
    ApiClient.user_id,
    User.org_unit_id,
    ApiClient.active,
    ApiClient.last_used_at,
    ApiClient.previous_secret_expires_at,
    ApiClient.created_at,
    ApiClient.updated_at,
    ApiClient.version,
]
SORT_COLUMNS: dict[str, Any] = {
    ApiClientSort.created_at: ApiClient.created_at,
    ApiClientSort.name: ApiClient.name,
}


def scope_of(access: Access) -> ColumnElement[bool]:
    # No owner: an ``own`` grant covers no client (fail closed).
    return scope_clause(access, None, User.org_unit_id.expression)


def scoped(access: Access) -> Select[Any]:
    return (
        select(*COLUMNS, _roles_column())
        .select_from(ApiClient)
        .join(User, User.id == ApiClient.user_id)
        .where(scope_of(access))
    )


async def list_page(
    executor: Executor, access: Access, query: ApiClientListQuery
) -> dict[str, Any]:
    stmt = scoped(access)
    if query.active is not None:
        stmt = stmt.where(ApiClient.active.is_(query.active))
    if query.q:
        pattern = contains_pattern(query.q)
        stmt = stmt.where(or_(ApiClient.name.ilike(pattern), ApiClient.client_id.ilike(pattern)))
    return await fetch_page(
        executor, stmt, SORT_COLUMNS, ApiClient.id.expression, query.page(ApiClientSort)
    )


async def get_row(
    executor: Executor, access: Access, client_id: uuid.UUID
) -> dict[str, Any] | None:
    stmt = scoped(access).where(ApiClient.id == client_id)
    row = (await executor.execute(stmt)).mappings().first()
    return dict(row) if row is not None else None


async def lock(
    session: AsyncSession, access: Access, client_id: uuid.UUID
) -> tuple[ApiClient, User] | None:
    """The client and its service account, both locked ``FOR UPDATE``, if ``access`` covers
    them."""
    stmt = (
        select(ApiClient, User)
        .join(User, User.id == ApiClient.user_id)
        .where(ApiClient.id == client_id, scope_of(access))
        .with_for_update()
    )
    row = (await session.execute(stmt)).first()
    return (row[0], row[1]) if row is not None else None


async def covers(session: AsyncSession, access: Access, org_unit_id: uuid.UUID | None) -> bool:
    """Whether ``access`` covers a client placed in ``org_unit_id`` (for creation, before
    the row exists)."""
    unit = literal(org_unit_id, PG_UUID(as_uuid=True))
    return bool((await session.execute(select(scope_clause(access, None, unit)))).scalar_one())


async def existing_roles(session: AsyncSession, names: Iterable[str]) -> set[str]:
    wanted = sorted(set(names))
    found = await session.execute(select(Role.name).where(Role.name.in_(wanted)))
    return set(found.scalars())


async def org_unit_active(session: AsyncSession, org_unit_id: uuid.UUID) -> bool:
    stmt = select(OrgUnit.id).where(OrgUnit.id == org_unit_id, OrgUnit.active.is_(True))
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def set_roles(session: AsyncSession, user_id: uuid.UUID, roles: Iterable[str]) -> None:
    """Replace the client's ``g`` rows with ``roles``."""
    sub = subject(user_id)
    await session.execute(delete(AuthzRule).where(AuthzRule.ptype == "g", AuthzRule.v0 == sub))
    session.add_all(
        AuthzRule(ptype="g", v0=sub, v1=role, v2="", v3="", v4="", v5="")
        for role in sorted(set(roles))
    )


async def roles_of(session: AsyncSession, user_id: uuid.UUID) -> list[str]:
    stmt = (
        select(AuthzRule.v1)
        .where(AuthzRule.ptype == "g", AuthzRule.v0 == subject(user_id))
        .order_by(AuthzRule.v1)
    )
    return list((await session.execute(stmt)).scalars())
