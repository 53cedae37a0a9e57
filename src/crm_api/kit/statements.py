"""The read path's statement cache: a list or a get builds its statement once per shape,
not once per request.

Building a list statement (scope predicate, filters, masking flag, keyset, ORDER BY) and
generating SQLAlchemy's cache key for it cost ~0.1 ms of Python per request, about as much
as running the query on asyncpg. Both are deterministic: the same inputs give the same
statement. So:

- :func:`memo` keeps a built statement under a key that holds *everything* it was built
  from. The scope predicate is a function of the :class:`~crm_api.authz.types.Access`
  (a frozen dataclass: caller, roles' scope, unit path, manager path, custom units,
  sensitive scope, compared by value) and of the resource; a list's filters a function
  of its query's values. A key holds the ``Access`` itself and the query's filter values,
  so nothing is shared between callers whose statements would differ: the scope logic
  stays in one place (``authz/scope.py``) and is not re-expressed here. A change of
  role, unit or grant yields a new ``Access`` and so a new key (stale entries age out).
- :func:`page` and :func:`by_id` add, once per *shape*, what varies per request as named
  bind parameters: the cursor's values and the limit
  (:func:`crm_api.kit.pagination.keyset_statement`; the shape is the sort plus which
  cursor values are NULL), or the record id. The values go to ``execute(stmt, values)``.

A statement object that is reused also keeps its SQLAlchemy cache key (memoized on the
object), so compiling is a dictionary lookup. The caches are per process and bounded
(LRU); they hold statements, never rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, bindparam

from crm_api.authz.types import Access
from crm_api.kit.pagination import PageParams, keyset_statement, page_shape

if TYPE_CHECKING:
    from crm_api.kit.resource import Resource

T = TypeVar("T")

#: Query fields that shape the page, not the filtered statement (see :func:`page`).
PAGE_FIELDS = frozenset({"limit", "cursor", "sort", "include_total"})


class LRU:
    """A bounded mapping, least recently used out first (no locks: one event loop)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> T:
        data = self._data
        try:
            value: T = data[key]
        except KeyError:
            self.misses += 1
            value = data[key] = build()
            if len(data) > self.size:
                data.popitem(last=False)
            return value
        self.hits += 1
        data.move_to_end(key)
        return value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


#: Scoped and filtered statements, by (what they were built from).
BASES = LRU(4096)
#: Page and get-by-id statements, by (the base statement, access, shape).
SHAPES = LRU(4096)
#: ``q`` statements (kit/search.py), by (what they select, the base statement, access, the
#: search's shape): kept apart so that searches with many shapes cannot push the plain
#: lists' statements out.
SEARCHES = LRU(4096)


def memo(key: Hashable, build: Callable[[], T]) -> T:
    """``build()``, or what it returned before for an equal ``key``. The key must hold
    everything ``build`` reads (for a scoped statement: the resource and the ``Access``)."""
    return BASES.get_or_build(key, build)


def _frozen(value: Any) -> Hashable:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    hashable: Hashable = value
    return hashable


def query_key(query: BaseModel) -> Hashable:
    """A list query's filter values (its type and every field but the page's own: limit,
    cursor, sort, include_total), for a :func:`memo` key."""
    return (
        type(query),
        tuple((k, _frozen(v)) for k, v in query.__dict__.items() if k not in PAGE_FIELDS),
    )


def list_base(resource: Resource, access: Access, query: BaseModel, build: Callable[[], T]) -> T:
    """The scoped, filtered statement of a list: ``build()`` once per (resource, access,
    filter values)."""
    return memo(("list", resource.name, access, query_key(query)), build)


class _Entry:
    """A statement derived from ``base``, kept with it: entries are keyed by the base's
    ``id()``, and a reused id after the base was dropped must not find this one."""

    __slots__ = ("base", "stmt")

    def __init__(self, base: Select[Any], stmt: Select[Any]) -> None:
        self.base = base
        self.stmt = stmt


def derived(
    key: tuple[Any, ...],
    base: Select[Any],
    build: Callable[[], Select[Any]],
    cache: LRU | None = None,
) -> Select[Any]:
    """``build()``, a statement derived from ``base``, once per ``key`` and ``base``
    (``base`` by identity: a cached scoped statement). ``key`` must hold everything else
    ``build`` reads (the ``Access``, the shape)."""
    lru = SHAPES if cache is None else cache
    full = (*key, id(base))
    entry: _Entry = lru.get_or_build(full, lambda: _Entry(base, build()))
    if entry.base is not base:  # an id reused by a new statement: rebuild
        entry = _Entry(base, build())
        lru._data[full] = entry
    return entry.stmt


def page(
    resource: Resource,
    access: Access,
    base: Select[Any],
    params: PageParams,
    flagged: Callable[[], Select[Any]],
) -> tuple[Select[Any], dict[str, Any]]:
    """The page statement of ``base`` (``flagged()``: ``base`` with its masking flag, as
    :func:`crm_api.kit.resource.fetch_page` selects it) for ``params``' shape, and the
    values of its parameters. A malformed cursor is a 400 (``invalid_cursor``)."""
    shape, values = page_shape(params, resource.sort_columns)
    stmt = derived(
        ("page", access, shape),
        base,
        lambda: keyset_statement(flagged(), resource.sort_columns, resource.id_column, shape),
    )
    return stmt, values


def by_id(
    resource: Resource, access: Access, base: Select[Any], flagged: Callable[[], Select[Any]]
) -> Select[Any]:
    """``flagged()`` narrowed to one record, whose id is the parameter ``record_id``."""
    return derived(
        ("get", access),
        base,
        lambda: flagged().where(
            resource.id_column == bindparam("record_id", type_=resource.id_column.type)
        ),
    )


def stats() -> Mapping[str, int]:
    """Hits and misses of both caches (for the benchmark's breakdown)."""
    return {
        "bases": len(BASES),
        "base_hits": BASES.hits,
        "base_misses": BASES.misses,
        "shapes": len(SHAPES),
        "shape_hits": SHAPES.hits,
        "shape_misses": SHAPES.misses,
        "searches": len(SEARCHES),
        "search_hits": SEARCHES.hits,
        "search_misses": SEARCHES.misses,
    }
