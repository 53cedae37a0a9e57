"""All SQL of org units. Reads start from :func:`scoped`: a unit is a record whose org unit
is itself, so ``org_unit``/``org_subtree``/``custom`` scopes apply directly and ``own``
covers none."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit.filtering import contains_pattern, one_of
from crm_api.kit.resource import Executor, ScopedSelect
from crm_api.kit.transfer import cast_table
from crm_api.models.org_unit import OrgUnit
from crm_api.models.user import User
from crm_api.org_unit.schemas import OrgUnitListQuery, OrgUnitSort
from crm_api.resources import ORG_UNITS

R = ORG_UNITS
#: Transaction-scoped advisory lock serializing changes to the tree's shape (create, move,
#: deactivate): a child inserted under a unit while that unit's subtree is being moved
#: would otherwise keep the old path prefix.
TREE_LOCK = 0x6F72675F74726565  # "org_tree"


def scoped(access: Access) -> ScopedSelect:
    return kit.scoped(R, access)


def filtered(access: Access, query: OrgUnitListQuery) -> ScopedSelect:
    clauses: list[ColumnElement[bool] | None] = [
        OrgUnit.parent_id == query.parent_id if query.parent_id else None,
        one_of(OrgUnit.__table__.c.kind, query.kind),
        OrgUnit.active.is_(query.active) if query.active is not None else None,
        OrgUnit.name.ilike(contains_pattern(query.q)) if query.q else None,
    ]
    if query.root is not None:
        is_root = OrgUnit.parent_id.is_(None)
        clauses.append(is_root if query.root else ~is_root)
    if query.within is not None:
        prefix = select(OrgUnit.path).where(OrgUnit.id == query.within).scalar_subquery()
        # LIKE prefix || '%' on the C-collated path index; ids hold no LIKE wildcards
        clauses.append(OrgUnit.path.like(prefix + literal("%")))
    return kit.narrow(scoped(access), *clauses)


async def list_page(executor: Executor, access: Access, query: OrgUnitListQuery) -> dict[str, Any]:
    return await kit.fetch_page(
        executor, R, access, filtered(access, query), query.page(OrgUnitSort)
    )


async def lock_tree(session: AsyncSession) -> None:
    await session.execute(select(func.pg_advisory_xact_lock(TREE_LOCK)))


async def find_in_scope(
    session: AsyncSession, access: Access, unit_id: uuid.UUID, *, share: bool = True
) -> OrgUnit | None:
    """A unit ``access`` covers, locked ``FOR SHARE`` so it cannot be moved or deactivated
    until the caller's transaction ends."""
    stmt = kit.narrow(kit.scoped_entity(R, access), R.id_column == unit_id)
    query = stmt.with_for_update(read=True) if share else stmt
    return (
        await session.execute(query.execution_options(populate_existing=True))
    ).scalar_one_or_none()


async def move_subtree(
    session: AsyncSession,
    unit_id: uuid.UUID,
    new_parent_id: uuid.UUID | None,
    old_prefix: str,
    new_prefix: str,
    depth_delta: int,
) -> int:
    """Rewrite ``path`` and ``depth`` of the unit and everything below it in one UPDATE:
    ``path = new_prefix || substring(path from len(old_prefix) + 1)``; the unit itself also
    gets its new parent. Every rewritten row's ``version`` moves (its path is part of what
    a GET returns). Returns the number of units rewritten, the unit included."""
    t = cast_table(OrgUnit)
    stmt = (
        update(t)
        .where(t.c.path.startswith(old_prefix, autoescape=True))
        .values(
            path=literal(new_prefix) + func.substring(t.c.path, len(old_prefix) + 1),
            depth=t.c.depth + depth_delta,
            parent_id=case(
                (t.c.id == unit_id, literal(new_parent_id, t.c.id.type)), else_=t.c.parent_id
            ),
            version=t.c.version + 1,
            updated_at=func.now(),
        )
    )
    result = await session.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def count_active_dependents(session: AsyncSession, unit_id: uuid.UUID) -> tuple[int, int]:
    """(active child units, active users) of a unit."""
    children = select(func.count()).where(OrgUnit.parent_id == unit_id, OrgUnit.active.is_(True))
    users = select(func.count()).where(User.org_unit_id == unit_id, User.active.is_(True))
    row = (await session.execute(select(children.scalar_subquery(), users.scalar_subquery()))).one()
    return int(row[0]), int(row[1])


async def existing_ids(session: AsyncSession, unit_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await session.execute(select(OrgUnit.id).where(OrgUnit.id.in_(unit_ids)))
    return set(rows.scalars())


async def active_for_share(session: AsyncSession, unit_id: uuid.UUID) -> OrgUnit | None:
    """An active unit, locked ``FOR SHARE``: it cannot be deactivated or moved until the
    caller's transaction ends."""
    stmt = (
        select(OrgUnit)
        .where(OrgUnit.id == unit_id, OrgUnit.active.is_(True))
        .with_for_update(read=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()
