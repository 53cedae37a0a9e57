"""Roles and their grants: business rules. No HTTP here, and no commit.

A grant is a Casbin ``p`` row ``(role, resource, action, scope, units)``. Every change to
grants (and deleting a role) bumps the policy version in the same transaction, so every
worker enforces it within the poll interval.

Grant edits go through :func:`crm_api.authz.delegation.check_grant_edit`: an editor grants
only what it holds, over no wider a scope, never to a role it holds itself, and only an
administrator touches the ``admin`` role. Built-in roles' grants are an administrator's to
edit (:func:`_check_builtin`): everyone else makes a custom role.

Raises: ``Forbidden`` (``grant_not_allowed``), ``NotFound`` (``role_not_found``,
``grant_not_found``), ``Conflict``
(``role_exists``, ``role_builtin``, ``role_in_use``, ``grant_exists``, ``grant_protected``),
``UnprocessableEntity`` (``unknown_resource``, ``unknown_action``, ``invalid_org_unit``),
``PreconditionFailed`` (stale If-Match).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz import catalog, delegation
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.state import bump_policy_version
from crm_api.authz.types import Access, ScopeKind
from crm_api.db.reader import Reader
from crm_api.errors import Conflict, Forbidden, NotFound, UnprocessableEntity
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.resource import Locked, Placement
from crm_api.org_unit import service as org_units
from crm_api.resources import ROLES
from crm_api.role import repository as repo
from crm_api.role.schemas import GrantCreate, GrantListQuery, RoleCreate, RoleListQuery, RoleUpdate

R = ROLES
#: Roles are configuration: no owner, no unit (their events are for an ``all`` scope).
UNPLACED = Placement(None, None)
#: The grant that keeps the system administrable.
PROTECTED_GRANT = ("admin", "*", "*", ScopeKind.all.value)
ACTIONS = catalog.ACTIONS | {"*"}


def present_grant(row: dict[str, Any]) -> dict[str, Any]:
    units = row.pop("units", "") or ""
    row["org_unit_ids"] = [u for u in units.split("|") if u]
    return row


async def list_roles(conn: Reader, access: Access, query: RoleListQuery) -> dict[str, Any]:
    return await repo.list_page(conn, access, query)


async def get_role(conn: Reader, access: Access, role_id: uuid.UUID) -> dict[str, Any]:
    return await kit.read_or_404(conn, R, access, role_id, repo.scoped(access))


async def unknown_roles(session: AsyncSession, names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are not roles (the rest are locked against deletion
    until the caller's transaction ends)."""
    wanted = set(names)
    return sorted(wanted - await repo.existing_names(session, wanted))


def _role_exists(name: str) -> Conflict:
    return Conflict(f"A role named {name!r} exists.", code="role_exists", name=name)


async def create_role(session: AsyncSession, access: Access, data: RoleCreate) -> dict[str, Any]:
    if await repo.name_exists(session, data.name):
        raise _role_exists(data.name)
    # a concurrent create winning the unique index between the check and the insert
    overrides = {"uq_roles_name": lambda: _role_exists(data.name)}
    values = {"name": data.name, "description": data.description, "builtin": False}
    return await lifecycle.insert(session, R, access, values, UNPLACED, overrides)


async def update_role(
    session: AsyncSession,
    access: Access,
    role_id: uuid.UUID,
    patch: RoleUpdate,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    locked = await _lock(session, access, role_id, if_match, require_if_match)
    before, changes = await lifecycle.prepare_update(
        session, R, access, None, locked, patch.model_dump(exclude_unset=True)
    )
    return await lifecycle.save_changes(session, R, access, locked, before, changes)


async def delete_role(
    session: AsyncSession,
    access: Access,
    role_id: uuid.UUID,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> None:
    """Remove a custom role nobody holds, with its grants. Built-in roles stay (409
    ``role_builtin``); a role still held is 409 ``role_in_use`` naming how many hold it."""
    locked = await _lock(session, access, role_id, if_match, require_if_match)
    role = locked.row
    if role.builtin:
        raise Conflict(f"{role.name!r} is a built-in role.", code="role_builtin")
    held = await repo.holders(session, role.name)
    if held:
        raise Conflict(
            f"{held} user(s) or API client(s) hold {role.name!r}; take it from them first.",
            code="role_in_use",
            holders=held,
        )
    grants = [present_grant(g) for g in await repo.all_grants(session, role.name)]
    await repo.delete_policy_rows(session, role.name)
    summary = [_grant_summary(g) for g in grants]
    await lifecycle.remove(
        session, R, access, locked, extra={"grants": {"before": summary, "after": None}}
    )
    await bump_policy_version(session)


async def _lock(
    session: AsyncSession,
    access: Access,
    role_id: uuid.UUID,
    if_match: str | None = None,
    require_if_match: bool = False,
) -> Locked:
    """The role, locked, if ``access`` reaches roles at all (a grant with any scope)."""
    if not access.scope.kinds:
        raise R.not_found(role_id)
    return await lifecycle.lock_or_404(
        session, R, access, role_id, if_match=if_match, require_if_match=require_if_match
    )


# --- grants ------------------------------------------------------------------------------
async def list_grants(
    conn: Reader, access: Access, role_id: uuid.UUID, query: GrantListQuery
) -> dict[str, Any]:
    role = await get_role(conn, access, role_id)
    page = await repo.grants_page(conn, role["name"], query)
    page["data"] = [present_grant(r) for r in page["data"]]
    return page


def _check_builtin(policy: PolicyEngine, access: Access, role: Any, what: str) -> None:
    """Refuse (403 ``grant_not_allowed``, ``reason: builtin_role``) a non-administrator's
    edit of a built-in role's grants, adding or removing.

    A built-in role is the product's default for a job (``sales_rep``, ``service_agent``):
    whoever assigns it later expects those defaults, and an edit reaches every current and
    future holder, in every branch, whoever assigns it. The delegation rule alone lets a
    manager holding ``roles:update`` add what they hold to ``sales_rep`` and so widen the
    reps of other managers' teams; as with Salesforce's standard profiles, only
    administrators change the defaults, and others make a custom role (``POST
    /v1/roles``) and grant that."""
    if role.builtin and not delegation.is_admin(policy, access.principal):
        raise Forbidden(
            f"{role.name!r} is a built-in role: only an administrator edits its grants. "
            f"Create a custom role instead and {what} that.",
            code="grant_not_allowed",
            refused=[role.name],
            reason="builtin_role",
        )


def _invalid(field: str, code: str, message: str) -> UnprocessableEntity:
    return UnprocessableEntity(
        message, code=code, errors=[{"field": field, "code": code, "message": message}]
    )


async def add_grant(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    role_id: uuid.UUID,
    data: GrantCreate,
    known_resources: frozenset[str],
) -> dict[str, Any]:
    """Grant the role ``action`` on ``resource`` over ``scope``. The same (resource,
    action, scope) twice is a 409 ``grant_exists``."""
    locked = await _lock(session, access, role_id)
    role = locked.row
    if role.name != delegation.ADMIN_ROLE:  # the admin role keeps its own reason
        _check_builtin(policy, access, role, "grant")
    if data.resource != "*" and data.resource not in known_resources:
        raise _invalid(
            "resource",
            "unknown_resource",
            f"Unknown resource {data.resource!r}; known: {', '.join(sorted(known_resources))}.",
        )
    if data.action not in ACTIONS:
        raise _invalid(
            "action",
            "unknown_action",
            f"Unknown action {data.action!r}; known: {', '.join(sorted(ACTIONS))}.",
        )
    units = sorted(set(data.org_unit_ids or []))
    if units:
        missing = await org_units.missing_units(session, units)
        if missing:
            raise UnprocessableEntity(
                "Some org_unit_ids are not org units.",
                code="invalid_org_unit",
                errors=[
                    {
                        "field": "org_unit_ids",
                        "code": "invalid_reference",
                        "message": f"no org unit {m}",
                    }
                    for m in missing
                ],
            )
    await delegation.check_grant_edit(
        session,
        policy,
        access.principal,
        role.name,
        delegation.Grant(data.resource, data.action, data.scope, frozenset(units)),
    )
    row = await repo.insert_grant(
        session,
        role.name,
        data.resource,
        data.action,
        data.scope.value,
        "|".join(str(u) for u in units),
    )
    if row is None:
        raise Conflict(
            f"{role.name!r} already holds {data.action!r} on {data.resource!r} with scope "
            f"{data.scope.value!r}; delete that grant to change it.",
            code="grant_exists",
        )
    grant = present_grant(row)
    lifecycle.record_event(
        session,
        access,
        R,
        "grant_create",
        role.id,
        UNPLACED,
        {"grant": {"before": None, "after": _grant_summary(grant)}},
    )
    await bump_policy_version(session)
    return grant


def _grant_summary(grant: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(grant["id"]),
        "resource": grant["resource"],
        "action": grant["action"],
        "scope": grant["scope"],
        "org_unit_ids": [str(u) for u in grant["org_unit_ids"]],
    }


async def remove_grant(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    role_id: uuid.UUID,
    grant_id: uuid.UUID,
) -> None:
    locked = await _lock(session, access, role_id)
    role = locked.row
    if role.name != delegation.ADMIN_ROLE:  # the admin role keeps its own reason
        _check_builtin(policy, access, role, "edit")
    await delegation.check_grant_edit(session, policy, access.principal, role.name, None)
    row = await repo.get_grant(session, role.name, grant_id)
    if row is None:
        raise NotFound(f"Role {role.name!r} has no grant {grant_id}.", code="grant_not_found")
    grant = present_grant(row)
    if (role.name, grant["resource"], grant["action"], grant["scope"]) == PROTECTED_GRANT:
        raise Conflict(
            "The admin role's full grant keeps the system administrable; it cannot be removed.",
            code="grant_protected",
        )
    await repo.delete_grant(session, grant_id)
    lifecycle.record_event(
        session,
        access,
        R,
        "grant_delete",
        role.id,
        UNPLACED,
        {"grant": {"before": _grant_summary(grant), "after": None}},
    )
    await bump_policy_version(session)
