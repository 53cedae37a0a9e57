"""``include_total``: a count that cannot hurt.

Counting every match of a list is a scan of all of them (at 1,000,000 customers, seconds
for a wide scope), so the count is exact only up to a cap (``CRM_LIST_COUNT_CAP``, default
10,000): the matches are counted through ``LIMIT cap + 1``, which stops after ``cap + 1``
rows. At or below the cap, ``total`` is exact and ``total_is_estimate`` false. Above it,
``total`` is the query planner's estimate of the matches (``EXPLAIN``, from the table's
statistics: no rows are read), never less than ``cap + 1``, and ``total_is_estimate`` is
true. The estimate can be far off for selective or correlated filters; it says "many",
not how many.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import ClauseElement, Executable, Select, func, literal_column, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

#: The default cap (``Settings.list_count_cap``).
DEFAULT_COUNT_CAP = 10_000


class Explain(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON) <statement>``: one row, the plan as JSON. Cached like any
    statement (its cache key is the statement's)."""

    __visit_name__ = "crm_explain"
    inherit_cache = True
    _traverse_internals = [("statement", InternalTraversal.dp_clauseelement)]

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement

    @property
    def _all_selected_columns(self) -> Any:
        # what SQLAlchemy matches a cached compiled form's result columns against (the
        # explained statement's: the compiler rendered it as the top-level SELECT)
        return self.statement._all_selected_columns


@compiles(Explain)
def _compile_explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


def capped_count(query: Select[Any], cap: int) -> Select[Any]:
    """How many rows ``query`` has, counting at most ``cap + 1``."""
    return select(func.count()).select_from(query.order_by(None).limit(cap + 1).subquery())


def estimate(query: Select[Any]) -> Explain:
    """The planner's estimate of how many rows ``query`` has (read it with
    :func:`estimated_rows`). One column, no type: every read path returns the JSON as is."""
    return Explain(select(literal_column("1")).select_from(query.order_by(None).subquery()))


def estimated_rows(plan: Any) -> int:
    """``Plan Rows`` of the top node of an ``EXPLAIN (FORMAT JSON)`` result (text, or
    already decoded by the driver)."""
    if isinstance(plan, str | bytes):
        plan = orjson.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


async def count_total(
    executor: Any, query: Select[Any], cap: int, values: Mapping[str, Any] | None = None
) -> tuple[int, bool]:
    """``(total, is_estimate)`` of ``query``'s rows: exact up to ``cap``, else the planner's
    estimate (at least ``cap + 1``). ``executor``: a Reader or an AsyncSession; ``values``:
    those of ``query``'s named parameters."""
    exact = int((await executor.execute(capped_count(query, cap), values)).scalar_one())
    if exact <= cap:
        return exact, False
    planned = estimated_rows((await executor.execute(estimate(query), values)).scalar_one())
    return max(planned, cap + 1), True
