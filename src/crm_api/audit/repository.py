"""All SQL of the audit log. Every read starts from :func:`scoped`; the writes are the
events :mod:`crm_api.audit.service` makes.

Events carry the affected record's owner and org unit as of the change, so the same scope
function that filters records filters their history. Events of records without an owner
(roles, policy) are visible only to an ``all`` scope.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Insert,
    Select,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit.schemas import AuditEventListQuery, AuditEventSort
from crm_api.authz.scope import scope_clause
from crm_api.authz.types import Access
from crm_api.kit.filtering import one_of, time_range
from crm_api.kit.repository import Executor, columns_of, fetch_page
from crm_api.models.audit_event import AuditEvent

COLUMNS = columns_of(AuditEvent)
#: Table columns (typed ``ColumnElement``, which the kit and authz helpers take).
a = AuditEvent.__table__.c
SORT_COLUMNS: dict[str, ColumnElement[Any]] = {AuditEventSort.occurred_at: a.occurred_at}


def scoped(access: Access) -> Select[Any]:
    """Events ``access`` covers."""
    return select(*COLUMNS).where(scope_clause(access, a.owner_id, a.org_unit_id))


def filtered(access: Access, query: AuditEventListQuery) -> Select[Any]:
    stmt = scoped(access)
    clauses: list[ColumnElement[bool] | None] = [
        one_of(a.resource_type, query.resource_type),
        a.resource_id == query.resource_id if query.resource_id else None,
        a.actor_id == query.actor_id if query.actor_id else None,
        one_of(a.action, query.action),
        *time_range(a.occurred_at, query.occurred_after, query.occurred_before),
    ]
    present = [c for c in clauses if c is not None]
    return stmt.where(and_(*present)) if present else stmt


async def list_page(
    executor: Executor, access: Access, query: AuditEventListQuery
) -> dict[str, Any]:
    return await fetch_page(
        executor,
        filtered(access, query),
        SORT_COLUMNS,
        a.id,
        query.page(AuditEventSort),
    )


async def get_row(executor: Executor, access: Access, event_id: uuid.UUID) -> dict[str, Any] | None:
    row = (await executor.execute(scoped(access).where(a.id == event_id))).mappings().first()
    return dict(row) if row is not None else None


# --- writing ---------------------------------------------------------------------------------
def _table() -> Table:
    table: Table = AuditEvent.__table__  # type: ignore[assignment]
    return table


def with_event(stmt: Insert, event: Mapping[str, Any], *, bind: bool = False) -> Insert:
    """``stmt`` carrying one event's values as a data-modifying CTE (one statement); with
    ``bind``, as the named parameters ``a_<field>`` instead (a statement to reuse)."""
    table = _table()
    if bind:
        values: Mapping[str, Any] = {k: bindparam(f"a_{k}", type_=table.c[k].type) for k in event}
    else:
        values = event
    return stmt.add_cte(insert(table).values(values).cte("audit_event"))


def with_event_drawn(
    stmt: Insert, event: Mapping[str, Any], source: CTE, drawn: Sequence[str]
) -> Insert:
    """:func:`with_event` (bound) selecting from ``source``, whose ``drawn`` columns are
    added to the changes as ``{"before": null, "after": <value>}``."""
    table = _table()
    values: list[Any] = []
    for k in event:
        value: Any = bindparam(f"a_{k}", type_=table.c[k].type)
        if k == "changes" and drawn:
            pairs: list[Any] = []
            for name in drawn:
                pairs += [
                    literal_column(f"'{name}'"),
                    func.jsonb_build_object(
                        literal_column("'before'"),
                        null(),
                        literal_column("'after'"),
                        source.c[name],
                        type_=JSONB,
                    ),
                ]
            value = value.op("||", return_type=JSONB)(func.jsonb_build_object(*pairs, type_=JSONB))
        values.append(value)
    event_insert = insert(table).from_select(list(event), select(*values).select_from(source))
    return stmt.add_cte(event_insert.cte("audit_event"))


def event_after(stmt: Insert, event: Mapping[str, Any]) -> Insert:
    """One event's insert selected from ``stmt``'s ``RETURNING`` (``stmt`` as a CTE): the
    event exists exactly when ``stmt`` inserted a row (an ``ON CONFLICT DO NOTHING`` that
    yielded writes neither). Returns the event's ``resource_id``."""
    table = _table()
    created = stmt.cte("created")
    fields = select(*(literal(v, table.c[k].type) for k, v in event.items()))
    return (
        insert(table)
        .from_select(list(event), fields.select_from(created))
        .returning(table.c.resource_id)
    )


async def insert_events(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Events as one multi-row insert."""
    await session.execute(insert(_table()), list(rows))
