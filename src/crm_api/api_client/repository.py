"""All SQL of API clients. Reads start from the kit's scoped statement
(:data:`~crm_api.resources.API_CLIENTS`): a client is owned by whoever created it and
placed in its service account's org unit, so grants on ``api_clients`` reach it by the
common scope predicate."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, String, cast, delete, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.api_client.schemas import ApiClientListQuery, ApiClientSort
from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit.filtering import contains_pattern
from crm_api.kit.resource import Executor, ScopedSelect
from crm_api.kit.transfer import cast_table
from crm_api.models import ApiClient, AuthzRule, OrgUnit, Role, User
from crm_api.resources import API_CLIENTS

R = API_CLIENTS
T = cast_table(ApiClient)


def subject(user_id: uuid.UUID) -> str:
    """The Casbin subject of the client whose service account is ``user_id``."""
    return f"client:{user_id}"


def _roles_column() -> ColumnElement[Any]:
    """The client's role names, sorted, as one array (one index probe per row)."""
    names = (
        select(AuthzRule.v1)
        .where(
            AuthzRule.ptype == "g", AuthzRule.v0 == literal("client:") + cast(T.c.user_id, String)
        )
        .order_by(AuthzRule.v1)
        .scalar_subquery()
    )
    return func.array(names, type_=ARRAY(String)).label("roles")


def scoped(access: Access) -> ScopedSelect:
    """Clients ``access`` covers, with their roles (the public schema's ``roles``)."""
    return kit.with_columns(kit.scoped(R, access), _roles_column())


async def list_page(
    executor: Executor, access: Access, query: ApiClientListQuery
) -> dict[str, Any]:
    clauses: list[ColumnElement[bool] | None] = [
        T.c.active.is_(query.active) if query.active is not None else None,
    ]
    if query.q:
        pattern = contains_pattern(query.q)
        clauses.append(or_(T.c.name.ilike(pattern), T.c.client_id.ilike(pattern)))
    stmt = kit.narrow(scoped(access), *clauses)
    return await kit.fetch_page(executor, R, access, stmt, query.page(ApiClientSort))


async def add_service_account(session: AsyncSession, account: User) -> None:
    """Store the client's service account (before the client row, which references it)."""
    session.add(account)
    await session.flush()


async def service_account(session: AsyncSession, user_id: uuid.UUID) -> User:
    """The client's service account, locked ``FOR UPDATE`` (after the client row: one
    order everywhere)."""
    stmt = (
        select(User)
        .where(User.id == user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one()


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
