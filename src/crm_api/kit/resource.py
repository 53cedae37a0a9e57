"""The resource kit: a resource is declared once (:class:`Resource`) and its reads can only
start from the statement the kit scopes for it (:data:`ScopedSelect`).

What a declaration fixes, so that no repository or service can get it wrong by hand:

- **the scope**: :func:`scoped` (rows) and :func:`scoped_entity` (the ORM row, for locks)
  add the caller's data-scope predicate (:func:`crm_api.authz.scope.scope_clause`) on the
  resource's owner and org unit, or on its parent's for a resource that inherits its scope
  (contacts → customers). :func:`fetch_page`, :func:`get_row` and :func:`lock` accept only
  a :data:`ScopedSelect`: a plain ``Select`` is a mypy error, and :func:`narrow` is the one
  way to add filters while keeping the type (adding conditions can only narrow a scope);
- **the response whitelist**: the columns selected are the public schema's fields, never
  "every column but…", so an internal column (``search_text``) cannot reach a client;
- **masking**: the declared sensitive fields are masked in the shared read path
  (:func:`fetch_page`, :func:`get_row`, :func:`present`), and the per-row flag that decides
  it never leaves this module.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Literal, NewType

from pydantic import BaseModel
from sqlalchemy import ColumnElement, FromClause, Select, Table, and_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import KeyedColumnElement
from sqlalchemy.sql.expression import exists, false
from sqlalchemy.types import Numeric

from crm_api.authz.scope import (
    UNMASKED,
    per_row_sensitive,
    scope_clause,
    sensitive_clause,
    unmasked_for,
)
from crm_api.authz.types import Access
from crm_api.db.reader import Reader
from crm_api.errors import NotFound, ProblemError
from crm_api.kit import statements
from crm_api.kit.counting import count_total
from crm_api.kit.filtering import mask
from crm_api.kit.pagination import (
    PageParams,
    SortColumn,
    apply_keyset,
    page_envelope,
    page_shape,
)
from crm_api.kit.scoped_page import (
    PLAIN_OPTION,
    TRASH_OPTION,
    merged_page,
    merged_statement,
    merges,
)
from crm_api.kit.search import Search

Executor = Reader | AsyncSession

#: A statement the kit has scoped for one (resource, access): the only thing the kit's
#: readers accept. Built by :func:`scoped` / :func:`scoped_entity`, narrowed by
#: :func:`narrow`; ``ScopedSelect(stmt)`` anywhere else is a review finding.
ScopedSelect = NewType("ScopedSelect", Select[Any])


@dataclass(frozen=True, slots=True)
class OwnerScoped:
    """Rows carry their own owner and org unit, which the scope applies to (``org_unit``
    ``None``: owned by a user and placed nowhere, as personal access tokens; the org
    scopes then cover none); and, with ``creator``, who created them (the
    ``created_by_self`` scope; without it that scope covers none of the rows)."""

    owner: str = "owner_id"
    org_unit: str | None = "org_unit_id"
    creator: str | None = None


@dataclass(frozen=True, slots=True)
class ParentScoped:
    """Rows are visible exactly when their (live) parent is: contacts → customers."""

    parent: Resource
    #: This resource's column holding the parent's id.
    foreign_key: str


@dataclass(frozen=True, slots=True)
class UnitScoped:
    """Rows placed in an org unit but owned by nobody (an org unit is placed in itself):
    the org scopes apply to the unit column, ``own`` and ``subordinates`` cover none."""

    org_unit: str = "org_unit_id"


@dataclass(frozen=True, slots=True)
class Unscoped:
    """Reference data every holder of the permission reads whole (products); an access
    without any scope reads nothing (fail closed)."""


@dataclass(frozen=True, slots=True)
class Reference:
    """Rows of another table that keep a record from being deleted or purged (an order line
    naming a product): :func:`crm_api.kit.lifecycle.soft_delete` and ``purge`` refuse with
    ``error`` while one exists. The table is looked up by name in the models' metadata, so
    a reference to a table a later migration adds is declared before it exists and checked
    from the moment its model is part of the build (a ``Table`` is used as given)."""

    table: str | Table
    column: str
    error: Callable[[], ProblemError]


Scoping = OwnerScoped | ParentScoped | UnitScoped | Unscoped


@dataclass(frozen=True, slots=True)
class Placement:
    """The owner and org unit a record's scope, masking and audit events are judged by (a
    child's are its parent's)."""

    owner_id: uuid.UUID | None
    org_unit_id: uuid.UUID | None
    #: Who created it, for a resource that records it (the ``created_by_self`` scope).
    created_by: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Samples:
    """Test hooks: how the generated conformance tests (tests/test_conformance.py) make a
    valid record of this resource through the API. ``create`` gets the refs it may need
    (``owner_id``; ``parent_id`` for a parent-scoped resource; ``unique``, a fresh hex
    string for fields that must be unique) and returns a create body, with a value for
    every sensitive field;
    ``patch`` is a valid change (``None``: the resource has no ``PATCH``); ``wrong_type``
    a body field with a value of the wrong JSON type."""

    #: The collection URL (``/v1/customers``).
    path: str
    create: Callable[[Mapping[str, str]], dict[str, Any]]
    patch: dict[str, Any] | None
    wrong_type: dict[str, Any]
    #: A ``q`` term matching the sample record (``None``: the resource has no search).
    search: str | None = None
    #: The generated checks that apply (their names without ``check_``; ``None``: all). A
    #: resource without owned, trashable records (users) declares the ones it can meet.
    checks: frozenset[str] | None = None
    #: ``DELETE`` on a record's URL exists (users are deactivated instead).
    deletes: bool = True
    #: Records are made by their owner themself (a personal access token), not handed to
    #: them by the administrator.
    created_by_owner: bool = False
    #: Records the sample refers to, made first (through their own samples, owned by the
    #: same owner): ref name → registered resource name (orders: ``{"customer_id":
    #: "customers", "product_id": "products"}``); their ids reach ``create`` in ``refs``.
    requires: Mapping[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class Resource:
    """One declared resource. Everything else (columns, sort columns, base statements) is
    derived once, here."""

    #: The Casbin resource (``customers``): permissions, audit ``resource_type``.
    name: str
    #: The singular noun of messages (``customer``).
    label: str
    model: Any
    #: The public read schema: its fields are exactly the columns a response carries.
    schema: type[BaseModel]
    scoping: Scoping
    #: Sort keys (each member's value is a column name).
    sorts: type[StrEnum]
    not_found_code: str
    sensitive: tuple[str, ...] = ()
    soft_delete: bool = True
    #: What keeps a record from being deleted (order lines → products).
    referenced_by: tuple[Reference, ...] = ()
    #: Constraint name → the error a violation of it means (the safety net behind explicit
    #: checks: a concurrent writer won the index between our check and our write).
    constraints: Mapping[str, Callable[[], ProblemError]] = field(default_factory=dict)
    #: ``business``: granted with the business roles' defaults (authz/defaults.py);
    #: ``self``: no grant reaches it, every caller has its own records (personal access
    #: tokens: ``authz.dependencies.own_records``), so it is not a grantable resource.
    grant_group: Literal["business", "none", "self"] = "business"
    samples: Samples | None = None
    #: Schema fields that are not columns of the table: the resource's repository adds
    #: them to the scoped statement (:func:`with_columns`), as users' ``roles``.
    derived: tuple[str, ...] = ()
    #: ``q`` over the n-gram index (:mod:`crm_api.kit.search`); ``None``: the resource's
    #: repository matches ``q`` itself (small settings tables).
    search: Search | None = None

    table: Table = field(init=False)
    columns: list[KeyedColumnElement[Any]] = field(init=False)
    id_column: KeyedColumnElement[Any] = field(init=False)
    sort_columns: dict[str, SortColumn] = field(init=False)
    #: The column the org scopes apply to on this table (``None``: none, or the id itself).
    unit_column: KeyedColumnElement[Any] | None = field(init=False)
    #: Sort keys an index of live rows walks per org unit (``(org_unit_id, key, …)``): an
    #: org-scoped page sorted by one of them merges per-unit walks (kit/scoped_page.py).
    unit_sorts: frozenset[str] = field(init=False)
    #: The response columns of no rows in particular: the projection a merged page reads
    #: its rows with (kit/scoped_page.py), never a statement on its own.
    projection: Select[Any] = field(init=False)
    _live: Select[Any] = field(init=False)
    _trash: Select[Any] = field(init=False)
    #: ``numeric(p, s)`` columns → the quantum of their scale (``Decimal("0.0001")``).
    decimal_scales: dict[str, Decimal] = field(init=False)

    def __post_init__(self) -> None:
        table: Table = self.model.__table__
        self.table = table
        stored = [f for f in self.schema.model_fields if f not in self.derived]
        missing = [f for f in stored if f not in table.c]
        if missing:
            raise TypeError(f"{self.name}: schema fields without a column: {missing}")
        # the whitelist: the schema's fields, in the schema's order
        self.columns = [table.c[f] for f in stored]
        self.id_column = table.c.id
        self.sort_columns = {m.value: table.c[m.value] for m in self.sorts}
        unknown = [f for f in self.sensitive if f not in self.schema.model_fields]
        if unknown:
            raise TypeError(f"{self.name}: sensitive fields not in the schema: {unknown}")
        self.unit_column, self.unit_sorts = self._unit_walks()
        # Built once: select() coerces every column anew each time (~0.1 ms per request).
        base = self.projection = select(*self.columns)
        if self.soft_delete:
            self._live = base.where(table.c.deleted_at.is_(None))
            # marked, so the page builder knows the live-row indexes cannot serve it
            self._trash = base.where(table.c.deleted_at.is_not(None)).execution_options(
                **{TRASH_OPTION: True}
            )
        else:
            self._live = self._trash = base
        self.decimal_scales = {
            c.key: Decimal(1).scaleb(-c.type.scale)
            for c in self.columns
            if isinstance(c.type, Numeric) and c.type.scale is not None
        }

    def _unit_walks(self) -> tuple[KeyedColumnElement[Any] | None, frozenset[str]]:
        scoping = self.scoping
        if not isinstance(scoping, OwnerScoped | UnitScoped) or scoping.org_unit is None:
            # placed in no unit (derived columns come with the repository's statement,
            # which the merged page reads them from)
            return None, frozenset()
        unit = self.table.c[scoping.org_unit]
        if unit is self.id_column:
            return None, frozenset()
        keys = set()
        for index in self.table.indexes:
            cols = list(index.columns)
            if len(cols) >= 2 and cols[0] is unit and cols[1].key in self.sort_columns:
                where = index.dialect_options["postgresql"].get("where")
                # an index of every row, or of the live rows (what lists read)
                if where is None or str(where).strip() == "deleted_at IS NULL":
                    keys.add(cols[1].key)
        return unit, frozenset(keys)

    # --- errors -------------------------------------------------------------------------
    def not_found(self, record_id: uuid.UUID, *, detail: str | None = None) -> NotFound:
        return NotFound(detail or f"No {self.label} {record_id}.", code=self.not_found_code)

    # --- the columns the scope is judged on ----------------------------------------------
    def placement_columns(
        self,
    ) -> tuple[KeyedColumnElement[Any] | None, KeyedColumnElement[Any] | None]:
        """Owner and org unit columns the scope applies to (the parent's for a child)."""
        scoping = self.scoping
        if isinstance(scoping, OwnerScoped):
            unit = self.table.c[scoping.org_unit] if scoping.org_unit else None
            return self.table.c[scoping.owner], unit
        if isinstance(scoping, UnitScoped):
            return None, self.table.c[scoping.org_unit]
        if isinstance(scoping, ParentScoped):
            return scoping.parent.placement_columns()
        return None, None

    def creator_column(self) -> KeyedColumnElement[Any] | None:
        """The column holding who created a row (the parent's for a child), for the
        ``created_by_self`` scope; ``None``: that scope covers none of the rows."""
        scoping = self.scoping
        if isinstance(scoping, OwnerScoped) and scoping.creator is not None:
            return self.table.c[scoping.creator]
        if isinstance(scoping, ParentScoped):
            return scoping.parent.creator_column()
        return None

    def live_clause(self, deleted: bool = False) -> ColumnElement[bool] | None:
        if not self.soft_delete:
            return None
        col = self.table.c.deleted_at
        return col.is_not(None) if deleted else col.is_(None)

    def canonical(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with each Decimal of a ``numeric(p, s)`` column at the column's scale,
        as PostgreSQL stores it: a create or update answers (and audits) ``"12.5000"``,
        the same string a later read gives, not the ``"12.5"`` that was sent; and "no real
        change" compares like with like."""
        for key, quantum in self.decimal_scales.items():
            value = values.get(key)
            if isinstance(value, Decimal):
                values[key] = value.quantize(quantum, rounding=ROUND_HALF_UP)
        return values


# --- scope ---------------------------------------------------------------------------------
def scope_of(
    resource: Resource, access: Access, table: FromClause | None = None
) -> ColumnElement[bool] | None:
    """The scope predicate on ``resource``'s rows (``None``: unscoped reference data); on
    ``table``, an alias of the resource's table, when given (a subquery of the kit's
    search)."""
    scoping = resource.scoping
    if table is not None:
        if isinstance(scoping, OwnerScoped):
            unit = table.c[scoping.org_unit] if scoping.org_unit else None
            creator = table.c[scoping.creator] if scoping.creator else None
            return scope_clause(access, table.c[scoping.owner], unit, creator)
        if isinstance(scoping, UnitScoped):
            return scope_clause(access, None, table.c[scoping.org_unit])
        if isinstance(scoping, ParentScoped):
            parents = select(scoping.parent.id_column).where(
                _parent_in_scope(scoping.parent, access)
            )
            return table.c[scoping.foreign_key].in_(parents)
        return None if access.scope.kinds else false()
    if isinstance(scoping, OwnerScoped | UnitScoped):
        owner, unit = resource.placement_columns()
        return scope_clause(access, owner, unit, resource.creator_column())
    if isinstance(scoping, ParentScoped):
        return _of_parents(resource, scoping, _parent_in_scope(scoping.parent, access))
    # reference data: every scope covers all of it, no scope none of it
    return None if access.scope.kinds else false()


def _parent_in_scope(parent: Resource, access: Access) -> ColumnElement[bool]:
    """Live parents ``access`` covers (a predicate on the parent's table)."""
    clauses = [c for c in (parent.live_clause(), scope_of(parent, access)) if c is not None]
    return and_(*clauses)


def _of_parents(
    resource: Resource, scoping: ParentScoped, parents: ColumnElement[bool]
) -> ColumnElement[bool]:
    """Rows of the parents matching ``parents``. An ``IN`` over the parent rather than a
    correlated ``EXISTS``: PostgreSQL plans both as the same semi-join here, but this one
    also reads (and compiles) on its own, as the access explainer shows it."""
    parent = scoping.parent
    return resource.table.c[scoping.foreign_key].in_(select(parent.id_column).where(parents))


def unmasked_clause(resource: Resource, access: Access) -> ColumnElement[bool]:
    """True for the rows whose sensitive fields ``access`` may show: inside the caller's
    ``read_sensitive`` scope (on the parent's owner and unit for a child). A constant, with
    no subquery, when the answer is the same for every row."""
    owner, unit = resource.placement_columns()
    flag = sensitive_clause(access, owner, unit, resource.creator_column())
    scoping = resource.scoping
    if isinstance(scoping, ParentScoped) and per_row_sensitive(access):
        return _of_parents(resource, scoping, flag)
    return flag


def scoped(resource: Resource, access: Access, *, deleted: bool = False) -> ScopedSelect:
    """The response columns of the rows ``access`` covers; live ones, or only the trash
    with ``deleted``."""
    return statements.memo(
        ("scoped", resource.name, access, deleted), lambda: _scoped(resource, access, deleted)
    )


def _scoped(resource: Resource, access: Access, deleted: bool) -> ScopedSelect:
    stmt = resource._trash if deleted else resource._live
    clause = scope_of(resource, access)
    return ScopedSelect(stmt if clause is None else stmt.where(clause))


def scoped_entity(resource: Resource, access: Access, *, deleted: bool = False) -> ScopedSelect:
    """The ORM row (for a write), plus the parent's owner and org unit for a child, of the
    records ``access`` covers. For a child the parent is joined, carrying the same predicate
    as :func:`scoped`."""
    clauses: list[ColumnElement[bool]] = []
    live = resource.live_clause(deleted)
    if live is not None:
        clauses.append(live)
    scoping = resource.scoping
    if isinstance(scoping, ParentScoped):
        parent = scoping.parent
        owner, unit = parent.placement_columns()
        assert owner is not None and unit is not None, "a parent must be owner-scoped"
        creator = parent.creator_column()
        extra = [creator] if creator is not None else []
        stmt = select(resource.model, owner, unit, *extra).join(
            parent.table, parent.id_column == resource.table.c[scoping.foreign_key]
        )
        clauses.append(_parent_in_scope(parent, access))
    else:
        stmt = select(resource.model)
        clause = scope_of(resource, access)
        if clause is not None:
            clauses.append(clause)
    return ScopedSelect(stmt.where(*clauses))


def narrow(stmt: ScopedSelect, *clauses: ColumnElement[bool] | None) -> ScopedSelect:
    """``stmt`` with ``clauses`` (``None`` ones skipped) added: a filter can only narrow
    what the scope lets through, so the result is still scoped."""
    present = [c for c in clauses if c is not None]
    return ScopedSelect(stmt.where(and_(*present))) if present else stmt


def with_columns(stmt: ScopedSelect, *columns: ColumnElement[Any]) -> ScopedSelect:
    """``stmt`` selecting ``columns`` too (a resource's :attr:`Resource.derived` fields):
    more columns of the same rows, so the result is still scoped."""
    return ScopedSelect(stmt.add_columns(*columns))


def plain_page(stmt: ScopedSelect) -> ScopedSelect:
    """``stmt``, read as the plain keyset page even where a per-unit merge would apply
    (kit/scoped_page.py, ``PLAIN_OPTION``: a search's relevance ranks)."""
    return ScopedSelect(stmt.execution_options(**{PLAIN_OPTION: True}))


def derived(
    key: tuple[Any, ...],
    base: ScopedSelect,
    build: Callable[[], ScopedSelect],
    cache: statements.LRU | None = None,
) -> ScopedSelect:
    """``build()`` (``base`` narrowed, or with columns added: still scoped), once per
    ``key`` and ``base`` (:func:`crm_api.kit.statements.derived`)."""
    return ScopedSelect(statements.derived(key, base, build, cache))


# --- reads -----------------------------------------------------------------------------------
def _flag(resource: Resource, access: Access) -> ColumnElement[Any] | None:
    """The per-row masking flag, when masking depends on the row: otherwise the answer
    is ``access.sensitive`` for every row (:func:`_masks`), and no column."""
    if not resource.sensitive or not per_row_sensitive(access):
        return None
    return unmasked_clause(resource, access).label(UNMASKED)


def _with_flag(resource: Resource, access: Access, stmt: ScopedSelect) -> Select[Any]:
    flag = _flag(resource, access)
    return stmt if flag is None else stmt.add_columns(flag)


def _masks(resource: Resource, access: Access) -> bool:
    """Whether rows read by ``access`` need :func:`mask_row` (some may be masked)."""
    return bool(resource.sensitive) and (not access.sensitive or per_row_sensitive(access))


#: ``stmt`` with the per-row masking flag where masking depends on the row (kit/search.py).
flagged = _with_flag


def mask_row(resource: Resource, access: Access, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the sensitive fields masked unless its flag (taken out of the row) says
    they may be shown; a row without the flag is judged by ``access.sensitive``."""
    shown = row.pop(UNMASKED, access.sensitive)
    if not shown:
        for name in resource.sensitive:
            row[name] = mask(row[name])
    return row


def page_statement(
    resource: Resource, access: Access, stmt: ScopedSelect, params: PageParams
) -> Select[Any]:
    """The SQL of one page of ``stmt`` with the masking flag: a merge of per-unit walks
    for an org scope that pays for it (kit/scoped_page.py), else the plain keyset page.
    (The benchmark's raw floor runs this same statement.)"""
    flag = _flag(resource, access)
    paged = merged_page(resource, access, stmt, flag, params)
    if paged is not None:
        return paged
    query = stmt if flag is None else stmt.add_columns(flag)
    return apply_keyset(query, resource.sort_columns, resource.id_column, params)


async def fetch_page(
    executor: Executor,
    resource: Resource,
    access: Access,
    stmt: ScopedSelect,
    params: PageParams,
    values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a scoped, filtered statement as one keyset page (plus an opt-in count), masked.
    ``values``: the values of ``stmt``'s own named parameters (a cached ``q`` statement's
    term, patterns and grams: kit/search.py)."""
    total, estimated = None, False
    if params.include_total:
        # counted on the bare statement: the masking flag changes no row count
        total, estimated = await count_total(executor, stmt, params.count_cap, values)
    units = merges(resource, access, stmt, params.sort)
    if units is not None:
        # an org scope that pays for per-unit walks (kit/scoped_page.py), built once per
        # (statement, access, page shape) like the plain page
        shape, page_values = page_shape(params, resource.sort_columns)
        merged = statements.derived(
            ("merged", access, shape),
            stmt,
            lambda: merged_statement(resource, stmt, _flag(resource, access), units, shape),
        )
        result = await executor.execute(
            merged, {**values, **page_values} if values else page_values
        )
    else:
        # built once per (statement, access, page shape); the cursor's values and the
        # limit are parameters (kit/statements.py)
        paged, page_values = statements.page(
            resource, access, stmt, params, lambda: _with_flag(resource, access, stmt)
        )
        result = await executor.execute(paged, {**values, **page_values} if values else page_values)
    # Plain tuples zipped with the keys once: ~20% cheaper than a RowMapping per row.
    keys = tuple(result.keys())
    rows = [dict(zip(keys, row, strict=True)) for row in result.all()]
    if _masks(resource, access):
        rows = [mask_row(resource, access, r) for r in rows]
    return page_envelope(rows, params, total, estimated)


async def get_row(
    executor: Executor,
    resource: Resource,
    access: Access,
    stmt: ScopedSelect,
    record_id: uuid.UUID,
) -> dict[str, Any] | None:
    """One record of ``stmt`` by id, masked; ``None`` when ``stmt`` does not cover it."""
    query = statements.by_id(resource, access, stmt, lambda: _with_flag(resource, access, stmt))
    row = (await executor.execute(query, {"record_id": record_id})).mappings().first()
    if row is None:
        return None
    return mask_row(resource, access, dict(row)) if _masks(resource, access) else dict(row)


async def read_or_404(
    executor: Executor,
    resource: Resource,
    access: Access,
    record_id: uuid.UUID,
    stmt: ScopedSelect | None = None,
) -> dict[str, Any]:
    """The live record as ``access`` may see it (through ``stmt``, a resource's own scoped
    statement with its derived columns, else :func:`scoped`); 404 (the resource's code)
    otherwise."""
    stmt = scoped(resource, access) if stmt is None else stmt
    row = await get_row(executor, resource, access, stmt, record_id)
    if row is None:
        raise resource.not_found(record_id)
    return row


def to_dict(resource: Resource, obj: Any) -> dict[str, Any]:
    """An ORM row as the public schema's fields (what a response, an audit diff and a
    masking decision see)."""
    return {c.key: getattr(obj, c.key) for c in resource.columns}


async def present(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    row: dict[str, Any],
    placement: Placement,
) -> dict[str, Any]:
    """A row just written, as the caller may see it: masked by the ``read_sensitive`` scope
    evaluated on ``placement`` (no round trip when it is the same for every row)."""
    if not resource.sensitive:
        return row
    if placement.owner_id is None:
        row[UNMASKED] = access.sensitive
    else:
        row[UNMASKED] = await unmasked_for(
            session, access, placement.owner_id, placement.org_unit_id, placement.created_by
        )
    return mask_row(resource, access, row)


async def referenced(
    session: AsyncSession, resource: Resource, record_id: uuid.UUID
) -> Reference | None:
    """The first declared :class:`Reference` that rows of its table still make to the
    record (one indexed ``EXISTS`` each); ``None`` when nothing does or the referencing
    table is not part of this build."""
    for ref in resource.referenced_by:
        table = (
            ref.table
            if isinstance(ref.table, Table)
            else resource.table.metadata.tables.get(ref.table)
        )
        if table is None:
            continue
        stmt = select(exists().where(table.c[ref.column] == record_id))
        if (await session.execute(stmt)).scalar_one():
            return ref
    return None


# --- locks -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Locked:
    """A row locked ``FOR UPDATE`` and where it is placed (its own owner and unit, read
    live from the row, or its parent's)."""

    resource: Resource
    row: Any
    parent: Placement | None = None

    @property
    def placement(self) -> Placement:
        if self.parent is not None:
            return self.parent
        scoping = self.resource.scoping
        if isinstance(scoping, OwnerScoped):
            unit = getattr(self.row, scoping.org_unit) if scoping.org_unit else None
            creator = getattr(self.row, scoping.creator) if scoping.creator else None
            return Placement(getattr(self.row, scoping.owner), unit, creator)
        if isinstance(scoping, UnitScoped):
            return Placement(None, getattr(self.row, scoping.org_unit))
        return Placement(None, None)

    @property
    def id(self) -> uuid.UUID:
        record_id: uuid.UUID = self.row.id
        return record_id


async def lock(
    session: AsyncSession, resource: Resource, stmt: ScopedSelect, record_id: uuid.UUID
) -> Locked | None:
    """The ORM row of ``stmt`` (from :func:`scoped_entity`) by id, locked ``FOR UPDATE``
    (the row only, not its parent), as the lock found it: fresh from the database, not a
    copy the session's identity map held from before the lock."""
    query = (
        stmt.where(resource.id_column == record_id)
        .with_for_update(of=resource.model)
        .execution_options(populate_existing=True)
    )
    row: Any = (await session.execute(query)).first()
    if row is None:
        return None
    if isinstance(resource.scoping, ParentScoped):
        return Locked(resource, row[0], Placement(*row[1:]))
    return Locked(resource, row[0])
