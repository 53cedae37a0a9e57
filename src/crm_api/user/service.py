"""Users: business rules. Other domains call these, never the users' SQL. No HTTP here, and
no commit (the request owns the transaction).

Every change to a user bumps the policy version: workers cache user facts (active, org
unit, reporting line, roles, when tokens were last revoked) and drop them on a new version.

Roles are conferred through :mod:`crm_api.authz.delegation` (nobody gives what they do
not hold, nor widens their own access), a user's credentials, e-mail, active flag,
manager and unit change only for a caller who could confer everything the user holds
(:func:`_check_target`), and the last active administrator keeps the ``admin`` role and
stays active (:func:`_keep_an_admin`).

Raises: ``NotFound`` (``user_not_found``, also outside the caller's scope), ``Conflict``
(``email_taken``, ``invalid_manager``, ``service_account``, ``cannot_deactivate_self``,
``last_admin``), ``Forbidden`` (``assign_not_allowed``, ``role_not_grantable``,
``grant_not_allowed``),
``UnprocessableEntity`` (``weak_password``, ``unknown_role``, ``invalid_org_unit``,
``invalid_manager``), ``PreconditionFailed``.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import service as audit
from crm_api.auth import clock
from crm_api.auth.passwords import hash_password, policy_violations
from crm_api.authz import delegation
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.state import bump_policy_version
from crm_api.authz.types import Access
from crm_api.db.reader import Reader
from crm_api.errors import Conflict, Forbidden, UnprocessableEntity
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.resource import Locked, Placement, to_dict
from crm_api.kit.transfer import position_in_scope
from crm_api.models.user import User
from crm_api.org_unit import service as org_units
from crm_api.resources import USERS
from crm_api.role import service as roles
from crm_api.user import repository as repo
from crm_api.user.schemas import NOT_NULLABLE, UserCreate, UserListQuery, UserUpdate

R = USERS
ADMIN_ROLE = delegation.ADMIN_ROLE


async def get_active_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await repo.active_user(session, user_id)


async def find_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """Any user, active or not (for handing a departed user's records over)."""
    return await repo.find(session, user_id)


async def me_facts(conn: Reader, user_id: uuid.UUID) -> dict[str, Any] | None:
    """What ``/v1/me`` shows of the caller's own row (e-mail, manager, kind), read
    without a policy scope: it is the caller themself."""
    return await repo.me_facts(conn, user_id)


async def list_users(conn: Reader, access: Access, query: UserListQuery) -> dict[str, Any]:
    return await repo.list_page(conn, access, query)


async def get_user(conn: Reader, access: Access, user_id: uuid.UUID) -> dict[str, Any]:
    return await kit.read_or_404(conn, R, access, user_id, repo.scoped(access))


# --- checks ------------------------------------------------------------------------------
def _check_password(password: str, email: str) -> str:
    violations = policy_violations(password, email)
    if violations:
        raise UnprocessableEntity(
            "The password does not meet the policy: " + "; ".join(violations) + ".",
            code="weak_password",
            errors=[
                {"field": "password", "code": "password_policy", "message": v} for v in violations
            ],
        )
    return hash_password(password)


async def _check_email(session: AsyncSession, email: str, exclude_id: uuid.UUID | None) -> None:
    if await repo.email_taken(session, email, exclude_id):
        raise Conflict("Another user has this e-mail address.", code="email_taken", field="email")


async def _check_roles(
    session: AsyncSession,
    policy: PolicyEngine,
    assign: Access | None,
    user_id: uuid.UUID,
    org_unit_id: uuid.UUID | None,
    manager_path: str,
    current: list[str],
    new: list[str],
) -> None:
    """Changing a user's roles from ``current`` to ``new``: needs ``users:assign`` over the
    user (placed in ``org_unit_id``), existing roles, and authority to confer every role
    given or taken (:func:`crm_api.authz.delegation.check_roles`)."""
    if assign is None:
        raise Forbidden(
            "Changing roles needs the 'assign' permission on users.", code="assign_not_allowed"
        )
    unknown = await roles.unknown_roles(session, new)
    if unknown:
        raise UnprocessableEntity(
            "Unknown role(s): " + ", ".join(unknown) + ".",
            code="unknown_role",
            errors=[{"field": "roles", "code": "unknown_role", "message": n} for n in unknown],
        )
    if not await position_in_scope(session, assign, user_id, org_unit_id):
        raise Forbidden(
            "Your 'assign' scope on users does not cover this user.", code="assign_not_allowed"
        )
    await delegation.check_roles(
        session,
        policy,
        assign.principal,
        added=sorted(set(new) - set(current)),
        removed=sorted(set(current) - set(new)),
        to_self=user_id == assign.principal.id,
        at=await delegation.position_of(session, user_id, manager_path, org_unit_id),
    )


async def _keep_an_admin(session: AsyncSession, user: User) -> None:
    """Refuse (409 ``last_admin``) leaving no active person holding ``admin`` by taking it
    from, or deactivating, ``user``. The advisory lock makes concurrent demotions take
    turns, and each counts the others after the previous one committed."""
    await repo.lock_admins(session)
    if await repo.other_active_admins(session, user.id) == 0:
        raise Conflict(
            "This is the last active administrator; make another user an administrator first.",
            code="last_admin",
            user_id=str(user.id),
        )


async def _check_org_unit(
    session: AsyncSession, access: Access, user_id: uuid.UUID, org_unit_id: uuid.UUID | None
) -> None:
    """The unit must be active, and the user, placed there, inside the caller's scope."""
    if org_unit_id is not None and await org_units.get_active_unit(session, org_unit_id) is None:
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
    if not await position_in_scope(session, access, user_id, org_unit_id):
        raise UnprocessableEntity(
            "org_unit_id is outside your scope on users.",
            code="invalid_org_unit",
            errors=[
                {
                    "field": "org_unit_id",
                    "code": "out_of_scope",
                    "message": "you could not reach a user placed there",
                }
            ],
        )


async def _check_target(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    user: User,
    role_names: set[str],
    *,
    new_manager_path: str,
    new_org_unit_id: uuid.UUID | None,
    fields: list[str],
) -> None:
    """Changing ``fields`` (credentials, e-mail, active flag, manager, unit) of ``user``,
    who holds ``role_names``, needs that the caller could confer all of them, where the
    user stands now and where the change puts them
    (:func:`crm_api.authz.delegation.check_target`, 403 ``grant_not_allowed``)."""
    if not fields:
        return
    positions = [
        await delegation.position_of(session, user.id, user.manager_path, user.org_unit_id)
    ]
    if (new_manager_path, new_org_unit_id) != (user.manager_path, user.org_unit_id):
        positions.append(
            await delegation.position_of(session, user.id, new_manager_path, new_org_unit_id)
        )
    await delegation.check_target(
        session,
        policy,
        access.principal,
        roles=role_names,
        positions=positions,
        fields=fields,
    )


async def _manager(session: AsyncSession, manager_id: uuid.UUID) -> User:
    manager = await repo.active_user_for_share(session, manager_id)
    if manager is None:
        raise UnprocessableEntity(
            "manager_id is not an active user.",
            code="invalid_manager",
            errors=[
                {
                    "field": "manager_id",
                    "code": "invalid_reference",
                    "message": "no such active user",
                }
            ],
        )
    return manager


# --- writes ------------------------------------------------------------------------------
async def create_user(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    assign: Access | None,
    data: UserCreate,
) -> dict[str, Any]:
    user_id = uuid.uuid4()
    password_hash = (
        _check_password(data.password.get_secret_value(), data.email) if data.password else None
    )
    await _check_email(session, data.email, None)
    manager_path = f"/{user_id}/"
    if data.manager_id is not None:
        await repo.lock_reporting_lines(session)
        manager = await _manager(session, data.manager_id)
        manager_path = f"{manager.manager_path}{user_id}/"
    if data.roles:
        await _check_roles(
            session,
            policy,
            assign,
            user_id,
            data.org_unit_id,
            manager_path,
            [],
            sorted(set(data.roles)),
        )
    await _check_org_unit(session, access, user_id, data.org_unit_id)
    role_names = sorted(set(data.roles))
    values = {
        "email": data.email,
        "display_name": data.display_name,
        "phone": data.phone,
        "org_unit_id": data.org_unit_id,
        "manager_id": data.manager_id,
        "manager_path": manager_path,
        "kind": "person",
        "password_hash": password_hash,
        "active": True,
        "tokens_valid_after": clock.now(),
    }
    extra = audit.diff(None, {"roles": role_names})
    if password_hash:
        extra["password"] = {"before": None, "after": audit.MASK}
    row = await lifecycle.insert(
        session,
        R,
        access,
        values,
        Placement(user_id, data.org_unit_id),
        record_id=user_id,
        extra=extra,
    )
    await repo.replace_roles(session, repo.subject(user_id, "person"), role_names)
    await bump_policy_version(session)
    return {**row, "roles": role_names}


async def _lock_person(
    session: AsyncSession,
    access: Access,
    user_id: uuid.UUID,
    if_match: str | None,
    require_if_match: bool,
) -> Locked:
    locked = await lifecycle.lock_or_404(
        session, R, access, user_id, if_match=if_match, require_if_match=require_if_match
    )
    if locked.row.kind == "service":
        raise Conflict(
            "This is the account behind an API client; manage it through the API client.",
            code="service_account",
        )
    return locked


async def update_user(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    assign: Access | None,
    user_id: uuid.UUID,
    patch: UserUpdate,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> dict[str, Any]:
    changes = patch.model_dump(exclude_unset=True)
    lifecycle.reject_nulls(changes, NOT_NULLABLE)
    if "manager_id" in changes:
        await repo.lock_reporting_lines(session)  # before the row lock: one order everywhere
    locked = await _lock_person(session, access, user_id, if_match, require_if_match)
    user = locked.row
    subject = repo.subject(user.id, user.kind)
    current_roles = await repo.roles_of(session, subject)
    new_roles = current_roles
    if "roles" in changes and sorted(set(changes["roles"])) != current_roles:
        new_roles = sorted(set(changes["roles"]))
        await _check_roles(  # where the user stands: a move is judged by _check_target
            session,
            policy,
            assign,
            user.id,
            user.org_unit_id,
            user.manager_path,
            current_roles,
            new_roles,
        )
        if ADMIN_ROLE in current_roles and ADMIN_ROLE not in new_roles and user.active:
            await _keep_an_admin(session, user)
    if "email" in changes and changes["email"].lower() != user.email.lower():
        await _check_email(session, changes["email"], user.id)
    if "org_unit_id" in changes and changes["org_unit_id"] != user.org_unit_id:
        await _check_org_unit(session, access, user.id, changes["org_unit_id"])
    old_prefix = user.manager_path
    new_prefix = old_prefix
    if "manager_id" in changes and changes["manager_id"] != user.manager_id:
        manager_id = changes["manager_id"]
        if manager_id is None:
            new_prefix = f"/{user.id}/"
        else:
            manager = await _manager(session, manager_id)
            if manager.manager_path.startswith(old_prefix):
                raise Conflict(
                    "A user cannot report to themself or to someone who reports to them.",
                    code="invalid_manager",
                    manager_id=str(manager_id),
                )
            new_prefix = f"{manager.manager_path}{user.id}/"
    await _check_target(
        session,
        policy,
        access,
        user,
        set(current_roles) | set(new_roles),
        new_manager_path=new_prefix,
        new_org_unit_id=changes.get("org_unit_id", user.org_unit_id),
        fields=[
            f
            for f, moved in (
                ("password", changes.get("password") is not None),
                ("email", "email" in changes and changes["email"] != user.email),
                ("manager_id", new_prefix != old_prefix),
                (
                    "org_unit_id",
                    "org_unit_id" in changes and changes["org_unit_id"] != user.org_unit_id,
                ),
            )
            if moved
        ],
    )
    if new_prefix != old_prefix:
        delegation.check_reporting_line(policy, access.principal, old_prefix, new_prefix)
    now = clock.now()
    columns: dict[str, Any] = {
        k: changes[k]
        for k in ("email", "display_name", "phone", "org_unit_id", "manager_id")
        if k in changes and changes[k] != getattr(user, k)
    }
    extra: dict[str, Any] = {}
    password = changes.get("password")
    if password is not None:
        columns["password_hash"] = _check_password(
            password.get_secret_value(), changes.get("email", user.email)
        )
        # The app's clock, the one tokens are minted by: compared to the microsecond.
        columns["tokens_valid_after"] = now
        extra["password"] = {"before": audit.MASK, "after": audit.MASK}
    if new_roles != current_roles:
        extra.update(audit.diff({"roles": current_roles}, {"roles": new_roles}))
    if new_prefix != old_prefix:
        columns["manager_path"] = new_prefix
        moved = await repo.move_reports(session, old_prefix, new_prefix, exclude_id=user.id)
        extra["reports_moved"] = {"before": None, "after": moved}
    row = await lifecycle.save_changes(
        session, R, access, locked, to_dict(R, user), columns, extra=extra, now=now
    )
    if new_roles != current_roles:
        await repo.replace_roles(session, subject, new_roles)
    if columns or extra:
        await bump_policy_version(session)
    return {**row, "roles": new_roles}


async def set_active(
    session: AsyncSession,
    policy: PolicyEngine,
    access: Access,
    user_id: uuid.UUID,
    active: bool,
    if_match: str | None,
) -> dict[str, Any]:
    """Deactivate (every token of the user stops working at once) or reactivate; either
    needs that the user holds nothing the caller could not confer (403
    ``grant_not_allowed``)."""
    locked = await _lock_person(session, access, user_id, if_match, False)
    user = locked.row
    role_names = await repo.roles_of(session, repo.subject(user.id, user.kind))
    if user.active is active:
        return {**to_dict(R, user), "roles": role_names}
    if not active and user.id == access.principal.id:
        raise Conflict("You cannot deactivate yourself.", code="cannot_deactivate_self")
    if not active and ADMIN_ROLE in role_names:
        await _keep_an_admin(session, user)
    await _check_target(
        session,
        policy,
        access,
        user,
        set(role_names),
        new_manager_path=user.manager_path,
        new_org_unit_id=user.org_unit_id,
        fields=["active"],
    )
    now = clock.now()
    changes: dict[str, Any] = {"active": active}
    if not active:
        # The app's clock, the one tokens are minted by: compared to the microsecond.
        changes["tokens_valid_after"] = now
    row = await lifecycle.save_changes(
        session,
        R,
        access,
        locked,
        to_dict(R, user),
        changes,
        action="activate" if active else "deactivate",
        now=now,
    )
    await bump_policy_version(session)
    return {**row, "roles": role_names}
