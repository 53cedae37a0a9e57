"""All SQL of users. Reads start from :func:`scoped`: a user is a record owned by itself
in its own org unit, so ``own`` means yourself and the org scopes go by the user's unit."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit.filtering import contains_pattern, one_of
from crm_api.kit.resource import Executor, ScopedSelect
from crm_api.kit.transfer import cast_table
from crm_api.models.authz_rule import AuthzRule
from crm_api.models.user import User
from crm_api.resources import USERS
from crm_api.user.schemas import UserListQuery, UserSort

R = USERS
T = cast_table(User)
#: Advisory lock serializing changes to the reporting lines (``manager_path``).
REPORTING_LOCK = 0x7265706F7274696E  # "reportin"
#: Advisory lock serializing what could leave no active administrator.
ADMINS_LOCK = 0x6C61737461646D69  # "lastadmi"


def subject_of_row() -> ColumnElement[str]:
    """The Casbin subject of the user row: ``client:<id>`` behind API clients, else
    ``user:<id>``."""
    return case((T.c.kind == "service", literal("client:")), else_=literal("user:")) + cast(
        T.c.id, String
    )


def subject(user_id: uuid.UUID, kind: str) -> str:
    return f"{'client' if kind == 'service' else 'user'}:{user_id}"


def _roles_column() -> ColumnElement[Any]:
    names = (
        select(AuthzRule.v1)
        .where(AuthzRule.ptype == "g", AuthzRule.v0 == subject_of_row())
        .order_by(AuthzRule.v1)
        .scalar_subquery()
    )
    return func.array(names).label("roles")


def scoped(access: Access) -> ScopedSelect:
    """Users ``access`` covers, with their roles (the public schema's ``roles``)."""
    return kit.with_columns(kit.scoped(R, access), _roles_column())


def filtered(access: Access, query: UserListQuery) -> ScopedSelect:
    clauses: list[ColumnElement[bool] | None] = [
        T.c.kind == query.kind.value,
        one_of(T.c.org_unit_id, query.org_unit_id),
        T.c.manager_id == query.manager_id if query.manager_id else None,
        T.c.active.is_(query.active) if query.active is not None else None,
    ]
    if query.q:
        pattern = contains_pattern(query.q)
        clauses.append(T.c.email.ilike(pattern) | T.c.display_name.ilike(pattern))
    if query.role:
        clauses.append(
            subject_of_row().in_(
                select(AuthzRule.v0).where(AuthzRule.ptype == "g", AuthzRule.v1 == query.role)
            )
        )
    return kit.narrow(scoped(access), *clauses)


async def list_page(executor: Executor, access: Access, query: UserListQuery) -> dict[str, Any]:
    return await kit.fetch_page(executor, R, access, filtered(access, query), query.page(UserSort))


async def lock_reporting_lines(session: AsyncSession) -> None:
    await session.execute(select(func.pg_advisory_xact_lock(REPORTING_LOCK)))


async def lock_admins(session: AsyncSession) -> None:
    await session.execute(select(func.pg_advisory_xact_lock(ADMINS_LOCK)))


async def other_active_admins(session: AsyncSession, user_id: uuid.UUID) -> int:
    """Active people other than ``user_id`` holding the ``admin`` role (API clients'
    service accounts do not count: they cannot sign in to repair anything)."""
    stmt = (
        select(func.count())
        .select_from(T)
        .where(
            T.c.kind == "person",
            T.c.active.is_(True),
            T.c.id != user_id,
            subject_of_row().in_(
                select(AuthzRule.v0).where(AuthzRule.ptype == "g", AuthzRule.v1 == "admin")
            ),
        )
    )
    return int((await session.execute(stmt)).scalar_one())


async def active_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    stmt = select(User).where(User.id == user_id, User.active.is_(True))
    return (await session.execute(stmt)).scalar_one_or_none()


async def find(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """Any user, active or not."""
    return (await session.execute(select(User).where(User.id == user_id))).scalar_one_or_none()


async def me_facts(executor: Executor, user_id: uuid.UUID) -> dict[str, Any] | None:
    """The caller's own e-mail, manager and kind (not a scoped read: it is themself)."""
    stmt = select(T.c.email, T.c.display_name, T.c.manager_id, T.c.kind).where(T.c.id == user_id)
    row = (await executor.execute(stmt)).mappings().first()
    return dict(row) if row is not None else None


async def active_user_for_share(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """An active user, locked ``FOR SHARE`` (a manager being referenced)."""
    stmt = (
        select(User)
        .where(User.id == user_id, User.active.is_(True))
        .with_for_update(read=True)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def email_taken(
    session: AsyncSession, email: str, exclude_id: uuid.UUID | None = None
) -> bool:
    stmt = select(T.c.id).where(func.lower(T.c.email) == email.lower())
    if exclude_id is not None:
        stmt = stmt.where(T.c.id != exclude_id)
    return (await session.execute(stmt.limit(1))).first() is not None


async def roles_of(session: AsyncSession, subject_name: str) -> list[str]:
    stmt = (
        select(AuthzRule.v1)
        .where(AuthzRule.ptype == "g", AuthzRule.v0 == subject_name)
        .order_by(AuthzRule.v1)
    )
    return list((await session.execute(stmt)).scalars())


async def replace_roles(session: AsyncSession, subject_name: str, roles: Iterable[str]) -> None:
    """The subject's ``g`` rows become exactly ``roles``."""
    await session.execute(
        delete(AuthzRule).where(AuthzRule.ptype == "g", AuthzRule.v0 == subject_name)
    )
    rows = [
        {
            "id": uuid.uuid4(),
            "ptype": "g",
            "v0": subject_name,
            "v1": role,
            "v2": "",
            "v3": "",
            "v4": "",
            "v5": "",
        }
        for role in sorted(set(roles))
    ]
    if rows:
        await session.execute(insert(cast_table(AuthzRule)), rows)


async def move_reports(
    session: AsyncSession, old_prefix: str, new_prefix: str, *, exclude_id: uuid.UUID
) -> int:
    """Rewrite ``manager_path`` of everyone reporting (directly or not) to the user whose
    path is ``old_prefix`` (``exclude_id``, whose own row its write sets), in one UPDATE.
    Returns how many rows moved."""
    stmt = (
        update(T)
        .where(T.c.manager_path.startswith(old_prefix, autoescape=True), T.c.id != exclude_id)
        .values(
            manager_path=literal(new_prefix) + func.substring(T.c.manager_path, len(old_prefix) + 1)
        )
    )
    result = await session.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]
