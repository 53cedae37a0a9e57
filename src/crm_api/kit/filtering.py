"""Small builders for typed list filters; every resource composes its WHERE from these."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, Text, func, select

# the search column's separator (db/base.py), with the filters that match across it
from crm_api.db.base import FIELD_SEPARATOR as FIELD_SEPARATOR


def escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains_pattern(term: str) -> str:
    """An ILIKE pattern matching ``term`` anywhere. Substring matching (not word
    tokenizing) is what makes Chinese and other unsegmented scripts searchable."""
    return f"%{escape_like(term)}%"


def contains_lowered(column: ColumnElement[str], term: str) -> ColumnElement[bool]:
    """``column`` contains ``term`` in any letter case, for a ``column`` PostgreSQL stores
    lower()ed: ``column LIKE '%' || lower(term) || '%'``, wildcards in ``term`` literal.

    Folding the term in SQL, with the same ``lower()`` that built the column, means Python's
    and PostgreSQL's ideas of case (É/é, non-Latin scripts) can never disagree. It is what
    ILIKE does on a UTF-8 database (lower() both sides, then LIKE) minus the per-row
    lower(); LIKE on Chinese text is also 2-4x cheaper than ILIKE.

    The pattern is a scalar subquery, which PostgreSQL evaluates once per statement: in
    the generic plan of a prepared statement (after five runs) a bare ``'%' ||
    lower($1) || '%'`` was evaluated again for every row, doubling the cost of a scan."""
    pattern = select("%" + func.lower(escape_like(term), type_=Text) + "%").scalar_subquery()
    return column.like(pattern)


def one_of(
    column: SQLColumnExpression[Any], values: Sequence[object] | None
) -> ColumnElement[bool] | None:
    if not values:
        return None
    if len(values) == 1:
        return column == values[0]
    return column.in_(list(values))


def time_range(
    column: SQLColumnExpression[Any], after: datetime | None, before: datetime | None
) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if after is not None:
        clauses.append(column >= after)
    if before is not None:
        clauses.append(column < before)
    return clauses


def mask(value: str | None) -> str | None:
    """``****1234``: enough to recognise a value, not enough to use it."""
    if value is None:
        return None
    return "****" + value[-4:] if len(value) > 6 else "****"
