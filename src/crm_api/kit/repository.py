"""Helpers every domain repository uses: column sets, row → dict, scoped lookups."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.elements import KeyedColumnElement

from crm_api.db.reader import Executor
from crm_api.kit.pagination import PageParams, SortColumn, apply_keyset, page_envelope

__all__ = ["Executor", "columns_of", "fetch_page", "to_dict"]


def columns_of(model: type[DeclarativeBase]) -> list[KeyedColumnElement[Any]]:
    return list(model.__table__.columns)


def to_dict(obj: Any, columns: Iterable[KeyedColumnElement[Any]]) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in columns}


async def fetch_page(
    executor: Executor,
    stmt: Select[Any],
    sort_columns: Mapping[str, SortColumn],
    id_column: SortColumn,
    params: PageParams,
) -> dict[str, Any]:
    """Run a scoped, filtered statement as one keyset page (plus an opt-in count)."""
    total = None
    if params.include_total:
        count_stmt = select(func.count()).select_from(stmt.order_by(None).subquery())
        total = (await executor.execute(count_stmt)).scalar_one()
    paged = apply_keyset(stmt, sort_columns, id_column, params)
    result = await executor.execute(paged)
    # Plain tuples zipped with the keys once: ~20% cheaper than a RowMapping per row.
    keys = tuple(result.keys())
    rows = [dict(zip(keys, row, strict=True)) for row in result.all()]
    return page_envelope(rows, params, total)
