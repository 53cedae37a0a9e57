"""``q``: substring search served by an n-gram GIN index in core PostgreSQL, with the
strategy chosen per request and relevance order.

**Semantics** (unchanged from the LIKE over the generated search columns, migration 0003):
the term, lower()ed by PostgreSQL, anywhere in one field of the declared search column (the
fields lower()ed and joined by U+001F, the name first), or in the name of a live related
row (a customer's contacts); ``%``, ``_`` and ``\\`` literal; any script, no word splitting;
1- and 2-character terms included. A term holding U+001F is matched field by field
(:func:`_fieldwise`), newest first.

**Index** (migration 0008): ``crm_search_grams(search_text)``, a GIN expression index over
live rows of the 1- and 2-character grams of the column, tagged by position: ``chr(2)`` +
the name's first character and first pair (the name starts with them), the name's later
characters and pairs untagged, its last character + ``chr(4)``, the other fields' grams
behind ``chr(3)``. A term's grams (``crm_search_query``) therefore select candidates for
"the name starts with it" (:func:`_prefix`), "it occurs in the name after the first
character" (:func:`_inner`), "the name is it" (:func:`_exact`) and "it is in another field"
(:func:`_other`). Every candidate is re-checked with the LIKE, so the index never changes
a result, only how fast it is found.

**Strategy** (:func:`_estimate`): each part of a search (the row's name, its other fields,
related names; each relevance tier) is estimated from the index's own statistics
(``pg_stats.most_common_elems`` of the expression, cached per process for
:data:`STATS_TTL` seconds; no round trip per request): the rarest of its grams bounds the
rows it can match. Up to :data:`COLLECT_MAX` candidates the part is **collected** from the
index (``id = ANY(<array of matching ids>)``: a GIN bitmap scan, then the page sorted from
the matches); above it the part is matched while **walking** the page's sort order (the
LIKE as a filter on an index scan of the sort key, which stops at the end of the page: a
term on 40 % of rows needs ~130 rows for a page of 50). Either way the caller's scope and
filters are in the same statement (SQL predicates, never Python).

**Relevance** (:func:`page`): with ``q`` and no explicit ``sort``, rows come best first:
the name equal to the term (rank 0), the name starting with it (1), the name containing it
(2), only another field or a related name containing it (3); within a rank newest first
(``created_at`` descending, then ``id``). The cursor carries ``(rank, created_at, id)``.
When every part is collected, one statement ranks all matches; otherwise the ranks are
read one after the other (each rank a statement with its own strategy) until the page is
full. An explicit ``sort`` wins: the matches in that order.

**Referenced rows** (:class:`Referenced`, an order by its customer's name): found through
the referenced resource's own index, live and inside the caller's scope on it only. The
part is collected when the rows referencing them are few, hashed (the referenced ids as a
set each walked row is checked against) when only the referenced rows are, and probed by
primary key per walked row otherwise.

**Statements** are built once per shape, not per request (kit/statements.py): the key is
everything a statement is built from (the caller's whole ``Access``, the resource, the
scoped and filtered base statement, what it selects, each part's strategy, the relevance
tier, plain or cased term and, for a cased term, which of its grams are looked up), and
the term reaches it as named parameters: ``q_term``, its patterns ``q_lowered``,
``q_contains``, ``q_prefix`` and, for a plain term, one ``text[]`` of grams per part and
kind (:class:`Plan`). Building and cache-keying them per request cost 1-3 ms of Python
(a rare term at 1M: 1.59 ms per request in-process, 0.63 ms cached, the plain list 0.58;
docs/benchmarks.md, "Search statements cached").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.sql import FromClause

from crm_api.authz.scope import unit_set
from crm_api.authz.types import ScopeKind
from crm_api.errors import BadRequest
from crm_api.kit import statements
from crm_api.kit.counting import count_total
from crm_api.kit.filtering import FIELD_SEPARATOR, contains_pattern, escape_like
from crm_api.kit.pagination import (
    PageParams,
    SortColumn,
    SortKey,
    decode_cursor,
    encode_cursor,
    keyset_statement,
    page_envelope,
    page_shape,
)

if TYPE_CHECKING:
    from crm_api.authz.types import Access
    from crm_api.kit.resource import Executor, Resource, ScopedSelect

Strategy = Literal["walk", "collect"]

#: Up to this many candidate rows (an upper bound from the index statistics) a part is
#: collected from the n-gram index; above it, matched while walking the sort order.
#: Measured at 1,000,000 customers (docs/benchmarks.md): collecting costs ~30 us per
#: match (the candidate re-checked, fetched by id, ranked, sorted), walking ~4 us per row
#: read, and a walk reads ~50 / share rows for a page: even at ~3,000 matches (0.3 %).
COLLECT_MAX = 3_000
#: The same for a caller whose scope is not ``all``: the collecting statement carries the
#: scope, which PostgreSQL combines with the n-gram index (BitmapAnd), while a walk of the
#: sort order reads every other caller's rows too.
COLLECT_MAX_SCOPED = 30_000
#: The same for a caller who sees only their own records: a walk of their own rows in the
#: sort order (the owner's index) reads at most their book of customers, so collecting
#: only pays for parts rarer than about that.
COLLECT_MAX_OWN = 2_000
#: Rows of the caller's statement a part whose frequency the statistics cannot tell is
#: sampled on (:meth:`Plan.decide`): a part on ~1 % of rows finds ~10 of them, and is
#: collected (projected to <= 3,000 of 1,000,000) in ~1 % of such samples.
SAMPLE = 1_000
#: Seconds the index statistics are kept per process (they change with ANALYZE only).
STATS_TTL = 300.0

START, OTHER, END = "\x02", "\x03", "\x04"
RANK = "_rank"
#: The sort a relevance cursor is issued for (rank ascending, newest first, then id).
RELEVANCE_SORT = (SortKey(RANK, False), SortKey("created_at", True))
_RECENCY = (SortKey("created_at", True),)
_TEXTS = ARRAY(Text)

#: The index expression's function, as migration 0008 created it (the migration holds a
#: frozen copy; tests/test_search_index.py checks the two agree).
GRAMS_FUNCTION = "crm_search_grams"


@dataclass(frozen=True, slots=True)
class Related:
    """Rows of another table whose name makes a row match (a customer by the names of its
    live contacts). ``table`` carries the same ``search_text`` and n-gram index."""

    table: FromClause
    #: The column of ``table`` holding the id of the row it makes match.
    foreign_key: str
    #: The GIN index over ``crm_search_grams(search_text)`` of ``table``'s live rows.
    index: str
    #: ``table``'s lower()ed name column (what the LIKE re-checks).
    name: str = "search_name"


@dataclass(frozen=True, slots=True)
class Referenced:
    """The row this row references makes it match when that row's name holds the term (an
    order by the name of its customer): the reverse of :class:`Related`. ``resource``
    declares its own :class:`Search`, whose n-gram index finds the referenced rows.

    Only a referenced row the caller could read counts: live, and inside the caller's scope
    on ``resource`` (``page(referenced={resource.name: access})``; no access given: the
    part matches nothing). A search must not tell a caller the name of a row it may not
    read, as it would if ``q=<guess>`` found an order by a customer it cannot see."""

    resource: Resource
    #: The column of this resource's table holding the referenced row's id.
    foreign_key: str

    @property
    def spec(self) -> Search:
        return _spec(self.resource)


@dataclass(frozen=True, slots=True)
class Search:
    """How a resource is searched by ``q``: its generated, lower()ed search column (the
    fields joined by U+001F, the name first), the GIN index over its grams, the name column
    relevance ranks on, and related rows whose names match too."""

    #: The GIN index over ``crm_search_grams(<text>)`` of the live rows.
    index: str
    #: The fields, in the order the search column joins them (a term holding U+001F is
    #: matched on each with ILIKE).
    fields: tuple[str, ...]
    text: str = "search_text"
    #: The name column (ranked on); ``name_lowered``: it holds ``lower(name)`` already.
    name: str = "name"
    name_lowered: bool = False
    related: tuple[Related, ...] = ()
    #: Rows this row references whose name makes it match (an order's customer).
    referenced: tuple[Referenced, ...] = ()
    #: The index also holds each live row's org unit and owner as tokens:
    #: ``crm_search_grams(<text>) || ARRAY[chr(5) || org_unit_id::text, chr(6) ||
    #: owner_id::text]`` (customers: migration 0012_sperf). A caller whose scope is a set
    #: of org units, or their own rows, then gets only in-scope candidates from one GIN
    #: scan (``&& <the scope's tokens>``); the scope predicate is applied as always.
    scope_tokens: bool = False


# --- index statistics ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IndexStats:
    """What ANALYZE recorded of an n-gram index: the share of rows holding each of its most
    common grams, the bound for any other gram, and the index's row count."""

    freqs: Mapping[str, float]
    floor: float
    rows: float
    loaded: float = 0.0

    def estimate(self, grams: Sequence[str]) -> float:
        """Most rows a search needing all of ``grams`` can match (the rarest gram's). An
        index without statistics (never analyzed, e.g. just re-created) bounds nothing:
        every row."""
        if not grams or not self.freqs:
            return self.rows
        return self.rows * min(self.freqs.get(g, self.floor) for g in grams)


_STATS: dict[str, IndexStats] = {}

_STATS_SQL = text(
    "SELECT c.reltuples::float8 AS rows, s.most_common_elems::text::text[] AS elems,"
    " s.most_common_elem_freqs::float8[] AS freqs"
    " FROM pg_class c LEFT JOIN pg_stats s"
    " ON s.schemaname = c.relnamespace::regnamespace::name AND s.tablename = c.relname"
    " WHERE c.oid = to_regclass(:index)"
)


async def index_stats(executor: Executor, index: str) -> IndexStats:
    """The statistics of ``index``, from this process's cache when fresh."""
    now = time.monotonic()
    cached = _STATS.get(index)
    if cached is not None and now - cached.loaded < STATS_TTL:
        return cached
    row = (await executor.execute(_STATS_SQL.bindparams(index=index))).first()
    if row is None:
        stats = IndexStats({}, 0.0, 0.0, now)
    else:
        rows, elems, freqs = row
        elems, freqs = elems or [], freqs or []
        listed = dict(zip(elems, freqs[: len(elems)], strict=True))
        # the element frequencies are followed by their minimum, maximum and null share
        floor = float(freqs[len(elems)]) if len(freqs) > len(elems) else 0.0
        stats = IndexStats(listed, floor, max(float(rows or 0.0), 0.0), now)
    _STATS[index] = stats
    return stats


# --- a term's grams (Python, for the estimate; SQL, for the query) ----------------------------
#: The kinds of gram arrays a term gives (each the SQL array of :func:`_sql_grams` and the
#: Python list of :func:`_py_grams`, position for position).
Kind = Literal["prefix", "exact", "inner", "other"]


def _pairs(term: str, tag: str) -> list[str]:
    if not term:
        return []
    if len(term) == 1:
        return [tag + term]
    return [tag + term[i : i + 2] for i in range(len(term) - 1)]


def _py_grams(term: str, kind: Kind) -> list[str]:
    """A term's grams of one kind as Python sees them (lower()ed by Python: only used to
    estimate, and to pick positions of the SQL array, so a disagreement between Python's
    and PostgreSQL's case folding can slow a search but never change its result)."""
    t = term.lower()
    if kind == "inner":
        return _pairs(t, "")
    if kind == "other":
        return _pairs(t, OTHER)
    prefix = [START + t[:2], *_pairs(t[1:], "")]
    return prefix if kind == "prefix" else [*prefix, t[-1] + END]


def _sql_grams(term: str | ColumnElement[str], kind: Kind) -> ColumnElement[Any]:
    """The same array computed by PostgreSQL (``crm_search_query``, migration 0008)."""
    value = literal(term, Text) if isinstance(term, str) else term
    if kind == "inner":
        return func.crm_search_query(value, "", type_=_TEXTS)
    if kind == "other":
        return func.crm_search_query(value, OTHER, type_=_TEXTS)
    first = literal(START, Text) + func.left(func.lower(value), 2)
    rest = func.crm_search_query(func.substr(value, 2), "", type_=_TEXTS)
    prefix = func.array_prepend(first, rest, type_=_TEXTS)
    if kind == "prefix":
        return prefix
    last = func.right(func.lower(value), 1) + literal(END, Text)
    return func.array_append(prefix, last, type_=_TEXTS)


#: Grams of a term looked up in the index: the rarest few. A row needing all of a term's
#: grams is found as well by its rarest ones (the LIKE re-checks the rest), and each gram
#: more costs the GIN scan a posting list to intersect.
PICK = 2


_INDEXED: dict[tuple[int, bool], ColumnElement[Any]] = {}

#: The tags of the scope tokens an index may hold (:attr:`Search.scope_tokens`), written as
#: SQL constants: PostgreSQL matches a statement's expression to the index's only when the
#: same constants stand where the index has them (a bound parameter would not match in a
#: prepared statement's generic plan).
_UNIT_TAG = literal_column("chr(5)", Text)
_OWNER_TAG = literal_column("chr(6)", Text)


def _indexed(table: FromClause, tokens: bool = False) -> ColumnElement[Any]:
    """The indexed expression, as indexed: ``crm_search_grams(search_text)``, followed by
    the row's org unit and owner tokens where the index holds them (built once per table)."""
    key = (id(table), tokens)
    indexed = _INDEXED.get(key)
    if indexed is None:
        indexed = func.crm_search_grams(table.c.search_text, type_=_TEXTS)
        if tokens:
            row = array(
                [
                    _UNIT_TAG + cast(table.c.org_unit_id, Text),
                    _OWNER_TAG + cast(table.c.owner_id, Text),
                ]
            )
            indexed = indexed.op("||", return_type=_TEXTS)(row)
        _INDEXED[key] = indexed
    return indexed


def _has(table: FromClause, grams: ColumnElement[Any], tokens: bool = False) -> ColumnElement[bool]:
    """``<the indexed expression> @> grams``."""
    return _indexed(table, tokens).op("@>", is_comparison=True)(grams)


# --- the term as parameters ------------------------------------------------------------------
#: A search statement is built once per shape (kit/statements.py) and the term reaches it
#: as these named parameters (:meth:`_Terms.values`); its grams as ``q_grams_<part>_<kind>``.
_TERM = bindparam("q_term", type_=Text)
_LOWERED = bindparam("q_lowered", type_=Text)
_CONTAINS = bindparam("q_contains", type_=Text)
_PREFIX = bindparam("q_prefix", type_=Text)
#: The ILIKE pattern of a term holding U+001F (:func:`_fieldwise`).
_FIELDWISE = bindparam("q_fieldwise", type_=Text)
#: How many rows the strategy's sample reads (:meth:`Plan.decide`).
_SAMPLE = bindparam("q_sample", type_=Integer)


def _scalar(value: ColumnElement[str], lower: bool) -> ColumnElement[str]:
    """``value`` (lower()ed when ``lower``) as a scalar subquery: evaluated once per
    statement, also in a prepared statement's generic plan (see
    :func:`crm_api.kit.filtering.contains_lowered`), and a pattern the planner cannot see:
    one it can see makes it estimate the LIKE from the column's histogram and, for a
    frequent term in an org scope, trade the walk of the sort index for a bitmap scan of
    the whole scope and a sort (measured at 1M: 426 ms against 41 ms)."""
    inner = func.lower(value, type_=Text) if lower else value
    return select(inner).scalar_subquery()


@dataclass(frozen=True, slots=True)
class _Patterns:
    """The SQL of a term's patterns: parameters, lower()ed by PostgreSQL or not."""

    lowered: ColumnElement[str]
    contains: ColumnElement[str]
    prefix: ColumnElement[str]

    @classmethod
    def of(cls, lower: bool) -> _Patterns:
        return cls(_scalar(_LOWERED, lower), _scalar(_CONTAINS, lower), _scalar(_PREFIX, lower))


_PLAIN, _CASED = _Patterns.of(False), _Patterns.of(True)


# --- the parts of a search -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Terms:
    """One term's patterns. A term of ASCII and caseless characters (Chinese, digits,
    punctuation) is lower()ed in Python, which agrees with PostgreSQL on exactly those, and
    its patterns and grams are plain parameters; any other term is lower()ed by PostgreSQL
    (once per statement), as the search column was. Either way the statement holds only
    parameters (the same SQL for every term of that kind), :meth:`values` their values."""

    term: str
    #: Lower()ed in Python: the patterns and grams are parameters.
    plain: bool
    #: The term as one bound parameter, used by every gram array of a cased term.
    bound: ColumnElement[str]
    lowered: ColumnElement[str]
    contains: ColumnElement[str]
    prefix: ColumnElement[str]

    @classmethod
    def of(cls, term: str) -> _Terms:
        sql = _PLAIN if _plain(term) else _CASED
        return cls(term, sql is _PLAIN, _TERM, sql.lowered, sql.contains, sql.prefix)

    def values(self) -> dict[str, Any]:
        """The values of the term's parameters (the patterns still to be lower()ed by
        PostgreSQL for a cased term)."""
        lowered = self.term.lower() if self.plain else self.term
        escaped = escape_like(lowered)
        return {
            "q_term": self.term,
            "q_lowered": lowered,
            "q_contains": f"%{escaped}%",
            "q_prefix": f"{escaped}%",
            "q_fieldwise": contains_pattern(self.term),
        }


def _plain(term: str) -> bool:
    """ASCII or without letter case: Python's and PostgreSQL's lower() agree."""
    return all(c < "\x80" or (c.lower() == c and c.upper() == c) for c in term)


def _spec(resource: Resource) -> Search:
    spec = resource.search
    if spec is None:
        raise TypeError(f"{resource.name} declares no search")
    return spec


def _name(resource: Resource, table: FromClause) -> ColumnElement[str]:
    spec = _spec(resource)
    column = table.c[spec.name]
    return column if spec.name_lowered else func.lower(column, type_=Text)


def _ids(resource: Resource, *queries: Select[Any]) -> ColumnElement[bool]:
    """``id = ANY(<one array of the ids the queries select>)``: an InitPlan run once, then
    the rows fetched by primary key; the page is sorted from those rows."""
    matches = queries[0] if len(queries) == 1 else union_all(*queries)
    sub = matches.subquery("m")
    array_type = ARRAY(resource.id_column.type)
    array = select(func.array_agg(sub.c[0], type_=array_type)).scalar_subquery()
    # a cast, so that ANY takes an array expression rather than a subquery of arrays
    return resource.id_column == any_(cast(array, array_type))


_ALIASES: dict[str, FromClause] = {}


def _alias(resource: Resource) -> FromClause:
    """The alias collecting subqueries read the resource's table under (built once: an
    alias proxies every column anew)."""
    alias = _ALIASES.get(resource.name)
    if alias is None:
        alias = _ALIASES[resource.name] = resource.table.alias("s")
    return alias


@dataclass(slots=True)
class Plan:
    """How one term is searched over one resource for one caller: the statistics of the
    indexes, what each part is estimated to match, and the strategy that chooses.

    Its statements are built once per shape (:meth:`shape_key`: the caller's ``Access``,
    the resource, the base statement, what is selected, the strategy of each part in it,
    the kind of term and, for a cased term, which of its grams are looked up) and cached
    (``statements.SEARCHES``); the term, its patterns and its grams are the parameters
    :attr:`values` gives values to."""

    resource: Resource
    terms: _Terms
    #: The caller: its scope is repeated inside every collecting subquery, so only
    #: candidates in scope come back.
    access: Access
    own: IndexStats
    related_stats: list[IndexStats]
    #: Above this many candidates a part is walked (see :data:`COLLECT_MAX`).
    limit: float
    #: Listing the trash: the index holds live rows only, so the row's own parts walk.
    trash: bool = False
    #: A walk reads at most the caller's own rows (scope ``own``: the owner's index), so a
    #: relevance rank above :attr:`limit` is walked without sampling it first (whether
    #: the whole match is rare enough to collect in one statement is still sampled).
    bounded_walk: bool = False

    #: Strategies decided so far, by part: ``own``, ``related<i>``, ``referenced<i>``
    #: (and ``referenced<i>.set``), ``rank<r>``.
    decided: dict[str, Strategy] = field(default_factory=dict)
    #: The values of the statements' parameters: the term's patterns, and for a plain term
    #: the grams each part looks up (``q_grams_<part>_<kind>``).
    values: dict[str, Any] = field(default_factory=dict)
    #: Per part (``own``, ``rel<i>``) and kind: the positions of the term's grams looked up
    #: (the rarest :data:`PICK` by the statistics).
    picks: dict[tuple[str, Kind], tuple[int, ...]] = field(default_factory=dict)
    #: Per :attr:`Search.referenced`: the referenced index's statistics, its row count
    #: scaled to the rows of this resource referencing them (:func:`_fanned`; part
    #: ``ref<i>``), and the caller's access on the referenced resource (``None``: the part
    #: matches nothing; part of every statement's key, as the scope inside it).
    referenced_stats: list[IndexStats] = field(default_factory=list)
    referenced_access: list[Access | None] = field(default_factory=list)
    #: The referenced indexes' statistics as they are (rows of the referenced table): how
    #: many referenced rows a walked part's set holds (part ``refset<i>``).
    referenced_index_stats: list[IndexStats] = field(default_factory=list)

    def __post_init__(self) -> None:
        term = self.terms.term
        self.values.update(self.terms.values())
        parts: list[tuple[str, IndexStats, tuple[Kind, ...]]] = [
            ("own", self.own, ("prefix", "exact", "inner", "other"))
        ]
        parts += [(f"rel{i}", s, ("prefix", "inner")) for i, s in enumerate(self.related_stats)]
        parts += [
            (f"ref{i}", s, ("prefix", "inner"))
            for i, s in enumerate(self.referenced_stats)
            if self.referenced_access[i] is not None
        ]
        for part, stats, kinds in parts:
            for kind in kinds:
                py = _py_grams(term, kind)
                ranked = sorted(
                    range(len(py)), key=lambda i: (stats.freqs.get(py[i], stats.floor), i)
                )
                picked = tuple(sorted(ranked[:PICK]))
                self.picks[part, kind] = picked
                if self.terms.plain:
                    self.values[f"q_grams_{part}_{kind}"] = [py[i] for i in picked]

    # -- the cache key -----------------------------------------------------------------------
    def shape_key(self, *what: Hashable) -> tuple[Hashable, ...]:
        """What a statement of this search is built from besides its base statement:
        ``what`` (what it selects and the strategies of its parts), the resource, the
        caller's whole ``Access`` (the scope inside collecting subqueries), and the kind of
        term; for a cased term (grams computed by PostgreSQL from the bound term) the
        positions of the grams looked up and the term's length class. A plain term's grams
        are one array parameter each, whatever their number."""
        cased: Hashable = None
        if not self.terms.plain:
            cased = (tuple(sorted(self.picks.items())), len(self.terms.term))
        # the caller's access on each referenced resource: its scope is inside the
        # statement, so callers with different customers scopes never share one
        referenced = tuple(self.referenced_access)
        return (
            "search",
            *what,
            self.resource.name,
            self.access,
            referenced,
            self.terms.plain,
            cased,
        )

    def match_strategies(self) -> tuple[Hashable, ...]:
        """The strategy of each part of :func:`match_clause`: own, related, referenced
        (``None`` for a referenced part that matches nothing; its set's strategy too)."""
        related = range(len(_spec(self.resource).related))
        referenced: list[Hashable] = [
            None
            if self.referenced_access[i] is None
            else (self.decided[f"referenced{i}"], self.decided.get(f"referenced{i}.set"))
            for i in range(len(self.referenced_stats))
        ]
        return (self.own_strategy, *(self.related_strategy(i) for i in related), *referenced)

    def matched(self, base: ScopedSelect) -> ScopedSelect:
        """``base`` narrowed to the rows the term matches (:func:`match_clause`), built
        once per shape."""
        from crm_api.kit import resource as kit

        what: tuple[Hashable, ...]
        if FIELD_SEPARATOR in self.terms.term:
            what = ("fieldwise",)
        else:
            what = ("match", self.match_strategies())
        return kit.derived(
            self.shape_key(*what),
            base,
            lambda: kit.narrow(base, match_clause(self)),
            statements.SEARCHES,
        )

    # -- estimates -------------------------------------------------------------------------
    def _stats(self, part: str) -> IndexStats:
        if part == "own":
            return self.own
        if part.startswith("refset"):
            return self.referenced_index_stats[int(part[6:])]
        if part.startswith("ref"):
            return self.referenced_stats[int(part[3:])]
        return self.related_stats[int(part[3:])]

    def _table(self, part: str) -> FromClause:
        """The table a part's rows are sampled from (:meth:`sample`)."""
        spec = _spec(self.resource)
        if part == "own":
            return self.resource.table
        if part.startswith("refset"):
            return spec.referenced[int(part[6:])].resource.table
        if part.startswith("ref"):
            return spec.referenced[int(part[3:])].resource.table
        return spec.related[int(part[3:])].table

    def estimate(self, kinds: Sequence[Kind], part: str = "own") -> float:
        """At most how many rows the part matches (each kind's rarest gram)."""
        s = self._stats(part)
        return sum(s.estimate(_py_grams(self.terms.term, k)) for k in kinds)

    def independent(self, kinds: Sequence[Kind], part: str = "own") -> float:
        """How many rows hold all the term's grams, were they independent, counting only
        what the statistics know. Below the truth for grams that go together (``上海`` and
        ``海``), so a part this says is frequent is frequent; a part it calls rare is only
        sampled (:meth:`decide`), never walked unseen.

        Two rules, from the two branches merged here, both lowering the figure so that a
        rare-together term is sampled rather than walked through the whole scope:

        - every distinct gram counts, not only the :data:`PICK` looked up (main): a term
          whose grams are each common but rare together (an order number,
          ``so-00123456``: ``12`` and ``45`` are on ~1,200 of 1,000,000 orders, the term
          on one) multiplies down to below :attr:`limit` (it walked all 1M orders: 4.6 s);
        - a gram the statistics do not list (rarer than the rarest they list, by how much
          unknown) counts as on no row (sperf), not at the listed floor, which is only an
          upper bound: with a low statistics target the floor is high, and the prefix rank
          of ``有限`` (no customer's name starts with it) was walked unseen through all
          989,815 rows (12 s); a customer's rare term is sampled, then collected.

        Both only ever lower the figure, and the sample (1,000 rows) decides every part
        this calls rare, so neither can make a frequent part collected."""
        s = self._stats(part)
        total = 0.0
        for kind in kinds:
            share = 1.0
            for gram in set(_py_grams(self.terms.term, kind)):
                share *= s.freqs.get(gram, 0.0)
            total += s.rows * share
        return total

    async def decide(
        self,
        executor: Executor,
        key: str,
        kinds: Sequence[Kind],
        where: Callable[[FromClause], ColumnElement[bool]],
        part: str = "own",
    ) -> Strategy:
        """Collect or walk one part. Below :attr:`limit` by the statistics' bound: collect.
        Above it even by what the statistics know for sure (:meth:`independent`): walk.
        In between (grams common alone, maybe rare together: ``bluewater`` as a name's
        start; or grams the statistics do not list) a sample says (:meth:`sample`): the
        condition of the rows collecting the part would fetch (``where``) is checked on
        :data:`SAMPLE` rows, and the part is collected when the share found projects to at
        most :attr:`limit` rows. A
        sample reads 1,000 rows (~1 ms at 1M, any term); the count of candidates through
        the index it replaces re-checked up to 3,001 heap rows (20-60 ms). A walk over a
        part that turns out empty would read
        the whole scope; collecting a frequent part would fetch every match."""
        if key in self.decided:
            return self.decided[key]
        strategy: Strategy
        if self.trash and part == "own":
            strategy = "walk"
        elif self.estimate(kinds, part) <= self.limit:
            strategy = "collect"
        elif (self.bounded_walk and key.startswith("rank")) or self.independent(
            kinds, part
        ) > self.limit:
            strategy = "walk"
        else:
            probe = self.sample(key, where, part)
            values = {**self.values, "q_sample": SAMPLE}
            seen, hits = (await executor.execute(probe, values)).one()
            if seen < SAMPLE:
                # the whole table was read: a walk reads no more
                strategy = "walk"
            else:
                found = hits / seen * self._stats(part).rows
                strategy = "collect" if found <= self.limit else "walk"
        self.decided[key] = strategy
        return strategy

    def sample(
        self, key: str, where: Callable[[FromClause], ColumnElement[bool]], part: str
    ) -> Select[Any]:
        """``(rows read, rows passing where)`` of the first :data:`SAMPLE` live rows of the
        resource's table (the related table's for a related part) by primary key: ids are
        random, so the sample is too. Not "any order": PostgreSQL then read the first
        names in alphabetical order from the name index, and found no ``bluewater%``
        among them. The whole table, not the caller's scope: collecting reads the
        candidates of the whole table anyway (the n-gram index knows no scope), and an
        org scope's own indexes are ordered by name too. Built once per shape."""

        def build() -> Select[Any]:
            table = self._table(part)
            rows = (
                select(where(table).label("hit"))
                .where(table.c.deleted_at.is_(None))
                .order_by(table.c.id)
                .limit(_SAMPLE)
                .subquery("sample")
            )
            hits = func.count().filter(rows.c.hit)
            return select(func.count(), hits)  # type: ignore[return-value]

        return statements.memo(self.shape_key("sample", key), build)

    async def decide_match(self, executor: Executor) -> None:
        """The strategies :func:`match_clause` needs."""
        await self.decide(executor, "own", ("prefix", "inner", "other"), self.text_like)
        for i, rel in enumerate(_spec(self.resource).related):

            def named(table: FromClause, rel: Related = rel) -> ColumnElement[bool]:
                return table.c[rel.name].like(self.terms.contains)

            await self.decide(executor, f"related{i}", ("prefix", "inner"), named, f"rel{i}")
        for i, ref in enumerate(_spec(self.resource).referenced):
            if self.referenced_access[i] is None:
                continue  # nothing to decide: the part is false

            def referenced_name(table: FromClause, ref: Referenced = ref) -> ColumnElement[bool]:
                return _name(ref.resource, table).like(self.terms.contains)

            # sampled on the referenced table, projected to the rows referencing it (the
            # fanned statistics of part ref<i>)
            strategy = await self.decide(
                executor, f"referenced{i}", ("prefix", "inner"), referenced_name, f"ref{i}"
            )
            if strategy == "walk":
                # too many rows of this resource to collect; the referenced rows may still
                # be few enough to hash (1,000 customers named "northwind", 10,000 orders)
                await self.decide(
                    executor,
                    f"referenced{i}.set",
                    ("prefix", "inner"),
                    referenced_name,
                    f"refset{i}",
                )

    @property
    def own_strategy(self) -> Strategy:
        return self.decided["own"]

    def related_strategy(self, i: int) -> Strategy:
        return self.decided[f"related{i}"]

    @property
    def all_collected(self) -> bool:
        related = range(len(_spec(self.resource).related))
        return (
            self.own_strategy == "collect"
            and all(self.related_strategy(i) == "collect" for i in related)
            and all(self.referenced_collected(i) for i in range(len(self.referenced_stats)))
        )

    def referenced_collected(self, i: int) -> bool:
        """Referenced part ``i`` is collected (or matches nothing, which costs nothing)."""
        return self.referenced_access[i] is None or self.decided.get(f"referenced{i}") == "collect"

    # -- SQL -------------------------------------------------------------------------------
    def text_like(self, table: FromClause) -> ColumnElement[bool]:
        """The term in one field of the search column (the LIKE every candidate passes)."""
        like: ColumnElement[bool] = table.c[_spec(self.resource).text].like(self.terms.contains)
        return like

    def rank_is(self, table: FromClause, rank: int) -> ColumnElement[bool]:
        """Rows of relevance rank 0 (the name is the term), 1 (starts with it, is not it)
        or 2 (contains it, does not start with it)."""
        name = _name(self.resource, table)
        exact = name == self.terms.lowered
        prefix = name.like(self.terms.prefix)
        if rank == 0:
            return exact
        if rank == 1:
            return and_(prefix, not_(exact))
        return and_(name.like(self.terms.contains), not_(prefix))

    def grams(self, kind: Kind, part: str = "own") -> ColumnElement[Any]:
        """The rarest :data:`PICK` grams of ``kind`` for ``part``: for a plain term the
        parameter :meth:`__post_init__` gave them to; for a cased term computed by
        PostgreSQL from the bound term (positions picked from the statistics, and part of
        the statement's key)."""
        if self.terms.plain:
            return bindparam(f"q_grams_{part}_{kind}", type_=_TEXTS)
        sql = _sql_grams(self.terms.bound, kind)
        picked = self.picks[part, kind]
        if len(_py_grams(self.terms.term, kind)) <= PICK:
            return sql
        parts = [sql[i + 1 : i + 1] for i in picked]  # 1-based slices: never NULL elements
        out = parts[0]
        for piece in parts[1:]:
            out = func.array_cat(out, piece, type_=_TEXTS)
        return out

    def collect(
        self, kinds: Sequence[Kind], where: Callable[[FromClause], ColumnElement[bool]]
    ) -> Select[Any]:
        """Ids of live, in-scope rows of the resource holding the grams of any of ``kinds``
        and passing ``where`` (built on the alias it is given), found through the n-gram
        index. An alias: a subquery on the same table must not be correlated with the
        outer statement."""
        from crm_api.kit.resource import scope_of

        resource = self.resource
        inner = _alias(resource)
        tokens = _spec(resource).scope_tokens
        found = or_(*(_has(inner, self.grams(k), tokens) for k in kinds))
        clauses = [inner.c.deleted_at.is_(None), found, where(inner)]
        in_scope = self.scope_tokens(inner) if tokens else None
        if in_scope is not None:
            clauses.append(_indexed(inner, True).op("&&", is_comparison=True)(in_scope))
        scope = scope_of(resource, self.access, inner)
        if scope is not None:
            clauses.append(scope)
        return select(inner.c.id).where(*clauses)

    def scope_tokens(
        self, table: FromClause, access: Access | None = None
    ) -> ColumnElement[Any] | None:
        """The tokens of the rows the caller's scope covers (``access``: on a referenced
        resource; the search's own by default), when it is nothing but a set of org units
        (:func:`crm_api.authz.scope.unit_set`) or the caller's own rows; ``None`` for any
        other scope (its predicate alone narrows the candidates)."""
        access = access or self.access
        units = unit_set(access)
        if units is not None:
            unit = func.unnest(units.ids).table_valued("unit").render_derived(name="scope_units")
            tags = func.array_agg(_UNIT_TAG + cast(unit.c.unit, Text), type_=_TEXTS)
            return select(tags).select_from(unit).scalar_subquery()
        if access.scope.kinds == {ScopeKind.own}:
            owner = literal(access.principal.id, table.c.owner_id.type)
            return array([_OWNER_TAG + cast(owner, Text)])
        return None

    def related_collect(self, i: int) -> Select[Any]:
        """Ids the live related rows holding the term in their name point at."""
        rel = _spec(self.resource).related[i]
        part = f"rel{i}"
        t = rel.table
        return select(t.c[rel.foreign_key]).where(
            t.c.deleted_at.is_(None),
            or_(_has(t, self.grams("prefix", part)), _has(t, self.grams("inner", part))),
            t.c[rel.name].like(self.terms.contains),
        )

    def related_walk(self, i: int) -> ColumnElement[bool]:
        """A live related row of this row has the term in its name: a probe of the related
        table's foreign-key index per row walked. ``OFFSET 0`` keeps it a per-row probe:
        without it PostgreSQL may hash the whole subquery first, reading every related
        row's name."""
        rel = _spec(self.resource).related[i]
        t = rel.table
        probe = (
            select(literal(1))
            .where(
                t.c[rel.foreign_key] == self.resource.id_column,
                t.c.deleted_at.is_(None),
                t.c[rel.name].like(self.terms.contains),
            )
            .offset(0)
        )
        return probe.exists()

    def related_clauses(self) -> list[ColumnElement[bool]]:
        """The related and the referenced parts, each by its strategy."""
        out: list[ColumnElement[bool]] = []
        for i in range(len(_spec(self.resource).related)):
            if self.related_strategy(i) == "collect":
                out.append(self.resource.id_column.in_(self.related_collect(i)))
            else:
                out.append(self.related_walk(i))
        out += self.referenced_clauses()
        return out

    # -- referenced rows (Search.referenced) -------------------------------------------------
    def _referenced_in_scope(self, i: int, t: FromClause) -> list[ColumnElement[bool]]:
        """Live rows of the referenced table ``t`` inside the caller's scope on it."""
        from crm_api.kit.resource import scope_of

        ref = _spec(self.resource).referenced[i]
        access = self.referenced_access[i]
        assert access is not None  # callers check
        clauses: list[ColumnElement[bool]] = [t.c.deleted_at.is_(None)]
        scope = scope_of(ref.resource, access, t)
        if scope is not None:
            clauses.append(scope)
        return clauses

    def referenced_collect(self, i: int) -> Select[Any]:
        """Ids of the live, in-scope referenced rows whose name holds the term, found
        through the referenced resource's n-gram index (its name's grams: the prefix and
        inner kinds, picked by its statistics: part ``ref<i>``) and re-checked with the
        LIKE. Where that index holds scope tokens (customers), the expression is the
        index's own and the caller's tokens narrow the candidates as in :meth:`collect`."""
        ref = _spec(self.resource).referenced[i]
        part = f"ref{i}"
        t = ref.resource.table
        tokens = ref.spec.scope_tokens
        clauses = self._referenced_in_scope(i, t)
        clauses.append(
            or_(
                _has(t, self.grams("prefix", part), tokens),
                _has(t, self.grams("inner", part), tokens),
            )
        )
        if tokens:
            in_scope = self.scope_tokens(t, self.referenced_access[i])
            if in_scope is not None:
                clauses.append(_indexed(t, True).op("&&", is_comparison=True)(in_scope))
        clauses.append(_name(ref.resource, t).like(self.terms.contains))
        return select(ref.resource.id_column).where(*clauses)

    def referenced_ids(self, i: int) -> Select[Any]:
        """Ids of this resource's rows (live or not: the outer statement says which)
        referencing a row :meth:`referenced_collect` finds (through the foreign key's
        index)."""
        ref = _spec(self.resource).referenced[i]
        inner = _alias(self.resource)
        return select(inner.c.id).where(inner.c[ref.foreign_key].in_(self.referenced_collect(i)))

    def referenced_walk(self, i: int) -> ColumnElement[bool]:
        """The row's referenced row is live, in scope and named with the term: a primary
        key probe per row walked (``OFFSET 0`` keeps it one, as in :meth:`related_walk`)."""
        ref = _spec(self.resource).referenced[i]
        t = ref.resource.table
        probe = (
            select(literal(1))
            .where(
                ref.resource.id_column == self.resource.table.c[ref.foreign_key],
                *self._referenced_in_scope(i, t),
                _name(ref.resource, t).like(self.terms.contains),
            )
            .offset(0)
        )
        return probe.exists()

    def referenced_clauses(self) -> list[ColumnElement[bool]]:
        """Each referenced part: ``fk IN (<the referenced rows found through their
        index>)`` when they are few (the rows of this resource collected, or, with more of
        those than collecting pays for, the set hashed and checked per row walked: a
        referenced name on 1 % of orders is ~100 rows walked per match, each a hash
        lookup), else a primary-key probe per row walked (:meth:`referenced_walk`)."""
        out: list[ColumnElement[bool]] = []
        for i, ref in enumerate(_spec(self.resource).referenced):
            if self.referenced_access[i] is None:
                out.append(false())
            elif "collect" in (
                self.decided[f"referenced{i}"],
                self.decided.get(f"referenced{i}.set"),
            ):
                column = self.resource.table.c[ref.foreign_key]
                out.append(column.in_(self.referenced_collect(i)))
            else:
                out.append(self.referenced_walk(i))
        return out


async def plan(
    executor: Executor,
    resource: Resource,
    access: Access,
    term: str,
    *,
    deleted: bool = False,
    referenced: Mapping[str, Access | None] | None = None,
) -> Plan:
    """Estimate each part of searching ``term`` from the indexes' statistics.
    ``referenced``: the caller's access on each resource of :attr:`Search.referenced`, by
    name (a resource left out: its part matches nothing)."""
    spec = _spec(resource)
    own = await index_stats(executor, spec.index)
    related = [await index_stats(executor, r.index) for r in spec.related]
    referenced_index_stats = [await index_stats(executor, r.spec.index) for r in spec.referenced]
    referenced_stats = [_fanned(s, own) for s in referenced_index_stats]
    referenced_access = [(referenced or {}).get(r.resource.name) for r in spec.referenced]
    # A walk over a caller's org units reads ~1/share rows per match of the page (the
    # sort index holds everyone's rows); collecting reads only the candidates, and the
    # scope's own index narrows them before the table is read.
    kinds = access.scope.kinds
    if access.scope.is_all:
        limit = COLLECT_MAX
    elif kinds == {ScopeKind.own}:
        limit = COLLECT_MAX_OWN
    else:
        limit = COLLECT_MAX_SCOPED
    return Plan(
        resource=resource,
        terms=_Terms.of(term),
        access=access,
        own=own,
        related_stats=related,
        limit=limit,
        trash=deleted,
        bounded_walk=kinds == {ScopeKind.own},
        referenced_stats=referenced_stats,
        referenced_access=referenced_access,
        referenced_index_stats=referenced_index_stats,
    )


def _fanned(referenced: IndexStats, own: IndexStats) -> IndexStats:
    """``referenced``'s statistics with its row count scaled to the rows referencing them
    (its rows times the average number of this resource's rows per referenced row: ~10
    orders per customer), so an estimate counts the rows a referenced part yields."""
    if referenced.rows <= 0 or own.rows <= 0:
        return referenced
    fan_out = max(own.rows / referenced.rows, 1.0)
    return IndexStats(
        referenced.freqs, referenced.floor, referenced.rows * fan_out, referenced.loaded
    )


def match_clause(p: Plan) -> ColumnElement[bool]:
    """The rows the term matches, each part by its strategy."""
    resource, terms = p.resource, p.terms
    spec = _spec(resource)
    if FIELD_SEPARATOR in terms.term:
        return or_(_fieldwise(resource, terms.term), *_fieldwise_referenced(p))
    if p.all_collected:
        queries = [p.collect(("prefix", "inner", "other"), p.text_like)]
        queries += [p.related_collect(i) for i in range(len(spec.related))]
        queries += [
            p.referenced_ids(i)
            for i in range(len(spec.referenced))
            if p.referenced_access[i] is not None
        ]
        return _ids(resource, *queries)
    own: ColumnElement[bool]
    if p.own_strategy == "collect":
        own = resource.id_column.in_(p.collect(("prefix", "inner", "other"), p.text_like))
    else:
        own = p.text_like(resource.table)
    return or_(own, *p.related_clauses())


def _fieldwise(resource: Resource, term: str) -> ColumnElement[bool]:
    """A term holding U+001F (which joins the search column's fields, so one LIKE could
    match across two of them): each field with ILIKE, related names too. Same rows, no
    index."""
    spec = _spec(resource)
    pattern = _FIELDWISE
    parts: list[ColumnElement[bool]] = [resource.table.c[f].ilike(pattern) for f in spec.fields]
    for rel in spec.related:
        t = rel.table
        parts.append(
            resource.id_column.in_(
                select(t.c[rel.foreign_key]).where(
                    t.c.deleted_at.is_(None), t.c.name.ilike(pattern)
                )
            )
        )
    return or_(*parts)


def _fieldwise_referenced(p: Plan) -> list[ColumnElement[bool]]:
    """:func:`_fieldwise` for the referenced rows' names (live, in the caller's scope)."""
    out: list[ColumnElement[bool]] = []
    for i, ref in enumerate(_spec(p.resource).referenced):
        if p.referenced_access[i] is None:
            continue
        t = ref.resource.table
        name = t.c[ref.spec.name]
        found = select(ref.resource.id_column).where(
            *p._referenced_in_scope(i, t), name.ilike(_FIELDWISE)
        )
        out.append(p.resource.table.c[ref.foreign_key].in_(found))
    return out


# --- relevance ---------------------------------------------------------------------------------
def rank_expression(resource: Resource, terms: _Terms) -> ColumnElement[int]:
    """0: the name is the term; 1: starts with it; 2: contains it; 3: only another field
    or a related name does (any case, wildcards literal)."""
    name = _name(resource, resource.table)
    return case(
        (name == terms.lowered, 0),
        (name.like(terms.prefix), 1),
        (name.like(terms.contains), 2),
        else_=3,
    ).cast(Integer)


_RANK_KINDS: dict[int, Kind] = {0: "exact", 1: "prefix", 2: "inner", 3: "other"}


async def _decide_tier(executor: Executor, p: Plan, rank: int) -> None:
    """The strategies :func:`_tier` needs for ``rank``. The exact name is always collected:
    its candidates start and end like the term, and a walk for a name nobody has would
    read the whole scope."""
    kind = _RANK_KINDS[rank]
    if rank == 0:
        # the trash is not in the (live rows') index: walked like every own part there
        p.decided.setdefault("rank0", "walk" if p.trash else "collect")
        return
    if rank < 3:
        await p.decide(executor, f"rank{rank}", (kind,), lambda t: p.rank_is(t, rank))
        return

    # sampled on what collecting it fetches: the term in any field (the name's matches
    # are left out after)
    await p.decide(executor, "rank3", ("other",), p.text_like)
    await p.decide_match(executor)  # the related parts


def _tier_strategies(p: Plan, rank: int) -> tuple[Hashable, ...]:
    """The strategies :func:`_tier` reads for ``rank`` (part of its statement's key)."""
    if rank < 3:
        return (p.decided[f"rank{rank}"],)
    return (p.decided["rank3"], *p.match_strategies()[1:])


def _tier(p: Plan, rank: int) -> ColumnElement[bool]:
    """The rows of one rank, by the strategy decided for it (a collecting subquery states
    the rank's condition on its own alias of the table)."""
    resource = p.resource
    if rank < 3:

        def where(table: FromClause) -> ColumnElement[bool]:
            return p.rank_is(table, rank)

        if p.decided[f"rank{rank}"] == "collect":
            return _ids(resource, p.collect((_RANK_KINDS[rank],), where))
        return where(resource.table)
    # rank 3: another field or a related or referenced name, not the name
    name = _name(resource, resource.table)
    collected = _rank3_collected(p)
    if collected is not None:
        return and_(_ids(resource, *collected), not_(name.like(p.terms.contains)))
    own: ColumnElement[bool]
    if p.decided["rank3"] == "collect":
        own = resource.id_column.in_(p.collect(("other",), p.text_like))
    else:
        own = p.text_like(resource.table)
    return and_(or_(own, *p.related_clauses()), not_(name.like(p.terms.contains)))


def _rank3_collected(p: Plan) -> list[Select[Any]] | None:
    """Rank 3's id queries when every one of its parts is collected (``None``: some part
    walks). One ``id = ANY(<array>)``, as :func:`_ids` builds for the other ranks: OR'ed
    ``IN (<subquery>)`` parts become hashed subplans filtering a walk of the whole sort
    order (measured at 1,000,000 orders: 10.6 s for a number no other field holds, where
    the parts found nothing). Which it is follows from :func:`_tier_strategies`, so the
    statement's key tells the two apart."""
    spec = _spec(p.resource)
    if p.decided["rank3"] != "collect":
        return None
    if not all(p.related_strategy(i) == "collect" for i in range(len(spec.related))):
        return None
    if not all(p.referenced_collected(i) for i in range(len(spec.referenced))):
        return None
    queries = [p.collect(("other",), p.text_like)]
    queries += [p.related_collect(i) for i in range(len(spec.related))]
    queries += [
        p.referenced_ids(i)
        for i in range(len(spec.referenced))
        if p.referenced_access[i] is not None
    ]
    return queries


# --- the page --------------------------------------------------------------------------------
async def page(
    executor: Executor,
    resource: Resource,
    access: Access,
    stmt: ScopedSelect,
    params: PageParams,
    term: str | None,
    *,
    relevance: bool,
    deleted: bool = False,
    referenced: Mapping[str, Access | None] | None = None,
) -> dict[str, Any]:
    """One page of ``stmt`` (scoped and filtered) narrowed to ``term``: best first when
    ``relevance`` (no explicit sort), else in ``params``' sort. Without a term, the plain
    page. Every statement is built once per shape and takes the term as parameters
    (:class:`Plan`). ``referenced``: the caller's ``read`` access on each resource the
    search declares :class:`Referenced` (by name; left out or ``None``: no row matches
    through it)."""
    from crm_api.kit import resource as kit

    if not term:
        return await kit.fetch_page(executor, resource, access, stmt, params)
    p = await plan(executor, resource, access, term, deleted=deleted, referenced=referenced)
    if FIELD_SEPARATOR not in term:
        await p.decide_match(executor)
    if not relevance or FIELD_SEPARATOR in term:
        return await kit.fetch_page(executor, resource, access, p.matched(stmt), params, p.values)
    total, estimated = None, False
    if params.include_total:
        # exact up to the cap, then an estimate (kit/counting.py), as for any list
        total, estimated = await count_total(executor, p.matched(stmt), params.count_cap, p.values)
    ranked = PageParams(params.limit, params.cursor, RELEVANCE_SORT, False)
    _decode(resource, params.cursor)  # a relevance cursor, whichever reader continues it
    if p.all_collected:
        rows = await _ranked(executor, resource, access, stmt, p, ranked)
        rows = [kit.mask_row(resource, access, r) for r in rows]
    else:
        rows = await _tiers(executor, resource, access, stmt, p, ranked)
    envelope = page_envelope(rows, ranked, total, estimated)
    for row in envelope["data"]:
        row.pop(RANK, None)
    return envelope


#: The relevance cursor's columns, for decoding it (the rank's type only).
_RANK_TYPE: ColumnElement[int] = literal_column("0", Integer)


def _cursor_columns(resource: Resource) -> dict[str, SortColumn]:
    return {RANK: _RANK_TYPE, "created_at": resource.table.c.created_at}


async def _ranked(
    executor: Executor,
    resource: Resource,
    access: Access,
    base: ScopedSelect,
    p: Plan,
    params: PageParams,
) -> list[dict[str, Any]]:
    """Every match ranked in one statement (all parts collected: the matches are few),
    built once per shape: the page's cursor values and limit are parameters too."""
    from crm_api.kit import resource as kit

    shape, page_values = page_shape(params, _cursor_columns(resource))

    def build() -> Select[Any]:
        rank = rank_expression(resource, p.terms)
        columns: dict[str, SortColumn] = {RANK: rank, "created_at": resource.table.c.created_at}
        query = kit.flagged(resource, access, p.matched(base))
        return keyset_statement(
            query.add_columns(rank.label(RANK)), columns, resource.id_column, shape
        )

    key = p.shape_key("ranked", p.match_strategies(), shape)
    stmt = statements.derived(key, base, build, statements.SEARCHES)
    result = await executor.execute(stmt, {**p.values, **page_values})
    keys = tuple(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


def _decode(resource: Resource, cursor: str | None) -> tuple[int, datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    columns: dict[str, SortColumn] = {
        RANK: literal(0, Integer),
        "created_at": resource.table.c.created_at,
    }
    values, last_id = decode_cursor(cursor, RELEVANCE_SORT, columns)
    rank, created = values
    if (
        not isinstance(rank, int)
        or isinstance(rank, bool)
        or not 0 <= rank <= 3
        or not isinstance(created, datetime)
    ):
        raise BadRequest("The cursor is malformed.", code="invalid_cursor")
    return rank, created, last_id


async def _tiers(
    executor: Executor,
    resource: Resource,
    access: Access,
    stmt: ScopedSelect,
    p: Plan,
    params: PageParams,
) -> list[dict[str, Any]]:
    """The ranks one after the other, each newest first by its own strategy through the
    kit's page reader (:func:`crm_api.kit.resource.fetch_page`, so whatever it does for a
    scope applies to each rank too), until the page and the one row that tells whether
    there is more are read. Rows come masked."""
    from crm_api.kit import resource as kit

    after = _decode(resource, params.cursor)
    first = after[0] if after else 0
    want = params.limit + 1
    rows: list[dict[str, Any]] = []
    for rank in range(first, 4):
        cursor = None
        if after is not None and rank == after[0]:
            cursor = encode_cursor(_RECENCY, {"created_at": after[1], "id": after[2]})
        tier = PageParams(want - len(rows), cursor, _RECENCY, False)
        await _decide_tier(executor, p, rank)
        query = kit.derived(
            p.shape_key("tier", rank, _tier_strategies(p, rank)),
            stmt,
            lambda rank=rank: kit.plain_page(  # type: ignore[misc]
                kit.with_columns(
                    kit.narrow(stmt, _tier(p, rank)),
                    literal_column(str(rank), Integer).label(RANK),
                )
            ),
            statements.SEARCHES,
        )
        got = await kit.fetch_page(executor, resource, access, query, tier, p.values)
        rows.extend(got["data"])
        if len(rows) >= want:
            break
    return rows


__all__ = [
    "COLLECT_MAX",
    "RELEVANCE_SORT",
    "IndexStats",
    "Plan",
    "Referenced",
    "Related",
    "Search",
    "index_stats",
    "match_clause",
    "page",
    "plan",
    "rank_expression",
]
