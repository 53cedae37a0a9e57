"""Why may (or may not) a user do something, and which records can they reach?

The answers come from the same places enforcement does: the loaded policy for the decision
and each resource's own scoped statement for records, so an explanation cannot drift from
what the API actually does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, func, select
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.types import SCOPE_RANK, Access, Principal, PrincipalKind, Scope, ScopeKind
from crm_api.db.reader import Reader
from crm_api.errors import NotFound, UnprocessableEntity
from crm_api.models.authz_rule import AuthzRule
from crm_api.models.org_unit import OrgUnit
from crm_api.models.user import User

#: A resource's scoped statement for an access, and the id column to pin one record.
Scoped = tuple[Callable[[Access], Select[Any]], ColumnElement[Any]]

_SCOPE_TEXT = {
    ScopeKind.all: "every record",
    ScopeKind.own: "records the user owns",
    ScopeKind.created_by_self: "records the user (or API client) created",
    ScopeKind.subordinates: "records the user or anyone reporting to them owns",
    ScopeKind.org_unit: "records of the user's org unit",
    ScopeKind.org_subtree: "records of the user's org unit and every unit below it",
    ScopeKind.custom: "records of the listed org units",
}


def _registered(name: str) -> Callable[[], Scoped]:
    """A resource of the registry (crm_api/resources.py): the kit's scoped statement."""

    def factory() -> Scoped:
        from crm_api.kit.resource import scoped
        from crm_api.resources import REGISTRY

        resource = REGISTRY[name]
        return (lambda access: scoped(resource, access)), resource.id_column

    return factory


def _audit_events() -> Scoped:
    from crm_api.audit import service

    return service.scoped, service.ID_COLUMN


def _registry_names() -> tuple[str, ...]:
    """The registered resources whose records a grant's scope selects (reference data such
    as roles has no per-record visibility to explain; a personal access token is only ever
    its owner's, whatever the grants)."""
    from crm_api.kit.resource import Unscoped
    from crm_api.resources import REGISTRY

    return tuple(
        n
        for n, r in REGISTRY.items()
        if not isinstance(r.scoping, Unscoped) and r.grant_group != "self"
    )


#: Every registered resource (users and org units among them), then those not yet on the
#: kit (hand-kept until they move).
RESOURCES: dict[str, Callable[[], Scoped]] = {
    **{name: _registered(name) for name in _registry_names()},
    "audit_events": _audit_events,
}


def scoped_for(resource: str) -> Scoped:
    try:
        return RESOURCES[resource]()
    except (KeyError, LookupError) as exc:
        supported = []
        for name, factory in RESOURCES.items():
            try:
                factory()
                supported.append(name)
            except LookupError:
                continue
        raise UnprocessableEntity(
            f"Record checks are not available for {resource!r}; they are for "
            f"{', '.join(supported)}.",
            code="unsupported_resource",
            errors=[
                {"field": "query.resource", "code": "unsupported_resource", "message": resource}
            ],
        ) from exc


def _users_scope(access: Access) -> ColumnElement[bool]:
    """The users ``access`` covers: the registered resource's own scope."""
    from crm_api.kit.resource import scope_of
    from crm_api.resources import USERS

    clause = scope_of(USERS, access)
    assert clause is not None, "users are owner-scoped"
    return clause


async def principal_of(conn: Reader, caller: Access, user_id: uuid.UUID) -> tuple[Principal, bool]:
    """The principal ``user_id`` would be, built from the same facts the token resolver
    caches; the user must be inside the caller's scope (else 404)."""
    t = User.__table__
    stmt = (
        select(
            t.c.display_name,
            t.c.kind,
            t.c.active,
            t.c.org_unit_id,
            OrgUnit.__table__.c.path,
            t.c.manager_path,
        )
        .outerjoin(OrgUnit.__table__, OrgUnit.__table__.c.id == t.c.org_unit_id)
        .where(t.c.id == user_id, _users_scope(caller))
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"No user {user_id}.", code="user_not_found")
    kind = PrincipalKind.api_client if row.kind == "service" else PrincipalKind.user
    principal = Principal(
        kind=kind,
        id=user_id,
        name=row.display_name,
        roles=frozenset(),
        org_unit_id=row.org_unit_id,
        org_path=row.path,
        manager_path=row.manager_path,
    )
    return principal, bool(row.active)


def describe(scope: Scope) -> dict[str, Any]:
    kinds = sorted(scope.kinds, key=SCOPE_RANK.__getitem__, reverse=True)
    text = "; ".join(_SCOPE_TEXT[k] for k in kinds)
    return {
        "kinds": [k.value for k in kinds],
        "widest": scope.widest.value,
        "org_unit_ids": sorted(scope.unit_ids, key=str),
        "description": text,
    }


async def _via(conn: Reader, roles: list[str], resource: str, action: str) -> list[dict[str, Any]]:
    if not roles:
        return []
    a = AuthzRule.__table__
    stmt = (
        select(a.c.id, a.c.v0, a.c.v1, a.c.v2, a.c.v3, a.c.v4)
        .where(
            a.c.ptype == "p",
            a.c.v0.in_(roles),
            a.c.v1.in_([resource, "*"]),
            a.c.v2.in_([action, "*"]),
            a.c.v3.in_([k.value for k in ScopeKind]),
        )
        .order_by(a.c.v0, a.c.v1, a.c.v2, a.c.v3)
    )
    return [
        {
            "role": r.v0,
            "grant_id": r.id,
            "resource": r.v1,
            "action": r.v2,
            "scope": r.v3,
            "org_unit_ids": [u for u in r.v4.split("|") if u],
        }
        for r in (await conn.execute(stmt))
    ]


def _single(access: Access, kind: ScopeKind) -> Access:
    units = access.scope.unit_ids if kind is ScopeKind.custom else frozenset()
    return Access(
        access.principal,
        access.resource,
        access.action,
        Scope(frozenset({kind}), units),
        access.sensitive,
    )


async def _check_record(
    conn: Reader,
    caller: Access,
    access: Access | None,
    resource: str,
    record_id: uuid.UUID,
) -> dict[str, Any]:
    scoped, id_col = scoped_for(resource)
    if access is None:
        return {
            "id": record_id,
            "visible": False,
            "matched_scopes": [],
            "reason": "No role grants this action on this resource.",
        }
    kinds = sorted(access.scope.kinds, key=SCOPE_RANK.__getitem__, reverse=True)
    probes = [exists(scoped(access).where(id_col == record_id))]
    probes += [exists(scoped(_single(access, k)).where(id_col == record_id)) for k in kinds]
    row = (await conn.execute(select(*probes))).one()
    visible, matched = bool(row[0]), [k for k, hit in zip(kinds, row[1:], strict=True) if hit]
    if visible:
        reason = "Inside the scope: " + "; ".join(_SCOPE_TEXT[k] for k in matched) + "."
    elif (
        caller.scope.is_all
        and not (await conn.execute(select(exists().where(id_col == record_id)))).scalar()
    ):
        # only a caller who could see every record learns that it does not exist
        reason = "No such record."
    else:
        reason = (
            "Not covered by the scope (" + "; ".join(_SCOPE_TEXT[k] for k in kinds) + "): "
            "the record lies outside it, or is deleted."
        )
    return {
        "id": record_id,
        "visible": visible,
        "reason": reason,
        "matched_scopes": [k.value for k in matched],
    }


async def explain(
    conn: Reader,
    policy: PolicyEngine,
    caller: Access,
    user_id: uuid.UUID,
    resource: str,
    action: str,
    record_id: uuid.UUID | None,
) -> dict[str, Any]:
    principal, active = await principal_of(conn, caller, user_id)
    roles = policy.roles_of(principal)
    scope = policy.scope_for(principal, resource, action)
    access = Access(principal, resource, action, scope) if scope is not None else None
    result: dict[str, Any] = {
        "user_id": user_id,
        "user_active": active,
        "roles": roles,
        "resource": resource,
        "action": action,
        "allowed": scope is not None,
        "scope": describe(scope) if scope is not None else None,
        "via": await _via(conn, roles, resource, action) if scope is not None else [],
        "record": None,
    }
    if record_id is not None:
        result["record"] = await _check_record(conn, caller, access, resource, record_id)
    return result


def compile_sql(clause: ColumnElement[bool]) -> str:
    """The clause as PostgreSQL receives it, values inlined (asyncpg's dialect: no
    ``%`` doubling), on one line."""
    dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
    compiled = clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    return " ".join(str(compiled).split())


async def visibility(
    conn: Reader,
    policy: PolicyEngine,
    caller: Access,
    user_id: uuid.UUID,
    resource: str,
    action: str,
) -> dict[str, Any]:
    scoped, _ = scoped_for(resource)
    principal, _active = await principal_of(conn, caller, user_id)
    scope = policy.scope_for(principal, resource, action)
    result: dict[str, Any] = {
        "user_id": user_id,
        "resource": resource,
        "action": action,
        "allowed": scope is not None,
        "scope": None,
        "predicate": None,
        "visible_count": 0,
    }
    if scope is None:
        return result
    stmt = scoped(Access(principal, resource, action, scope))
    where = stmt.whereclause
    count = select(func.count()).select_from(stmt.order_by(None).subquery())
    result.update(
        scope=describe(scope),
        predicate=compile_sql(where) if where is not None else "TRUE",
        visible_count=int((await conn.execute(count)).scalar_one()),
    )
    return result
