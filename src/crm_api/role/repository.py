"""All SQL of roles and their grants (Casbin ``p`` rows in ``authz_rules``).

Roles are configuration, not records: they have no owner or org unit, so every scope a
caller holds on ``roles`` covers all of them. Reads still start from :func:`scoped`, which
fails closed for an access without any scope.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, false, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit.filtering import contains_pattern
from crm_api.kit.repository import fetch_page
from crm_api.kit.resource import Executor, ScopedSelect
from crm_api.kit.transfer import cast_table
from crm_api.models.authz_rule import AuthzRule
from crm_api.models.identity import Role
from crm_api.resources import ROLES
from crm_api.role.schemas import GrantListQuery, GrantSort, RoleListQuery, RoleSort

RESOURCE = ROLES
R = cast_table(Role)
A = cast_table(AuthzRule)
GRANT_COLUMNS = [
    A.c.id,
    A.c.v0.label("role"),
    A.c.v1.label("resource"),
    A.c.v2.label("action"),
    A.c.v3.label("scope"),
    A.c.v4.label("units"),
    A.c.created_at,
]
GRANT_SORT: dict[str, ColumnElement[Any]] = {
    GrantSort.created_at: A.c.created_at,
    GrantSort.resource: A.c.v1,
    GrantSort.action: A.c.v2,
}


def scoped(access: Access) -> ScopedSelect:
    """Every role (reference data), or none for an access without any scope: fail
    closed."""
    return kit.narrow(kit.scoped(RESOURCE, access), None if access.scope.kinds else false())


async def list_page(executor: Executor, access: Access, query: RoleListQuery) -> dict[str, Any]:
    clauses: list[ColumnElement[bool] | None] = [
        R.c.builtin.is_(query.builtin) if query.builtin is not None else None,
    ]
    if query.q:
        pattern = contains_pattern(query.q)
        clauses.append(or_(R.c.name.ilike(pattern), R.c.description.ilike(pattern)))
    stmt = kit.narrow(scoped(access), *clauses)
    return await kit.fetch_page(executor, RESOURCE, access, stmt, query.page(RoleSort))


async def name_exists(session: AsyncSession, name: str) -> bool:
    return (await session.execute(select(R.c.id).where(R.c.name == name))).first() is not None


async def existing_names(session: AsyncSession, names: Iterable[str]) -> set[str]:
    wanted = sorted(set(names))
    if not wanted:
        return set()
    stmt = select(R.c.name).where(R.c.name.in_(wanted)).with_for_update(read=True)
    rows = await session.execute(stmt)
    return set(rows.scalars())


async def holders(session: AsyncSession, name: str) -> int:
    """How many subjects (users, API clients) hold the role."""
    stmt = select(func.count()).where(A.c.ptype == "g", A.c.v1 == name)
    return int((await session.execute(stmt)).scalar_one())


async def delete_policy_rows(session: AsyncSession, name: str) -> int:
    stmt = delete(AuthzRule).where(AuthzRule.ptype == "p", AuthzRule.v0 == name)
    result = await session.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- grants ------------------------------------------------------------------------------
def grants_of(role_name: str) -> Select[Any]:
    return select(*GRANT_COLUMNS).where(A.c.ptype == "p", A.c.v0 == role_name)


async def grants_page(executor: Executor, role_name: str, query: GrantListQuery) -> dict[str, Any]:
    stmt = grants_of(role_name)
    if query.resource:
        stmt = stmt.where(A.c.v1 == query.resource)
    return await fetch_page(executor, stmt, GRANT_SORT, A.c.id, query.page(GrantSort))


async def all_grants(executor: Executor, role_name: str) -> list[dict[str, Any]]:
    rows = await executor.execute(grants_of(role_name).order_by(A.c.created_at, A.c.id))
    return [dict(r) for r in rows.mappings()]


async def get_grant(
    session: AsyncSession, role_name: str, grant_id: uuid.UUID
) -> dict[str, Any] | None:
    stmt = grants_of(role_name).where(A.c.id == grant_id).with_for_update()
    row = (await session.execute(stmt)).mappings().first()
    return dict(row) if row is not None else None


async def insert_grant(
    session: AsyncSession, role_name: str, resource: str, action: str, scope: str, units: str
) -> dict[str, Any] | None:
    """The new ``p`` row, or ``None`` when the role already holds that grant."""
    stmt = (
        insert(A)
        .values(
            id=uuid.uuid4(),
            ptype="p",
            v0=role_name,
            v1=resource,
            v2=action,
            v3=scope,
            v4=units,
            v5="",
        )
        .on_conflict_do_nothing()
        .returning(*GRANT_COLUMNS)
    )
    row = (await session.execute(stmt)).mappings().first()
    return dict(row) if row is not None else None


async def delete_grant(session: AsyncSession, grant_id: uuid.UUID) -> None:
    await session.execute(
        delete(AuthzRule).where(and_(AuthzRule.ptype == "p", AuthzRule.id == grant_id))
    )
