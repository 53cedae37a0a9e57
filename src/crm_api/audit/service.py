"""The audit trail: one event per mutation, written in the mutation's own transaction
(:func:`record`), and read back within the reader's data scope (:func:`list_events`,
:func:`get_event`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import CTE, Insert, Select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import repository as repo
from crm_api.audit.schemas import AuditEventListQuery
from crm_api.authz.types import Access, Principal
from crm_api.db.reader import Executor
from crm_api.errors import NotFound
from crm_api.logs import request_id_var
from crm_api.models.audit_event import AuditEvent

MASK = "***"


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def diff(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    sensitive: Iterable[str] = (),
    ignore: Iterable[str] = ("updated_at", "version"),
) -> dict[str, dict[str, Any]]:
    """Field-level ``{field: {"before": old, "after": new}}`` of what changed."""
    before = before or {}
    after = after or {}
    hidden, skipped = set(sensitive), set(ignore)
    changes: dict[str, dict[str, Any]] = {}
    for key in sorted(set(before) | set(after)):
        if key in skipped:
            continue
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key in hidden:
            old = MASK if old is not None else None
            new = MASK if new is not None else None
        changes[key] = {"before": _jsonable(old), "after": _jsonable(new)}
    return changes


def record(
    session: AsyncSession,
    principal: Principal,
    *,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID,
    changes: dict[str, Any],
    owner_id: uuid.UUID | None = None,
    org_unit_id: uuid.UUID | None = None,
) -> AuditEvent:
    """One event of a mutation, in the mutation's own transaction (written with the
    session's next flush): who (``principal``), what, to which record, and where that
    record is placed (its owner and unit, by which the trail is scoped)."""
    event = AuditEvent(
        **row(
            principal,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            changes=changes,
            owner_id=owner_id,
            org_unit_id=org_unit_id,
        )
    )
    session.add(event)
    return event


def row(
    principal: Principal,
    *,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID,
    changes: dict[str, Any],
    owner_id: uuid.UUID | None = None,
    org_unit_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """The values of one event (what :func:`record` adds), for a caller that writes it in
    a statement of its own making (the kit's create: one statement for the record and its
    event, see :func:`insert_with`)."""
    return {
        "id": uuid.uuid4(),
        "occurred_at": occurred_at or datetime.now(UTC),
        "actor_type": principal.kind.value,
        "actor_id": principal.id,
        "action": action,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "owner_id": owner_id,
        "org_unit_id": org_unit_id,
        "changes": changes,
        "request_id": request_id_var.get(),
    }


def insert_with(stmt: Insert, event: Mapping[str, Any], *, bind: bool = False) -> Insert:
    """``stmt`` carrying the audit ``event`` (:func:`row`) as a data-modifying CTE: the
    record and its event in one statement, one round trip; a constraint violation of the
    record writes neither. With ``bind``, the event's values are the named parameters
    ``a_<field>`` (:func:`bound` gives their values), so the statement can be reused."""
    return repo.with_event(stmt, event, bind=bind)


def insert_with_drawn(
    stmt: Insert, event: Mapping[str, Any], source: CTE, drawn: Sequence[str]
) -> Insert:
    """:func:`insert_with` (bound) for a record whose ``drawn`` columns the statement
    itself computes in the CTE ``source`` (an order's number): their ``after`` values
    join the event's changes from ``source``."""
    return repo.with_event_drawn(stmt, event, source, drawn)


def bound(event: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter values of an event written by ``insert_with(..., bind=True)``."""
    return {f"a_{k}": v for k, v in event.items()}


def insert_after(stmt: Insert, event: Mapping[str, Any]) -> Insert:
    """The audit ``event`` (:func:`row`) written by one statement with ``stmt`` and only
    if ``stmt`` inserted its row (it is selected from ``stmt``'s ``RETURNING``): for an
    ``INSERT … ON CONFLICT DO NOTHING``, a yielded insert writes no event. The statement
    returns the event's ``resource_id``, or no row."""
    return repo.event_after(stmt, event)


async def record_all(
    session: AsyncSession,
    principal: Principal,
    events: Sequence[Mapping[str, Any]],
) -> None:
    """:func:`record` for many records at once (a bulk transfer), as one multi-row insert:
    each event gives ``action``, ``resource_type``, ``resource_id``, ``changes``,
    ``owner_id`` and ``org_unit_id``; who, when and the request id are filled in here."""
    if not events:
        return
    now, request_id = datetime.now(UTC), request_id_var.get()
    rows = [
        {
            "id": uuid.uuid4(),
            "occurred_at": now,
            "actor_type": principal.kind.value,
            "actor_id": principal.id,
            "request_id": request_id,
            **event,
        }
        for event in events
    ]
    await repo.insert_events(session, rows)


#: The events' id column (to pin one event in :func:`scoped`).
ID_COLUMN = repo.a.id


def scoped(access: Access) -> Select[Any]:
    """The events ``access`` covers (what the access explainer counts)."""
    return repo.scoped(access)


async def list_events(
    executor: Executor, access: Access, query: AuditEventListQuery
) -> dict[str, Any]:
    return await repo.list_page(executor, access, query)


async def get_event(executor: Executor, access: Access, event_id: uuid.UUID) -> dict[str, Any]:
    """One event; 404 ``audit_event_not_found`` when missing or outside the scope."""
    row = await repo.get_row(executor, access, event_id)
    if row is None:
        raise NotFound(f"No audit event {event_id}.", code="audit_event_not_found")
    return row
