"""Org units: business rules. No HTTP here, and no commit (the request owns the transaction).

The tree is stored as a materialized path, so moving a unit rewrites the paths of its whole
subtree in one statement, and every data scope built on the tree (``org_subtree``) follows
at once. Changes to the tree's shape bump the policy version: principals cache their unit's
path.

Raises: ``NotFound`` (``org_unit_not_found``, also outside the caller's scope),
``Conflict`` (``invalid_move``, ``org_unit_in_use``, ``parent_inactive``),
``Forbidden`` (``root_not_allowed``, ``grant_not_allowed``),
``UnprocessableEntity`` (``invalid_parent``),
``PreconditionFailed`` (stale If-Match).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import service as audit
from crm_api.authz import delegation
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.state import bump_policy_version
from crm_api.authz.types import Access, Scope, ScopeKind
from crm_api.db.reader import Reader
from crm_api.errors import Conflict, Forbidden, UnprocessableEntity
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.resource import Placement, to_dict
from crm_api.models.org_unit import OrgUnit
from crm_api.org_unit import repository as repo
from crm_api.org_unit.schemas import OrgUnitCreate, OrgUnitListQuery, OrgUnitUpdate
from crm_api.resources import ORG_UNITS

R = ORG_UNITS


def _invalid_parent(message: str) -> UnprocessableEntity:
    return UnprocessableEntity(
        "parent_id does not name an org unit you may use.",
        code="invalid_parent",
        errors=[{"field": "parent_id", "code": "invalid_reference", "message": message}],
    )


async def list_org_units(conn: Reader, access: Access, query: OrgUnitListQuery) -> dict[str, Any]:
    return await repo.list_page(conn, access, query)


async def get_org_unit(conn: Reader, access: Access, unit_id: uuid.UUID) -> dict[str, Any]:
    return await kit.read_or_404(conn, R, access, unit_id)


async def create_org_unit(
    session: AsyncSession, access: Access, data: OrgUnitCreate
) -> dict[str, Any]:
    """A new unit under a parent the caller's create scope covers; a root needs scope all."""
    await repo.lock_tree(session)
    unit_id = uuid.uuid4()
    if data.parent_id is None:
        if not access.scope.is_all:
            raise Forbidden(
                "Creating a root unit needs scope 'all' on org_units.", code="root_not_allowed"
            )
        path = f"/{unit_id}/"
    else:
        parent = await repo.find_in_scope(session, access, data.parent_id)
        if parent is None:
            raise _invalid_parent("no such org unit in your scope")
        if not parent.active:
            raise Conflict(
                "The parent unit is deactivated.",
                code="parent_inactive",
                parent_id=str(parent.id),
            )
        path = f"{parent.path}{unit_id}/"
    values = {
        "name": data.name,
        "kind": data.kind.value,
        "parent_id": data.parent_id,
        "path": path,
        "depth": path.count("/") - 2,
        "active": True,
    }
    # a unit is placed in itself (UnitScoped): its events are scoped like the unit
    return await lifecycle.insert(
        session, R, access, values, Placement(None, unit_id), record_id=unit_id
    )


async def update_org_unit(
    session: AsyncSession,
    access: Access,
    unit_id: uuid.UUID,
    patch: OrgUnitUpdate,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    locked = await lifecycle.lock_or_404(
        session, R, access, unit_id, if_match=if_match, require_if_match=require_if_match
    )
    before, changes = await lifecycle.prepare_update(
        session,
        R,
        access,
        None,
        locked,
        patch.model_dump(exclude_unset=True, mode="json"),
        not_nullable=("name", "kind"),
    )
    return await lifecycle.save_changes(session, R, access, locked, before, changes)


async def move_org_unit(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    unit_id: uuid.UUID,
    parent_id: uuid.UUID | None,
    if_match: str | None,
) -> dict[str, Any]:
    """Put a unit (with everything below it) under another parent, or make it a root.
    Under itself or one of its descendants is a 409 ``invalid_move``.

    Moving hands the unit's people and records to the new parent's ancestors (every
    ``org_subtree`` grant follows the tree), so the caller's scope must cover the unit,
    where it comes from (its current parent; a root: scope ``all``) and where it goes,
    else 403 ``grant_not_allowed`` (``reason: source_out_of_scope``) or
    ``invalid_parent``; and nobody moves a unit into their own subtree or moves the unit
    they stand in (:func:`crm_api.authz.delegation.check_unit_move`, ``reason: self``)."""
    await repo.lock_tree(session)
    locked = await lifecycle.lock_or_404(session, R, access, unit_id, if_match=if_match)
    unit = locked.row
    if parent_id == unit.parent_id:
        return to_dict(R, unit)
    if not access.scope.is_all and (
        unit.parent_id is None
        or await repo.find_in_scope(session, access, unit.parent_id, share=False) is None
    ):
        raise Forbidden(
            "The unit sits under a parent outside your scope on org units: moving it out "
            "is for someone whose scope covers where it is now.",
            code="grant_not_allowed",
            refused=["parent_id"],
            reason="source_out_of_scope",
        )
    if parent_id is None:
        if not access.scope.is_all:
            raise Forbidden(
                "Making a unit a root needs scope 'all' on org_units.", code="root_not_allowed"
            )
        new_prefix = f"/{unit.id}/"
    else:
        parent = await repo.find_in_scope(session, access, parent_id)
        if parent is None:
            raise _invalid_parent("no such org unit in your scope")
        if parent.path.startswith(unit.path):
            raise Conflict(
                "A unit cannot move under itself or a unit below it.",
                code="invalid_move",
                parent_id=str(parent_id),
            )
        if not parent.active:
            raise Conflict(
                "The new parent unit is deactivated.",
                code="parent_inactive",
                parent_id=str(parent_id),
            )
        new_prefix = f"{parent.path}{unit.id}/"
    delegation.check_unit_move(policy, access.principal, unit.path, new_prefix)
    before = to_dict(R, unit)
    old_prefix = before["path"]
    depth_delta = (new_prefix.count("/") - 2) - unit.depth
    moved = await repo.move_subtree(
        session, unit.id, parent_id, old_prefix, new_prefix, depth_delta
    )
    # re-read as moved (the row may have just left the caller's scope)
    refreshed = await lifecycle.lock_or_404(session, R, access_all(access), unit.id)
    after = to_dict(R, refreshed.row)
    changes = audit.diff(before, after)
    changes["units_moved"] = {"before": None, "after": moved}
    lifecycle.record_event(session, access, R, "move", unit.id, refreshed.placement, changes)
    await bump_policy_version(session)
    return after


def access_all(access: Access) -> Access:
    """The same caller over every unit: for re-reading a row already authorized, whose
    position may have just left the caller's scope (moved out of their subtree)."""
    return Access(
        access.principal,
        access.resource,
        access.action,
        Scope(frozenset({ScopeKind.all})),
        access.sensitive,
    )


async def set_active(
    session: AsyncSession,
    access: Access,
    unit_id: uuid.UUID,
    active: bool,
    if_match: str | None,
) -> dict[str, Any]:
    """Deactivate (refused while active child units or active users remain, naming how
    many) or reactivate (refused under a deactivated parent)."""
    await repo.lock_tree(session)
    locked = await lifecycle.lock_or_404(session, R, access, unit_id, if_match=if_match)
    unit = locked.row
    if unit.active is active:
        return to_dict(R, unit)
    if not active:
        children, users = await repo.count_active_dependents(session, unit.id)
        if children or users:
            raise Conflict(
                f"The unit still has {children} active child unit(s) and {users} active "
                "user(s); move or deactivate them first.",
                code="org_unit_in_use",
                active_children=children,
                active_users=users,
            )
    elif unit.parent_id is not None:
        parent = await repo.find_in_scope(session, access_all(access), unit.parent_id)
        if parent is not None and not parent.active:
            raise Conflict(
                "The parent unit is deactivated; activate it first.",
                code="parent_inactive",
                parent_id=str(parent.id),
            )
    after = await lifecycle.save_changes(
        session,
        R,
        access,
        locked,
        to_dict(R, unit),
        {"active": active},
        action="activate" if active else "deactivate",
    )
    await bump_policy_version(session)
    return after


# --- for other domains ---------------------------------------------------------------------
async def missing_units(session: AsyncSession, unit_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """The ids among ``unit_ids`` that name no org unit."""
    found = await repo.existing_ids(session, unit_ids)
    return [u for u in unit_ids if u not in found]


async def get_active_unit(session: AsyncSession, unit_id: uuid.UUID) -> OrgUnit | None:
    """An active unit, kept from being deactivated or moved until the transaction ends
    (for placing a user in it)."""
    return await repo.active_for_share(session, unit_id)
