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
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Table, Uuid, and_, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import service as audit
from crm_api.authz.scope import scope_clause
from crm_api.authz.types import Access
from crm_api.errors import UnprocessableEntity


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
    """One audit event per moved record, through :func:`crm_api.audit.service.record_all`
    (one statement)."""
    events = []
    for m in moved:
        changes: dict[str, Any] = {owned.owner: {"before": str(m.owner_id), "after": str(to_owner)}}
        if m.org_unit_id != to_org_unit:
            changes[owned.org_unit] = {
                "before": str(m.org_unit_id) if m.org_unit_id else None,
                "after": str(to_org_unit) if to_org_unit else None,
            }
        events.append(
            {
                "action": action,
                "resource_type": owned.resource,
                "resource_id": m.id,
                "owner_id": to_owner,
                "org_unit_id": to_org_unit,
                "changes": changes,
            }
        )
    await audit.record_all(session, access.principal, events)


async def position_in_scope(
    session: AsyncSession,
    access: Access,
    owner_id: uuid.UUID | None,
    org_unit_id: uuid.UUID | None,
) -> bool:
    """Whether a record owned by ``owner_id`` in ``org_unit_id`` would be inside ``access``:
    the scope predicate evaluated on the values, so a write cannot put a record where the
    writer could not reach it."""
    clause = scope_clause(access, literal(owner_id, Uuid()), literal(org_unit_id, Uuid()))
    return bool((await session.execute(select(clause))).scalar())


class Assignee(Protocol):
    """A user records can be given to (a :class:`~crm_api.models.user.User`)."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def org_unit_id(self) -> uuid.UUID | None: ...


def invalid_owner(field: str = "owner_id") -> UnprocessableEntity:
    return UnprocessableEntity(
        f"{field} is not an active user within your assign scope.",
        code="invalid_owner",
        errors=[
            {
                "field": field,
                "code": "invalid_reference",
                "message": "no such active user in your scope",
            }
        ],
    )


def invalid_org_unit(field: str = "org_unit_id") -> UnprocessableEntity:
    return UnprocessableEntity(
        f"{field} is not an org unit within your assign scope.",
        code="invalid_org_unit",
        errors=[
            {
                "field": field,
                "code": "invalid_reference",
                "message": "no such org unit in your scope",
            }
        ],
    )


async def check_placement(
    session: AsyncSession,
    assign: Access,
    owner: Assignee | None,
    org_unit_id: uuid.UUID | None,
    *,
    check_owner: bool = True,
    owner_field: str = "owner_id",
    unit_field: str = "org_unit_id",
) -> None:
    """The rule for every write that sets a record's owner or org unit (create, update,
    transfer): a record may be given only to where the assigner could reach it.

    - the owner (``None``: not an active user) must be inside the ``assign`` scope — a
      record of theirs in their own unit would be covered by it; skipped with
      ``check_owner=False`` when the write keeps the current owner;
    - the org unit must be the owner's, or inside the scope by its unit terms alone
      (``org_unit``, ``org_subtree``, ``custom``, ``all``): an owner-based scope does not
      let the assigner put records into arbitrary units.

    One round trip. Raises 422 ``invalid_owner`` (``owner_field``) or ``invalid_org_unit``
    (``unit_field``): 422, not 403, so users and units outside the scope read like ones
    that do not exist."""
    if owner is None:
        raise invalid_owner(owner_field)
    unit_free = org_unit_id != owner.org_unit_id
    if not check_owner and not unit_free:
        return
    checks = [
        scope_clause(assign, literal(owner.id, Uuid()), literal(owner.org_unit_id, Uuid()))
        if check_owner
        else literal(True),
        scope_clause(assign, None, literal(org_unit_id, Uuid())) if unit_free else literal(True),
    ]
    row = (await session.execute(select(*checks))).one()
    owner_ok, unit_ok = row[0], row[1]
    if not owner_ok:
        raise invalid_owner(owner_field)
    if not unit_ok:
        raise invalid_org_unit(unit_field)
