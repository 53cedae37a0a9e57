"""API clients: business rules. No HTTP here, and no commit (the request owns the
transaction). Every mutation bumps the policy version in the same transaction, so each
worker reloads the client's roles and drops its cached principal.

A client acts through a service account (``users.kind = 'service'``, no password) whose
id is the principal id; its roles are Casbin ``g`` rows on ``client:<that id>``.

Raises: ``NotFound`` (``api_client_not_found``, also outside the caller's scope),
``UnprocessableEntity`` (``unknown_role``, ``invalid_org_unit``, ``null_not_allowed``),
``Forbidden`` (``role_not_grantable``, ``org_unit_out_of_scope``, ``grant_not_allowed``),
``PreconditionFailed`` (stale If-Match).

Roles are conferred through :func:`crm_api.authz.delegation.check_roles`, like users'
roles: only roles whose every grant the caller holds over no wider a scope, and never to
the client the caller is. Its secret and active flag change only for a caller who could
confer every role it holds (:func:`_check_target`).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.api_client import repository as repo
from crm_api.api_client.schemas import (
    ApiClientCreate,
    ApiClientListQuery,
    ApiClientUpdate,
    RotateSecret,
)
from crm_api.audit import service as audit
from crm_api.auth import clock
from crm_api.auth.passwords import hash_password
from crm_api.authz import delegation
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.state import bump_policy_version
from crm_api.authz.types import Access, PrincipalKind
from crm_api.db.reader import Reader
from crm_api.errors import Forbidden, UnprocessableEntity
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.resource import Locked, Placement, to_dict
from crm_api.kit.transfer import position_in_scope
from crm_api.models import User
from crm_api.resources import API_CLIENTS

R = API_CLIENTS


def _new_client_id() -> str:
    return "cli_" + secrets.token_hex(12)


def _new_secret() -> str:
    # URL-safe alphabet: no ':' so it survives HTTP Basic, no '+'/'/' for form encoding.
    return "cs_" + secrets.token_urlsafe(32)


async def _check_roles(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    roles: Iterable[str],
    at: delegation.Position,
    current: Iterable[str] = (),
) -> list[str]:
    """``roles`` deduplicated, each an existing role; the change from ``current`` must be
    one the caller may make (403 ``role_not_grantable``): nobody can mint or widen a
    client more powerful than themself, nor widen the client they are. The relative
    scopes are judged where the client stands (``at``): whoever makes a client holds its
    secret, so what it reaches must lie within what the caller reaches."""
    wanted = sorted(set(roles))
    missing = sorted(set(wanted) - await repo.existing_roles(session, wanted))
    if missing:
        raise UnprocessableEntity(
            "Unknown role: " + ", ".join(missing),
            code="unknown_role",
            errors=[{"field": "roles", "code": "unknown_role", "message": m} for m in missing],
        )
    await delegation.check_roles(
        session,
        policy,
        access.principal,
        added=sorted(set(wanted) - set(current)),
        removed=sorted(set(current) - set(wanted)),
        to_self=at.user_id == access.principal.id,
        at=at,
    )
    return wanted


async def _check_target(
    session: AsyncSession, policy: PolicyEngine, access: Access, user: User, fields: list[str]
) -> None:
    """Rotating a client's secret hands the caller its credentials, and switching it on or
    off decides whether it acts: either needs that the caller could confer every role the
    client holds (:func:`crm_api.authz.delegation.check_target`, 403
    ``grant_not_allowed``)."""
    await delegation.check_target(
        session,
        policy,
        access.principal,
        roles=await repo.roles_of(session, user.id),
        positions=[
            await delegation.position_of(session, user.id, user.manager_path, user.org_unit_id)
        ],
        fields=fields,
    )


async def list_clients(conn: Reader, access: Access, query: ApiClientListQuery) -> dict[str, Any]:
    return await repo.list_page(conn, access, query)


async def get_client(conn: Reader, access: Access, client_id: uuid.UUID) -> dict[str, Any]:
    return await kit.read_or_404(conn, R, access, client_id, repo.scoped(access))


def _creator(access: Access) -> uuid.UUID | None:
    """The owner of a client ``access`` creates: the person, or the client (its service
    account) acting; nobody for the system."""
    kind = access.principal.kind
    return access.principal.id if kind in (PrincipalKind.user, PrincipalKind.api_client) else None


async def create_client(
    session: AsyncSession, policy: PolicyEngine, access: Access, data: ApiClientCreate
) -> dict[str, Any]:
    """Create the client, its service account and its role rows; the returned row carries
    ``client_secret``, which is never stored or shown again."""
    user_id, client_pk = uuid.uuid4(), uuid.uuid4()
    roles = await _check_roles(
        session,
        policy,
        access,
        data.roles,
        await delegation.position_of(session, user_id, f"/{user_id}/", data.org_unit_id),
    )
    if data.org_unit_id is not None and not await repo.org_unit_active(session, data.org_unit_id):
        raise UnprocessableEntity(
            "org_unit_id is not an active org unit.",
            code="invalid_org_unit",
            errors=[
                {
                    "field": "org_unit_id",
                    "code": "invalid_reference",
                    "message": "no such active org unit",
                }
            ],
        )
    placement = Placement(_creator(access), data.org_unit_id)
    if not await position_in_scope(session, access, placement.owner_id, placement.org_unit_id):
        raise Forbidden(
            "Your scope does not cover clients in that org unit.", code="org_unit_out_of_scope"
        )
    public_id, secret = _new_client_id(), _new_secret()
    await repo.add_service_account(
        session,
        User(
            id=user_id,
            email=f"{public_id}@api-clients.invalid",
            display_name=data.name,
            org_unit_id=data.org_unit_id,
            manager_path=f"/{user_id}/",
            kind="service",
            password_hash=None,
            active=True,
        ),
    )
    values = {
        "client_id": public_id,
        "name": data.name,
        "secret_hash": hash_password(secret),
        "user_id": user_id,
        "active": True,
        "owner_id": placement.owner_id,
        "org_unit_id": placement.org_unit_id,
    }
    row = await lifecycle.insert(
        session,
        R,
        access,
        values,
        placement,
        record_id=client_pk,
        extra=audit.diff(None, {"roles": roles}),
    )
    await repo.set_roles(session, user_id, roles)
    await bump_policy_version(session)
    return {**row, "roles": roles, "client_secret": secret}


async def _locked(
    session: AsyncSession,
    access: Access,
    client_id: uuid.UUID,
    if_match: str | None,
    require_if_match: bool,
) -> tuple[Locked, User]:
    """The client ``access`` covers and its service account, both locked."""
    locked = await lifecycle.lock_or_404(
        session, R, access, client_id, if_match=if_match, require_if_match=require_if_match
    )
    return locked, await repo.service_account(session, locked.row.user_id)


def _set_active(user: User, active: bool, now: datetime) -> None:
    """The service account follows the client's flag."""
    user.active = active
    if not active:
        # Every token issued so far dies with the deactivation, even after a reactivation
        # (compared to the microsecond, so a token issued right after a reactivation works).
        user.tokens_valid_after = now


async def update_client(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    client_id: uuid.UUID,
    patch: ApiClientUpdate,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    changes = patch.model_dump(exclude_unset=True)
    lifecycle.reject_nulls(changes, changes)
    locked, user = await _locked(session, access, client_id, if_match, require_if_match)
    client = locked.row
    current = await repo.roles_of(session, user.id)
    roles = current
    if "roles" in changes:
        roles = await _check_roles(
            session,
            policy,
            access,
            changes["roles"],
            await delegation.position_of(session, user.id, user.manager_path, user.org_unit_id),
            current,
        )
    columns: dict[str, Any] = {
        k: changes[k]
        for k in ("name", "active")
        if k in changes and changes[k] != getattr(client, k)
    }
    if "active" in columns:
        await _check_target(session, policy, access, user, ["active"])
    extra = audit.diff({"roles": current}, {"roles": roles})
    now = clock.now()
    if "name" in columns:
        user.display_name = columns["name"]
    if "active" in columns:
        _set_active(user, columns["active"], now)
    if extra:
        await repo.set_roles(session, user.id, roles)
    # a roles-only change moves the version (and ETag) all the same
    row = await lifecycle.save_changes(
        session, R, access, locked, to_dict(R, client), columns, extra=extra, now=now
    )
    if columns or extra:
        await bump_policy_version(session)
    return {**row, "roles": roles}


async def deactivate_client(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    client_id: uuid.UUID,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> None:
    """Soft delete: the client can no longer get tokens and the ones it has stop working.
    Restorable with ``PATCH {"active": true}``. Deleting an inactive client changes nothing.
    A client holding more than the caller could give is not the caller's to switch off."""
    locked, user = await _locked(session, access, client_id, if_match, require_if_match)
    client = locked.row
    if not client.active and not user.active:
        return
    await _check_target(session, policy, access, user, ["active"])
    now = clock.now()
    _set_active(user, False, now)
    before = {**to_dict(R, client), "active": True}
    await lifecycle.save_changes(
        session, R, access, locked, before, {"active": False}, action="delete", now=now
    )
    await bump_policy_version(session)


async def rotate_secret(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    client_id: uuid.UUID,
    body: RotateSecret,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    """A new secret, returned once. With a grace period the replaced secret keeps working
    until it ends (one previous secret at most: rotating again ends the earlier grace).
    Access tokens already issued stay valid until they expire. The secret is the client's
    credential: only for a caller who could confer everything the client holds."""
    locked, user = await _locked(session, access, client_id, if_match, require_if_match)
    client = locked.row
    await _check_target(session, policy, access, user, ["client_secret"])
    now = datetime.now(UTC)
    secret = _new_secret()
    grace = body.grace_period_s > 0
    columns = {
        "previous_secret_hash": client.secret_hash if grace else None,
        "previous_secret_expires_at": now + timedelta(seconds=body.grace_period_s)
        if grace
        else None,
        "secret_hash": hash_password(secret),
    }
    row = await lifecycle.save_changes(
        session,
        R,
        access,
        locked,
        to_dict(R, client),
        columns,
        action="rotate_secret",
        extra={"client_secret": {"before": audit.MASK, "after": audit.MASK}},
        now=now,
    )
    await bump_policy_version(session)
    return {**row, "roles": await repo.roles_of(session, user.id), "client_secret": secret}
