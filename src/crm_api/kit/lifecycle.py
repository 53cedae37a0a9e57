"""Lifecycle helpers of a declared :class:`~crm_api.kit.resource.Resource`: what every
create, update, delete, restore and purge does, in one place, each auditing itself through
:func:`crm_api.audit.service.record`.

- lock-or-404 with ``If-Match`` (412, or 428 when settings require it): :func:`lock_or_404`;
- the masked write-back rule (:mod:`crm_api.authz.masking`) for the declared sensitive
  fields, and the owner/unit placement rule (:func:`crm_api.kit.transfer.check_placement`)
  for an owned resource: :func:`prepare_create`, :func:`prepare_update`;
- null checks and "nothing really changed → no write, no event": :func:`prepare_update`,
  :func:`save_changes`;
- soft delete, restore, purge: :func:`soft_delete`, :func:`restore`, :func:`purge`;
- constraint name → the documented 409/422: :func:`flush`; or, where the error must name
  what holds a unique key, the transaction rolled back and the error built by a look-up
  after it (:data:`Resolve`): the unique index decides, and only a duplicate pays.

Services call these and add their own rules in between (duplicates, a primary contact);
they never commit (the request owns the transaction).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Executable, Insert, Result, TextClause, bindparam, select
from sqlalchemy import insert as sql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import service as audit
from crm_api.authz.masking import reject_masked, resolve_masked
from crm_api.authz.scope import UNMASKED, per_row_sensitive
from crm_api.authz.types import Access, PrincipalKind
from crm_api.errors import Forbidden, ProblemError, UnprocessableEntity
from crm_api.kit import statements
from crm_api.kit.concurrency import check_if_match
from crm_api.kit.idempotency import Claim
from crm_api.kit.resource import (
    Locked,
    OwnerScoped,
    Placement,
    Resource,
    lock,
    mask_row,
    present,
    referenced,
    scoped_entity,
    to_dict,
    unmasked_clause,
)
from crm_api.kit.transfer import Assignee, check_placement, invalid_owner


class Users(Protocol):
    """Where owners are looked up (the user domain's service, passed in: the kit depends on
    no domain)."""

    async def get_active_user(
        self, session: AsyncSession, user_id: uuid.UUID
    ) -> Assignee | None: ...

    async def find_user(self, session: AsyncSession, user_id: uuid.UUID) -> Assignee | None: ...


Overrides = Mapping[str, Callable[[], ProblemError]]

#: The error a violated constraint means, given a session to read in, the constraint's
#: name and the record as the failed statement was writing it (every column it set, ``id``
#: included); ``None``: nothing to say beyond the declared error. Called after the
#: request's transaction was rolled back, with a session of its own (the request's may be
#: inside ``session.begin()``, which takes no statement after a rollback): it may read the
#: holder of a unique key, committed by now, and whether the caller may see it. The
#: caller then raises, and the request writes nothing.
Resolve = Callable[[AsyncSession, str, Mapping[str, Any]], Awaitable[ProblemError | None]]


def record_event(
    session: AsyncSession,
    access: Access,
    resource: Resource,
    action: str,
    record_id: uuid.UUID,
    placement: Placement,
    changes: dict[str, Any],
) -> None:
    """One audit event of ``resource`` (through :func:`crm_api.audit.service.record`),
    filed under the record's placement (its parent's for a child), so the trail is scoped
    like the records: what every helper below writes, and what a resource's own actions
    (``rotate_secret``, ``grant_create``, ``move``) write with changes of their own."""
    audit.record(
        session,
        access.principal,
        action=action,
        resource_type=resource.name,
        resource_id=record_id,
        changes=changes,
        owner_id=placement.owner_id,
        org_unit_id=placement.org_unit_id,
    )


def _audit(
    session: AsyncSession,
    access: Access,
    resource: Resource,
    action: str,
    record_id: uuid.UUID,
    placement: Placement,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """An event with the field-level diff (sensitive values hidden), plus ``extra``
    changes that are not columns (a password changed, roles replaced)."""
    changes = audit.diff(before, after, resource.sensitive)
    changes.update(extra or {})
    record_event(session, access, resource, action, record_id, placement, changes)


# --- flush -----------------------------------------------------------------------------------
async def flush(
    session: AsyncSession,
    resource: Resource,
    overrides: Overrides | None = None,
    *,
    resolve: Resolve | None = None,
    record: Mapping[str, Any] | None = None,
) -> None:
    """Flush, turning a violation of a declared constraint (``resource.constraints``, then
    ``overrides`` for this call) into the error it means; anything else propagates. With
    ``resolve``, a violation first rolls the transaction back and asks it for the error
    (:data:`Resolve`, given ``record``)."""
    try:
        await session.flush()
    except IntegrityError as exc:
        await _resolve(session, exc, resolve, record)
        _raise_declared(exc, resource, overrides)
        raise


async def execute(
    session: AsyncSession,
    resource: Resource,
    stmt: Executable,
    overrides: Overrides | None = None,
    values: Mapping[str, Any] | None = None,
    *,
    resolve: Resolve | None = None,
    record: Mapping[str, Any] | None = None,
) -> Result[Any]:
    """:func:`flush` for a Core statement (with ``values`` for its named parameters): run
    it, mapping a declared constraint's violation to the error it means."""
    try:
        return await session.execute(stmt, values)
    except IntegrityError as exc:
        await _resolve(session, exc, resolve, record)
        _raise_declared(exc, resource, overrides)
        raise


def violated(exc: IntegrityError) -> str | None:
    """The name of the constraint (or unique index) ``exc`` reports violated, as asyncpg
    gives it; ``None`` when the driver named none."""
    name = getattr(exc.orig, "constraint_name", None) or getattr(
        getattr(exc.orig, "__cause__", None), "constraint_name", None
    )
    return name if isinstance(name, str) else None


async def _resolve(
    session: AsyncSession,
    exc: IntegrityError,
    resolve: Resolve | None,
    record: Mapping[str, Any] | None,
) -> None:
    """Raise what ``resolve`` says ``exc`` means, after rolling back the transaction the
    violation aborted (PostgreSQL refuses every statement in it until then). Rolling back
    drops whatever the request wrote before (an ``Idempotency-Key`` claimed in an earlier
    statement too): fine, because the caller raises, and a refused request writes nothing.
    A caller whose transaction must go on after a taken key uses ``INSERT … ON CONFLICT``
    instead (:func:`insert_unless_exists`)."""
    name = violated(exc)
    if resolve is None or name is None:
        return
    await session.rollback()
    async with AsyncSession(session.bind) as reader:
        error = await resolve(reader, name, record or {})
    if error is not None:
        raise error from exc


def _raise_declared(exc: IntegrityError, resource: Resource, overrides: Overrides | None) -> None:
    """The error a declared constraint's violation means, raised from ``exc``; returns
    when ``exc`` names no declared constraint (the caller re-raises it)."""
    text = str(exc.orig)
    for name, error in {**resource.constraints, **(overrides or {})}.items():
        if name in text:
            raise error() from exc


# --- locks -----------------------------------------------------------------------------------
async def lock_or_404(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    record_id: uuid.UUID,
    *,
    deleted: bool = False,
    if_match: str | None = None,
    require_if_match: bool = False,
    detail: str | None = None,
) -> Locked:
    """The record ``access`` covers, locked ``FOR UPDATE`` (live, or in the trash with
    ``deleted``), its ``If-Match`` checked against the locked version. Raises the
    resource's 404, 412 ``version_mismatch``, 428 ``if_match_required``."""
    locked = await lock(
        session, resource, scoped_entity(resource, access, deleted=deleted), record_id
    )
    if locked is None:
        raise resource.not_found(record_id, detail=detail)
    check_if_match(if_match, locked.row.version, required=require_if_match)
    return locked


# --- owner and org unit ----------------------------------------------------------------------
def _acting_user(access: Access) -> uuid.UUID | None:
    # an API client acts through its service account: that user id is the principal's id,
    # so what it creates is its own, like a person's
    principal = access.principal
    acting = principal.kind in (PrincipalKind.user, PrincipalKind.api_client)
    return principal.id if acting else None


async def place_new(
    session: AsyncSession,
    access: Access,
    assign: Access | None,
    owner_id: uuid.UUID | None,
    org_unit_id: uuid.UUID | None,
    users: Users,
    default: Placement | None = None,
) -> Placement:
    """Owner and org unit of a new owned record: ``default`` (an order: its customer's
    owner and unit), else the caller and their unit, unless the body names others, which
    needs ``assign`` and must satisfy :func:`check_placement`."""
    base_owner: uuid.UUID | None
    if default is not None and default.owner_id is not None:
        base_owner, base_unit = default.owner_id, default.org_unit_id
    else:
        # The caller owns it, in their own unit: the principal already holds both (an
        # active user: the token was just checked against the cached user facts, kept
        # fresh like every authorization decision), so no user lookup.
        base_owner, base_unit = _acting_user(access), access.principal.org_unit_id
    if owner_id is None:
        if base_owner is None:
            raise UnprocessableEntity(
                "owner_id is required when the caller is not a user.",
                code="owner_required",
                errors=[{"field": "owner_id", "code": "missing", "message": "required"}],
            )
        owner_id = base_owner
    chosen = owner_id != base_owner or org_unit_id is not None
    if chosen and assign is None:
        raise Forbidden(
            "Setting another owner or the org unit needs the 'assign' permission.",
            code="assign_not_allowed",
        )
    if not chosen:
        return Placement(owner_id, base_unit)
    owner = await users.get_active_user(session, owner_id)
    if owner is None:
        raise invalid_owner()
    unit = org_unit_id if org_unit_id is not None else owner.org_unit_id
    if assign is not None and chosen:
        await check_placement(session, assign, owner, unit)
    return Placement(owner_id, unit)


async def check_move(
    session: AsyncSession,
    assign: Access | None,
    locked: Locked,
    scoping: OwnerScoped,
    changes: dict[str, Any],
    users: Users,
) -> None:
    """An update that really changes the owner or org unit needs ``assign`` and must satisfy
    :func:`check_placement`; a new owner brings their unit unless one is sent. (A client
    that GETs a record and PATCHes it back whole sends the current values: no change.)"""
    row = locked.row
    unit_key = scoping.org_unit
    assert unit_key is not None, "only records placed in a unit move between units"
    owner_changed = scoping.owner in changes and changes[scoping.owner] != getattr(
        row, scoping.owner
    )
    unit_changed = unit_key in changes and changes[unit_key] != getattr(row, unit_key)
    if not (owner_changed or unit_changed):
        return
    if assign is None:
        raise Forbidden(
            "Changing the owner or org unit needs the 'assign' permission.",
            code="assign_not_allowed",
        )
    owner: Assignee | None
    if owner_changed:
        owner = await users.get_active_user(session, changes[scoping.owner])
        if owner is None:
            raise invalid_owner()
        changes.setdefault(unit_key, owner.org_unit_id)
    else:
        # the current owner stays (even if deactivated since); only the unit moves
        owner = await users.find_user(session, getattr(row, scoping.owner))
    await check_placement(
        session,
        assign,
        owner,
        changes.get(unit_key, getattr(row, unit_key)),
        check_owner=owner_changed,
    )


# --- create ----------------------------------------------------------------------------------
async def prepare_create(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    assign: Access | None,
    values: dict[str, Any],
    users: Users | None = None,
    *,
    default: Placement | None = None,
) -> tuple[dict[str, Any], Placement | None]:
    """``values`` of a new record checked by the rules every resource shares: no masked
    value in a sensitive field (422 ``masked_value``); for an owned resource, owner and
    org unit resolved and placed (:func:`place_new`, ``default`` its default placement;
    needs ``users``), returned as the record's :class:`Placement`."""
    reject_masked(values, resource.sensitive)
    resource.canonical(values)  # numeric values at their column's scale, as stored
    scoping = resource.scoping
    if not isinstance(scoping, OwnerScoped) or scoping.org_unit is None:
        # not placed by these rules: a record without a unit is its creator's, by its
        # resource's own service (a personal access token)
        return values, None
    assert users is not None, "an owned resource needs users to place its records"
    placement = await place_new(
        session,
        access,
        assign,
        values.pop(scoping.owner, None),
        values.pop(scoping.org_unit, None),
        users,
        default,
    )
    values[scoping.owner], values[scoping.org_unit] = placement.owner_id, placement.org_unit_id
    if scoping.creator is not None:
        placement = replace(placement, created_by=_acting_user(access))
    return values, placement


def _new_row(
    resource: Resource,
    access: Access,
    values: Mapping[str, Any],
    now: datetime,
    record_id: uuid.UUID | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """The full row of a new record of ``values`` (``record_id``: an id chosen beforehand)
    and the public columns only the server can fill (read back by ``RETURNING``)."""
    row: dict[str, Any] = {"id": record_id or uuid.uuid4()}
    # the bookkeeping columns a table has (a personal access token has no version)
    row.update((k, v) for k, v in _bookkeeping(now) if k in resource.table.c)
    row.update(values)
    scoping = resource.scoping
    if isinstance(scoping, OwnerScoped) and scoping.creator is not None:
        row.setdefault(scoping.creator, _acting_user(access))
    # Every public column gets an explicit value (its Python default, else NULL), so the
    # record as written — the response and the audit diff — is known before the INSERT,
    # and the INSERT needs no RETURNING nor a re-read. A column only the server can fill
    # (a server default and no Python one) is read back by RETURNING, and the event then
    # follows in a second statement.
    from_server = []
    for column in resource.columns:
        if column.key in row:
            continue
        default = getattr(column, "default", None)
        if default is not None and default.is_scalar:
            row[column.key] = default.arg
        elif default is not None and default.is_callable:
            row[column.key] = default.arg(None)
        elif getattr(column, "server_default", None) is not None:
            from_server.append(column)
        else:
            row[column.key] = None
    return row, from_server


def _insert_of(resource: Resource, row: Mapping[str, Any]) -> Insert:
    """``INSERT INTO <resource> (<row's columns>) VALUES (:r_<column>, …)``."""
    table = resource.table
    return sql_insert(table).values({k: bindparam(f"r_{k}", type_=table.c[k].type) for k in row})


@dataclass(frozen=True, slots=True)
class Beside:
    """A data-modifying statement written in the record's own INSERT (a CTE: one round
    trip), such as an order's lines: built once by ``build`` (named parameters only; the
    new record's id is ``:r_id``), cached under ``name``, run with ``values``."""

    name: str
    build: Callable[[], Insert]
    values: Mapping[str, Any]


Drawn = Mapping[str, Callable[[], ColumnElement[Any]]]


def _insert_drawing(
    resource: Resource,
    row: Mapping[str, Any],
    event: Mapping[str, Any],
    drawn: Drawn,
    beside: Beside | None,
) -> Insert:
    """``WITH drawn AS (SELECT <expr> AS <column>, …), <beside>, <audit event>
    INSERT INTO <resource> (<row's columns>, <drawn columns>) SELECT :r_<column>, …,
    drawn.<column> FROM drawn RETURNING <drawn columns>``: values the database draws
    (a number from a sequence) evaluated once, after every check made before this
    statement, and seen by the record and its event alike."""
    table = resource.table
    source = select(*(build().label(name) for name, build in drawn.items())).cte("drawn")
    values = [bindparam(f"r_{k}", type_=table.c[k].type) for k in row]
    stmt = (
        sql_insert(table)
        .from_select(
            [*row, *drawn], select(*values, *(source.c[k] for k in drawn)).select_from(source)
        )
        .returning(*(table.c[k] for k in drawn))
    )
    if beside is not None:
        stmt = stmt.add_cte(beside.build().cte(f"beside_{beside.name}"))
    return audit.insert_with_drawn(stmt, event, source, tuple(drawn))


def _create_event(
    resource: Resource,
    access: Access,
    record_id: uuid.UUID,
    placement: Placement,
    row: Mapping[str, Any],
    children: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The ``create`` audit event of a new record: its columns (and ``children``) as the
    diff from nothing, sensitive ones masked, plus ``extra``."""
    return audit.row(
        access.principal,
        action="create",
        resource_type=resource.name,
        resource_id=record_id,
        owner_id=placement.owner_id,
        org_unit_id=placement.org_unit_id,
        changes={
            **audit.diff(
                None,
                {
                    **{c.key: row[c.key] for c in resource.columns if c.key in row},
                    **(children or {}),
                },
                resource.sensitive,
            ),
            **(extra or {}),
        },
        occurred_at=now,
    )


async def insert(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    values: Mapping[str, Any],
    placement: Placement,
    overrides: Overrides | None = None,
    children: Mapping[str, Any] | None = None,
    *,
    record_id: uuid.UUID | None = None,
    extra: Mapping[str, Any] | None = None,
    drawn: Drawn | None = None,
    beside: Beside | None = None,
    claim: Claim | None = None,
    resolve: Resolve | None = None,
) -> dict[str, Any]:
    """Insert a record of ``values`` (``record_id``: an id chosen beforehand, as a user's
    reporting line needs), audited as ``create`` under ``placement`` with the ``extra``
    changes that are not public columns; the record as the caller may see it.
    ``children``: what the caller writes beside the record (an order's lines), shown in
    the audit event with it; ``beside``: the statement that writes them, run inside the
    record's INSERT. ``drawn``: columns whose values the INSERT itself draws (an order's
    number: ``{"number": lambda: <SQL expression>}``), read back and audited like the
    others; only for a record of no server-filled column and no per-row masking.
    ``claim``: the request's ``Idempotency-Key`` (:func:`crm_api.kit.idempotency.
    idempotent_folded`), claimed in the record's own statement where it can be (else
    by a statement of its own, first). ``resolve``: the error a violated unique key
    means, looked up after the failed INSERT (:data:`Resolve`) — the index decides, no
    check before it."""
    now = datetime.now(UTC)
    row, from_server = _new_row(resource, access, values, now, record_id)
    if drawn or beside is not None:
        assert claim is None, "claim the key in an earlier statement"
        assert resolve is None, "a drawn insert maps its constraints by overrides"
        return await _insert_drawn(
            session,
            resource,
            access,
            row,
            placement,
            overrides,
            children,
            extra,
            now,
            drawn or {},
            beside,
            from_server,
        )
    record_id = row["id"]
    flag: ColumnElement[bool] | None = None
    if (
        resource.sensitive
        and isinstance(resource.scoping, OwnerScoped)
        and per_row_sensitive(access)
    ):
        # the read_sensitive decision on the row just inserted, in the same statement
        flag = unmasked_clause(resource, access).label(UNMASKED)
    event = _create_event(resource, access, record_id, placement, row, children, extra, now)
    if not from_server and flag is None and claim is not None:
        # the Idempotency-Key's claim in the same statement: the record and its event are
        # selected from the claim's RETURNING, so a live key writes neither
        stmt = statements.memo(
            ("insert-claimed", resource.name, tuple(row), tuple(event)),
            lambda: _insert_claimed(resource, row, event),
        )
        values = {
            **{f"r_{k}": v for k, v in row.items()},
            **audit.bound(event),
            **claim.values(),
        }
        returned = await execute(
            session, resource, stmt, overrides, values, resolve=resolve, record=row
        )
        claim.settle(returned.first() is not None)
    elif not from_server and flag is None:
        # the common case, one statement built once per (resource, columns): the record
        # and its event as named parameters, nothing to coerce or hash per request
        stmt = statements.memo(
            ("insert", resource.name, tuple(row), tuple(event)),
            lambda: audit.insert_with(_insert_of(resource, row), event, bind=True),
        )
        values = {**{f"r_{k}": v for k, v in row.items()}, **audit.bound(event)}
        returned = await execute(
            session, resource, stmt, overrides, values, resolve=resolve, record=row
        )
    else:
        if claim is not None:
            await claim.run()
        stmt = sql_insert(resource.table).values(**row)
        stmt = stmt.returning(*from_server, *([flag] if flag is not None else []))
        if not from_server:
            stmt = audit.insert_with(stmt, event)
        returned = await execute(session, resource, stmt, overrides, resolve=resolve, record=row)
    after = {c.key: row.get(c.key) for c in resource.columns}
    if from_server or flag is not None:
        got = returned.mappings().one()
        after.update({c.key: got[c.key] for c in from_server})
    if from_server:
        event["changes"] = {
            **audit.diff(None, {**after, **(children or {})}, resource.sensitive),
            **(extra or {}),
        }
        await audit.record_all(
            session,
            access.principal,
            [
                {
                    k: v
                    for k, v in event.items()
                    if k not in ("id", "occurred_at", "actor_type", "actor_id", "request_id")
                }
            ],
        )
    if flag is not None:
        after[UNMASKED] = bool(got[UNMASKED])
        return mask_row(resource, access, after)
    return await present(session, resource, access, after, placement)


async def _insert_drawn(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    row: dict[str, Any],
    placement: Placement,
    overrides: Overrides | None,
    children: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None,
    now: datetime,
    drawn: Drawn,
    beside: Beside | None,
    from_server: list[Any],
) -> dict[str, Any]:
    """:func:`insert` with ``drawn`` columns and a ``beside`` statement: one statement,
    built once per (resource, columns, drawn, beside)."""
    per_row = resource.sensitive and isinstance(resource.scoping, OwnerScoped)
    assert not from_server and not (per_row and per_row_sensitive(access)), (
        "drawn columns need a record known before its INSERT"
    )
    assert not set(drawn) & set(resource.sensitive), "a drawn column is shown in the audit"
    for name in drawn:
        row.pop(name, None)
    event = _create_event(resource, access, row["id"], placement, row, children, extra, now)
    stmt = statements.memo(
        (
            "insert-drawn",
            resource.name,
            tuple(row),
            tuple(event),
            tuple(drawn),
            beside.name if beside is not None else None,
        ),
        lambda: _insert_drawing(resource, row, event, drawn, beside),
    )
    values = {
        **{f"r_{k}": v for k, v in row.items()},
        **audit.bound(event),
        **(beside.values if beside is not None else {}),
    }
    got = (await execute(session, resource, stmt, overrides, values)).one()
    after = {c.key: row.get(c.key) for c in resource.columns}
    after.update(zip(drawn, got, strict=True))
    return await present(session, resource, access, after, placement)


def _insert_claimed(resource: Resource, row: Mapping[str, Any], event: Mapping[str, Any]) -> Insert:
    """``WITH idempotency_claim AS (<claim>), audit_event AS (INSERT … SELECT :a_…
    FROM idempotency_claim) INSERT INTO <resource> (…) SELECT :r_<column>, … FROM
    idempotency_claim RETURNING id``: one row back exactly when this request took the
    key (and wrote the record and its event)."""
    table = resource.table
    source = Claim.source()
    values = [bindparam(f"r_{k}", type_=table.c[k].type) for k in row]
    stmt = (
        sql_insert(table)
        .from_select(list(row), select(*values).select_from(source))
        .returning(resource.id_column)
    )
    return audit.insert_with_drawn(stmt, event, source, ())


def _bookkeeping(now: datetime) -> tuple[tuple[str, Any], ...]:
    return (("created_at", now), ("updated_at", now), ("version", 1))


@dataclass(frozen=True, slots=True)
class ConflictTarget:
    """A unique index an ``INSERT … ON CONFLICT DO NOTHING`` yields to: its columns and,
    for a partial index, its predicate (which PostgreSQL needs to infer the index)."""

    columns: tuple[str, ...]
    where: ColumnElement[bool] | TextClause | None = None


async def insert_unless_exists(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    values: Mapping[str, Any],
    placement: Placement,
    target: ConflictTarget | None = None,
    overrides: Overrides | None = None,
) -> dict[str, Any] | None:
    """:func:`insert`, unless a row with the same key in ``target``'s unique index (with
    no ``target``: in any unique index of the table) exists or is being inserted by a
    concurrent transaction (whose end PostgreSQL waits for): then nothing is written, no
    event, and ``None`` comes back — the caller reads the row that won. One statement, so
    concurrent callers of one key make exactly one record (where a check-then-insert lets
    both pass the check), and the transaction goes on either way. A violation of any
    other constraint raises as :func:`insert`'s does."""
    now = datetime.now(UTC)
    row, from_server = _new_row(resource, access, values, now)
    stmt = (
        pg_insert(resource.table)
        .values(**row)
        .on_conflict_do_nothing(
            index_elements=list(target.columns) if target is not None else None,
            index_where=target.where if target is not None else None,
        )
        .returning(resource.id_column, *from_server)
    )
    after = {c.key: row.get(c.key) for c in resource.columns}
    if from_server:
        got = (await execute(session, resource, stmt, overrides)).mappings().first()
        if got is None:
            return None
        after.update({c.key: got[c.key] for c in from_server})
        _audit(session, access, resource, "create", row["id"], placement, None, after)
    else:
        # The record and its event in one statement, as :func:`insert` writes them: the
        # event is selected from the insert's RETURNING, so a conflict writes neither.
        event = audit.row(
            access.principal,
            action="create",
            resource_type=resource.name,
            resource_id=row["id"],
            owner_id=placement.owner_id,
            org_unit_id=placement.org_unit_id,
            changes=audit.diff(None, after, resource.sensitive),
            occurred_at=now,
        )
        both = audit.insert_after(stmt, event)
        if (await execute(session, resource, both, overrides)).first() is None:
            return None
    return await present(session, resource, access, after, placement)


# --- update ----------------------------------------------------------------------------------
def reject_nulls(sent: Mapping[str, Any], not_nullable: Iterable[str]) -> None:
    nulled = sorted(k for k, v in sent.items() if v is None and k in set(not_nullable))
    if nulled:
        raise UnprocessableEntity(
            "These fields cannot be null.",
            code="validation_error",
            errors=[
                {"field": f, "code": "null_not_allowed", "message": "may not be null"}
                for f in nulled
            ],
        )


async def prepare_update(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    assign: Access | None,
    locked: Locked,
    sent: Mapping[str, Any],
    *,
    not_nullable: Iterable[str] = (),
    users: Users | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(before, changes)`` of a patch: nulls refused for ``not_nullable``; sensitive
    values that echo what the caller was shown dropped (any other mask: 422); an owner or
    unit change checked (:func:`check_move`); and only what really differs kept."""
    reject_nulls(sent, not_nullable)
    before = to_dict(resource, locked.row)
    placement = locked.placement
    changes = await resolve_masked(
        session,
        access,
        sent,
        before,
        resource.sensitive,
        owner_id=placement.owner_id,  # type: ignore[arg-type]
        org_unit_id=placement.org_unit_id,
        created_by=placement.created_by,
    )
    resource.canonical(changes)  # numeric values at their column's scale, as stored
    scoping = resource.scoping
    if isinstance(scoping, OwnerScoped) and scoping.org_unit is not None:
        assert users is not None, "an owned resource needs users to check owner changes"
        await check_move(session, assign, locked, scoping, changes, users)
    return before, {k: v for k, v in changes.items() if k not in before or before[k] != v}


async def save_changes(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    locked: Locked,
    before: dict[str, Any],
    changes: Mapping[str, Any],
    overrides: Overrides | None = None,
    *,
    action: str = "update",
    extra: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    children: Mapping[str, tuple[Any, Any]] | None = None,
    resolve: Resolve | None = None,
) -> dict[str, Any]:
    """Write ``changes`` (from :func:`prepare_update`; columns outside the public schema
    too), audited as ``action`` (``update``, or a state machine's transition: ``confirm``)
    with the ``extra`` changes that are not columns (roles replaced: the record's version
    moves all the same); nothing to change: no write, no event, same version.
    ``children``: ``{name: (before, after)}`` of what the caller rewrote beside the record
    (an order's lines), diffed in the same event. ``resolve``: the error a violated
    unique key means (:data:`Resolve`, given the record as it was to be). The record as
    the caller may see it."""
    if not changes and not extra:
        return await present(session, resource, access, before, locked.placement)
    row = locked.row
    for key, value in changes.items():
        setattr(row, key, value)
    if "updated_at" in resource.table.c:
        row.updated_at = now or datetime.now(UTC)
    await flush(session, resource, overrides, resolve=resolve, record={**before, **changes})
    after = to_dict(resource, row)
    placement = locked.placement
    old = {**before, **{k: v[0] for k, v in (children or {}).items()}}
    new = {**after, **{k: v[1] for k, v in (children or {}).items()}}
    _audit(session, access, resource, action, row.id, placement, old, new, extra)
    return await present(session, resource, access, after, placement)


# --- delete, restore, purge ------------------------------------------------------------------
async def soft_delete(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    record_id: uuid.UUID,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> Locked:
    """Move a live record to the trash (restorable), audited as ``delete``. A record a
    declared :class:`~crm_api.kit.resource.Reference` still points at is refused with its
    error (checked under the row lock: a writer adding a reference holds a key-share lock
    on the record until it commits, so the check sees it)."""
    locked = await lock_or_404(
        session,
        resource,
        access,
        record_id,
        if_match=if_match,
        require_if_match=require_if_match,
    )
    await _check_unreferenced(session, resource, record_id)
    before = to_dict(resource, locked.row)
    now = datetime.now(UTC)
    locked.row.deleted_at = now
    locked.row.updated_at = now
    await session.flush()
    after = to_dict(resource, locked.row)
    _audit(session, access, resource, "delete", locked.id, locked.placement, before, after)
    return locked


async def restore(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    record_id: uuid.UUID,
    *,
    prepare: Callable[[Locked], Awaitable[None]] | None = None,
    overrides: Overrides | None = None,
    resolve: Resolve | None = None,
) -> dict[str, Any]:
    """Bring a record back from the trash, audited as ``restore``; ``prepare`` applies the
    resource's own rules first (a primary flag); ``resolve``: the error a unique key that
    a live record took meanwhile means (:data:`Resolve`)."""
    locked = await lock_or_404(
        session,
        resource,
        access,
        record_id,
        deleted=True,
        detail=f"No deleted {resource.label} {record_id}.",
    )
    before = to_dict(resource, locked.row)
    if prepare is not None:
        await prepare(locked)
    locked.row.deleted_at = None
    locked.row.updated_at = datetime.now(UTC)
    await flush(session, resource, overrides, resolve=resolve, record=before)
    after = to_dict(resource, locked.row)
    placement = locked.placement
    _audit(session, access, resource, "restore", locked.id, placement, before, after)
    return await present(session, resource, access, after, placement)


async def purge(
    session: AsyncSession, resource: Resource, access: Access, record_id: uuid.UUID
) -> None:
    """Remove a record in the trash for good (a live one is a 404: delete it first, so
    nothing disappears in one careless call), audited as ``purge``; refused like
    :func:`soft_delete` while a declared reference points at it."""
    locked = await lock_or_404(
        session,
        resource,
        access,
        record_id,
        deleted=True,
        detail=f"No deleted {resource.label} {record_id}; delete it before purging.",
    )
    await _check_unreferenced(session, resource, record_id)
    await remove(session, resource, access, locked, action="purge")


async def remove(
    session: AsyncSession,
    resource: Resource,
    access: Access,
    locked: Locked,
    *,
    action: str = "delete",
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Delete a locked record for good (a purge; the hard delete of a resource without a
    trash, such as roles), audited as ``action`` with what it was and ``extra``."""
    before = to_dict(resource, locked.row)
    placement = locked.placement
    await session.delete(locked.row)
    # a foreign key (ON DELETE RESTRICT) is the safety net: mapped through the constraints
    await flush(session, resource)
    _audit(session, access, resource, action, locked.id, placement, before, None, extra)


async def _check_unreferenced(
    session: AsyncSession, resource: Resource, record_id: uuid.UUID
) -> None:
    ref = await referenced(session, resource, record_id)
    if ref is not None:
        raise ref.error()
