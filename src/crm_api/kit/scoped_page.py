"""Org-scoped pages as a merge of per-unit index walks.

A branch manager's scope is "customers whose org unit is one of my subtree's units": a few
units holding a small share of the rows, spread evenly over time. The plain page walks the
whole table in page order (``ix_customers_stage_created`` newest first) and drops every
row outside the subtree: at 1,000,000 customers it read ~18 rows per row it returned.

Here the page is built as

.. code-block:: sql

    SELECT <columns> FROM customers
    JOIN (SELECT per_unit.created_at, per_unit.id
          FROM unnest(<the scope's units>) AS u(unit)
          JOIN LATERAL (SELECT created_at, id FROM customers
                        WHERE <the whole scoped, filtered statement> AND org_unit_id = u.unit
                          AND <after the cursor>
                        ORDER BY created_at DESC, id DESC LIMIT n+1) AS per_unit ON true
          ORDER BY created_at DESC, id DESC LIMIT n+1) AS page_ids ON customers.id = page_ids.id
    WHERE <the whole scoped, filtered statement>
    ORDER BY created_at DESC, id DESC LIMIT n+1

Each unit contributes its first n+1 rows in page order from an index led by the unit
column ((org_unit_id, created_at, id), …; index-only when the filters are in the index),
the merge keeps the first n+1 of those, and only they are read from the table. The page is
the same as the plain one, by construction:

* nothing outside the statement can appear: the outer query *is* the scoped, filtered
  statement, narrowed to the merged ids, and the per-unit queries are that statement
  narrowed further (the scope predicate stays in both);
* nothing is missed: the scope is exactly "unit ∈ units" (:func:`crm_api.authz.scope.unit_set`
  says when), the units are computed by the statement itself (never from a cache), and the
  first n+1 rows of a union are among the first n+1 of each part.

When it pays: the merge reads ``units x (n+1)`` index entries plus ``n+1`` rows, the plain
walk ``(n+1) / share`` rows. Taking a subtree's share of rows as its share of units, the
merge wins while ``units / 4 + 1 < total / units`` (an index entry read index-only costs
about a quarter of a row): a branch (6 of 125 units) merges, a company (31 of 125) or the
whole tree walks plainly. The unit counts come with the principal (cached, refreshed when
the tree changes); a stale count can only pick the slower of two equal answers.

A resource takes part when its rows carry their own org unit (``OwnerScoped`` or
``UnitScoped`` with a unit column other than ``id``) and an index starts with the unit
column followed by the page's first sort key (read from the model's indexes, so declaring
the index is what turns the walk on). Contacts take their scope from their customer and
carry no unit of their own: they keep the plain page (docs/benchmarks.md measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Integer, Select, bindparam, func, literal_column, select, true
from sqlalchemy.sql.selectable import TableValuedAlias

from crm_api.authz.scope import UnitSet, unit_set
from crm_api.authz.types import Access
from crm_api.kit.pagination import (
    PageParams,
    PageShape,
    SortColumn,
    SortKey,
    keyset_statement,
    page_shape,
    sort_order,
)

if TYPE_CHECKING:
    from crm_api.kit.resource import Resource, ScopedSelect

#: Execution option marking a statement of the trash (soft-deleted rows), set by the kit.
TRASH_OPTION = "crm_trash"
#: Execution option asking for the plain keyset page: set by kit/search.py on a relevance
#: rank's statement. A collected rank (``id = ANY(<matches>)``) is a primary-key lookup and
#: a sort, which a per-unit walk would turn into a read of every unit's whole index; a
#: walked rank's LIKE hides its share from the planner, which then reads each unit's rows
#: whole through a bitmap and sorts them (a manager's frequent term at 1M: 299 ms cold,
#: against ~4 ms for the plain walk of the sort index).
PLAIN_OPTION = "crm_plain_page"


def worth_merging(units: UnitSet) -> bool:
    """The rule above: ``units / 4 + 1 < total / units``, in integers."""
    n = units.units
    return n >= 2 and n * (n + 4) < 4 * units.total


def merges(
    resource: Resource, access: Access, stmt: ScopedSelect, sort: tuple[SortKey, ...]
) -> UnitSet | None:
    """The caller's units when a page of ``stmt`` sorted by ``sort`` is a merge of
    per-unit walks, else ``None`` (the plain keyset page is the right one)."""
    if sort[0].name not in resource.unit_sorts:
        return None
    options = stmt.get_execution_options()
    if options.get(TRASH_OPTION):
        return None  # the trash: the per-unit indexes hold live rows only
    if options.get(PLAIN_OPTION):
        return None
    units = unit_set(access)
    if units is None or not worth_merging(units):
        return None
    return units


def merged_page(
    resource: Resource,
    access: Access,
    stmt: ScopedSelect,
    flag: ColumnElement[Any] | None,
    params: PageParams,
) -> Select[Any] | None:
    """The page of ``stmt`` (its rows read with the masking ``flag``) as a merge of
    per-unit walks, its values bound, or ``None`` where the plain keyset page is the right
    one. (The read path runs :func:`merged_statement`, cached per shape, with the values
    as parameters.)"""
    units = merges(resource, access, stmt, params.sort)
    if units is None:
        return None
    shape, values = page_shape(params, resource.sort_columns)
    return merged_statement(resource, stmt, flag, units, shape).params(values)


def merged_statement(
    resource: Resource,
    stmt: ScopedSelect,
    flag: ColumnElement[Any] | None,
    units: UnitSet,
    shape: PageShape,
) -> Select[Any]:
    """The merge for every page of one :data:`~crm_api.kit.pagination.PageShape`: the
    cursor's values and the limit are the parameters
    :func:`~crm_api.kit.pagination.page_shape` gives values to (``page_after_<i>``,
    ``page_limit``), as for the plain page."""
    sort = shape[0]
    unit, in_unit = _units_from(resource, units.ids)
    keys = _keys(resource, sort)
    id_col = resource.id_column
    per_unit = keyset_statement(
        stmt.with_only_columns(*keys.table, id_col).where(in_unit),
        resource.sort_columns,
        id_col,
        shape,
    ).lateral(_PER_UNIT)
    size = bindparam("page_limit", type_=Integer())
    page_ids = (
        select(keys.merged_id, *keys.merged.values())
        .select_from(unit.join(per_unit, true()))
        .order_by(*keys.merged_order)
        .limit(size)
        .subquery(_PAGE_IDS)
    )
    # The rows of the merged ids: the WHERE is not repeated (each id comes from ``stmt``
    # itself, narrowed), which halves what SQLAlchemy hashes to find the compiled form.
    rows = resource.projection if flag is None else resource.projection.add_columns(flag)
    # columns ``stmt`` selects besides the resource's (a search tier's rank: kit/search.py)
    known = {id(c) for c in resource.columns}
    extra = [c for c in stmt.selected_columns if id(c) not in known]
    if extra:
        rows = rows.add_columns(*extra)
    return rows.join_from(resource.table, page_ids, keys.on).order_by(*keys.order).limit(size)


_PER_UNIT, _PAGE_IDS = "per_unit", "page_ids"


@dataclass(frozen=True, slots=True)
class _Keys:
    """The columns of one sort spec, built once: SQLAlchemy spends ~0.1 ms per request
    building the column collections of a lateral and a subquery, so the merge names their
    columns directly (they are the sort keys and ``id``, plain identifiers)."""

    table: tuple[SortColumn, ...]
    merged: dict[str, SortColumn]
    merged_id: ColumnElement[Any]
    on: ColumnElement[bool]
    #: The page's ORDER BY over the merged columns and over the table's (as the plain
    #: page orders, :func:`crm_api.kit.pagination.sort_order`).
    merged_order: list[ColumnElement[Any]]
    order: list[ColumnElement[Any]]


@lru_cache(maxsize=256)
def _keys(resource: Resource, sort: tuple[SortKey, ...]) -> _Keys:
    table = tuple(resource.sort_columns[k.name] for k in sort)
    id_type = resource.id_column.type
    merged: dict[str, SortColumn] = {
        k.name: literal_column(f"{_PER_UNIT}.{k.name}", type_=col.type)
        for k, col in zip(sort, table, strict=True)
    }
    merged_id = literal_column(f"{_PER_UNIT}.id", type_=id_type)
    return _Keys(
        table=table,
        merged=merged,
        merged_id=merged_id,
        on=resource.id_column == literal_column(f"{_PAGE_IDS}.id", type_=id_type),
        merged_order=sort_order(merged, merged_id, sort),
        order=sort_order(resource.sort_columns, resource.id_column, sort),
    )


@lru_cache(maxsize=4096)
def _units_from(
    resource: Resource, ids: ColumnElement[Any]
) -> tuple[TableValuedAlias, ColumnElement[bool]]:
    """``unnest(<ids>) AS u(unit)`` and "the row is in that unit", once per unit set (the
    set's expression is itself built once per principal path)."""
    unit = func.unnest(ids).table_valued("unit").render_derived(name="u")
    assert resource.unit_column is not None  # unit_sorts is empty without one
    return unit, resource.unit_column == unit.c.unit
