"""Handing owned records to another user (what happens when a rep leaves), for any table
that carries ``owner_id`` and ``org_unit_id``.

One statement moves the records and reports their previous owner and unit: a CTE locks the
rows the caller's scope covers (``FOR UPDATE``, so concurrent edits are re-checked) and the
``UPDATE … FROM`` rewrites owner, org unit, ``version`` and ``updated_at``. The audit trail
gets one event per record, written as one multi-row insert. Nothing is loaded into Python
but the ids that moved.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, Uuid, and_, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.scope import scope_clause
from crm_api.authz.types import Access
from crm_api.logs import request_id_var
from crm_api.models.audit_event import AuditEvent


def cast_table(model: Any) -> Table:
    """A mapped class's :class:`Table` (typed as such: ``__table__`` is a ``FromClause``)."""
    table: Table = model.__table__
    return table


@dataclass(frozen=True, slots=True)
class Owned:
    """Where a resource keeps its owner: the table and the names of its columns."""

    table: Table
    resource: str
    owner: str = "owner_id"
    org_unit: str = "org_unit_id"
    #: Soft-delete column; deleted records stay where they are. ``None``: no soft delete.
    deleted: str | None = "deleted_at"

    @classmethod
    def of(cls, model: Any, resource: str, **columns: Any) -> Owned:
        return cls(cast_table(model), resource, **columns)


@dataclass(frozen=True, slots=True)
class Moved:
    id: uuid.UUID
    owner_id: uuid.UUID
    org_unit_id: uuid.UUID | None


async def reassign(
    session: AsyncSession,
    access: Access,
    owned: Owned,
    *,
    to_owner: uuid.UUID,
    to_org_unit: uuid.UUID | None,
    from_owner: uuid.UUID | None = None,
    ids: Sequence[uuid.UUID] | None = None,
    extra: ColumnElement[bool] | None = None,
) -> list[Moved]:
    """Give the records ``access`` covers (of ``from_owner``, among ``ids``, matching
    ``extra`` — each when given) to ``to_owner`` and ``to_org_unit``. Records already owned
    by ``to_owner`` are left alone. Returns what moved, with the previous owner and unit."""
    t = owned.table
    owner, org_unit = t.c[owned.owner], t.c[owned.org_unit]
    conditions: list[ColumnElement[bool]] = [
        scope_clause(access, owner, org_unit),
        owner != to_owner,
    ]
    if owned.deleted is not None:
        conditions.append(t.c[owned.deleted].is_(None))
    if from_owner is not None:
        conditions.append(owner == from_owner)
    if ids is not None:
        conditions.append(t.c.id.in_(list(ids)))
    if extra is not None:
        conditions.append(extra)
    moving = (
        select(t.c.id, owner.label("old_owner"), org_unit.label("old_org_unit"))
        .where(and_(*conditions))
        .with_for_update()
        .cte("moving")
    )
    values: dict[str, Any] = {owned.owner: to_owner, owned.org_unit: to_org_unit}
    if "version" in t.c:
        values["version"] = t.c.version + 1
    if "updated_at" in t.c:
        values["updated_at"] = datetime.now(UTC)
    stmt = (
        update(t)
        .where(t.c.id == moving.c.id)
        .values(values)
        .returning(t.c.id, moving.c.old_owner, moving.c.old_org_unit)
    )
    rows = (await session.execute(stmt)).all()
    return [Moved(r[0], r[1], r[2]) for r in rows]


async def audit_moves(
    session: AsyncSession,
    access: Access,
    owned: Owned,
    moved: Sequence[Moved],
    *,
    to_owner: uuid.UUID,
    to_org_unit: uuid.UUID | None,
    action: str = "transfer",
) -> None:
    """One audit event per moved record, inserted in one statement."""
    if not moved:
        return
    principal, now, request_id = access.principal, datetime.now(UTC), request_id_var.get()
    rows = []
    for m in moved:
        changes: dict[str, Any] = {
            owned.owner: {"before": str(m.owner_id), "after": str(to_owner)}
        }
        if m.org_unit_id != to_org_unit:
            changes[owned.org_unit] = {
                "before": str(m.org_unit_id) if m.org_unit_id else None,
                "after": str(to_org_unit) if to_org_unit else None,
            }
        rows.append(
            {
                "id": uuid.uuid4(), "occurred_at": now, "actor_type": principal.kind.value,
                "actor_id": principal.id, "action": action, "resource_type": owned.resource,
                "resource_id": m.id, "owner_id": to_owner, "org_unit_id": to_org_unit,
                "changes": changes, "request_id": request_id,
            }
        )
    await session.execute(insert(cast_table(AuditEvent)), rows)


async def position_in_scope(
    session: AsyncSession,
    access: Access,
    owner_id: uuid.UUID | None,
    org_unit_id: uuid.UUID | None,
) -> bool:
    """Whether a record owned by ``owner_id`` in ``org_unit_id`` would be inside ``access``:
    the scope predicate evaluated on the values, so a write cannot put a record where the
    writer could not reach it."""
    clause = scope_clause(
        access, literal(owner_id, Uuid()), literal(org_unit_id, Uuid())
    )
    return bool((await session.execute(select(clause))).scalar())
