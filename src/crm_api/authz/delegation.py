"""Delegation: what a principal may confer on others. The one check behind every path that
hands out permissions — user roles, role grants, API client roles, personal access tokens.

The rule (docs/access-model.md, "Delegation"):

* A principal confers a grant ``(resource, action, scope)`` only if it holds that
  ``(resource, action)`` itself — as the policy engine answers it, so ``*`` must be held as
  ``*`` — over a scope that :func:`covers` the conferred one.
* It confers a role only if it could confer every grant of the role; the ``admin`` role
  only if it is an administrator (holds ``*``/``*`` over ``all``).
* Taking a role away needs the same authority as giving it: a holder of ``users:assign``
  cannot strip roles it could not have handed out.
* Nobody widens their own access: adding a role to yourself (or to the API client you are)
  or a grant to a role you hold is refused, and so is bringing someone into your own
  reporting line (which hands you their records under ``subordinates``). Administrators
  are exempt — nothing widens ``*``/``*``/``all`` — and keep full ability to administer.

Every refusal is a 403 problem: ``role_not_grantable`` for roles, ``grant_not_allowed``
for grants and token permissions, each naming what was refused in ``refused``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.types import Principal, Scope, ScopeKind
from crm_api.errors import Forbidden

#: The role that bootstraps everything: only an administrator confers it.
ADMIN_ROLE = "admin"

#: How far each relative scope reaches, read from the position of whoever holds it. A
#: conferred relative scope is judged from the receiver's position, and the receiver must
#: itself be inside the conferrer's reach (its ``assign`` scope on users, its scope on API
#: clients), so a kind no higher on this ladder reaches no further than the conferrer's
#: own. ``custom`` is not on the ladder: it names units, judged unit by unit.
LADDER = {
    ScopeKind.own: 0,
    ScopeKind.subordinates: 1,
    ScopeKind.org_unit: 2,
    ScopeKind.org_subtree: 3,
    ScopeKind.all: 4,
}


@dataclass(frozen=True, slots=True)
class Grant:
    """One ``(resource, action, scope)`` being conferred; ``units`` for ``custom``."""

    resource: str
    action: str
    scope: ScopeKind
    units: frozenset[uuid.UUID] = field(default_factory=frozenset)

    def describe(self) -> str:
        text = f"{self.action} on {self.resource} over {self.scope.value}"
        if self.units:
            text += " (" + ", ".join(sorted(str(u) for u in self.units)) + ")"
        return text


def covers(
    held: Scope, wanted: ScopeKind, units: Iterable[uuid.UUID], principal: Principal,
    subtree_units: Iterable[uuid.UUID] = (),
) -> bool:
    """Whether a holder of ``held`` may confer ``wanted`` (equal or narrower).

    ``all`` covers everything. A relative scope (own, subordinates, org_unit, org_subtree)
    is covered by a held relative scope at least as high on :data:`LADDER`; a held
    ``custom`` list never covers one (it is not anchored on the receiver). ``custom``
    units are covered one by one: each must be among the holder's own custom units, be
    the holder's unit under ``org_unit``, or lie in the holder's subtree under
    ``org_subtree`` (``subtree_units``: those of ``units`` that do).
    """
    if held.is_all:
        return True
    if wanted is ScopeKind.all:
        return False
    if wanted is ScopeKind.custom:
        rest = set(units)
        if ScopeKind.custom in held.kinds:
            rest -= held.unit_ids
        if ScopeKind.org_unit in held.kinds and principal.org_unit_id is not None:
            rest.discard(principal.org_unit_id)
        if ScopeKind.org_subtree in held.kinds:
            rest -= set(subtree_units)
        return not rest
    return any(
        kind in LADDER and LADDER[kind] >= LADDER[wanted] for kind in held.kinds
    )


def is_admin(policy: PolicyEngine, principal: Principal) -> bool:
    """Holds ``*``/``*`` over ``all`` (not through a narrowed personal access token)."""
    scope = policy.scope_for(principal, "*", "*")
    return scope is not None and scope.is_all


async def _in_subtree(
    session: AsyncSession, principal: Principal, units: Iterable[uuid.UUID]
) -> set[uuid.UUID]:
    """Those of ``units`` inside the principal's org subtree."""
    from crm_api.models.org_unit import OrgUnit

    wanted = sorted(set(units))
    if not wanted or not principal.org_path:
        return set()
    stmt = select(OrgUnit.id).where(
        OrgUnit.id.in_(wanted), OrgUnit.path.startswith(principal.org_path, autoescape=True)
    )
    return set((await session.execute(stmt)).scalars())


async def refused_grants(
    session: AsyncSession, policy: PolicyEngine, principal: Principal, grants: Iterable[Grant]
) -> list[Grant]:
    """The grants among ``grants`` the principal could not confer (empty: all fine)."""
    refused: list[Grant] = []
    for grant in grants:
        held = policy.scope_for(principal, grant.resource, grant.action)
        if held is None:
            refused.append(grant)
            continue
        subtree: set[uuid.UUID] = set()
        if (
            grant.scope is ScopeKind.custom and not held.is_all
            and ScopeKind.org_subtree in held.kinds
        ):
            subtree = await _in_subtree(session, principal, grant.units)
        if not covers(held, grant.scope, grant.units, principal, subtree):
            refused.append(grant)
    return refused


async def role_grants(session: AsyncSession, names: Iterable[str]) -> dict[str, list[Grant]]:
    """The grants of each role in ``names`` (the ``p`` rows of ``authz_rules``, which
    access control owns), as of the caller's transaction."""
    from crm_api.models.authz_rule import AuthzRule

    wanted = sorted(set(names))
    found: dict[str, list[Grant]] = {name: [] for name in wanted}
    if not wanted:
        return found
    stmt = select(AuthzRule.v0, AuthzRule.v1, AuthzRule.v2, AuthzRule.v3, AuthzRule.v4).where(
        AuthzRule.ptype == "p", AuthzRule.v0.in_(wanted)
    )
    for role, resource, action, scope, raw in (await session.execute(stmt)).all():
        try:
            kind = ScopeKind(scope)
        except ValueError:  # a row no decision can match confers nothing
            continue
        units = frozenset(uuid.UUID(u) for u in (raw or "").split("|") if u)
        found[role].append(Grant(resource, action, kind, units))
    return found


async def check_roles(
    session: AsyncSession, policy: PolicyEngine, principal: Principal, *,
    added: Sequence[str], removed: Sequence[str] = (), to_self: bool,
) -> None:
    """Refuse (403 ``role_not_grantable``) giving ``added`` or taking ``removed`` unless
    the principal could confer each of those roles, and adding any role to itself."""
    changed = sorted(set(added) | set(removed))
    if not changed:
        return
    admin = is_admin(policy, principal)
    if admin:
        return
    if to_self and added:
        raise Forbidden(
            "You cannot give yourself roles: " + ", ".join(sorted(set(added))) + ".",
            code="role_not_grantable", refused=sorted(set(added)), reason="self",
        )
    refused: dict[str, list[str]] = {}
    grants = await role_grants(session, changed)
    for name in changed:
        if name == ADMIN_ROLE:
            refused[name] = ["only an administrator confers the admin role"]
            continue
        missing = await refused_grants(session, policy, principal, grants[name])
        if missing:
            refused[name] = [g.describe() for g in missing]
    if refused:
        raise Forbidden(
            "You can only give or take roles whose every grant you hold yourself, over no "
            "wider a scope. Refused: " + "; ".join(
                f"{name} ({', '.join(why)})" for name, why in sorted(refused.items())
            ) + ".",
            code="role_not_grantable", refused=sorted(refused), reason="not_held",
        )


async def check_grant_edit(
    session: AsyncSession, policy: PolicyEngine, principal: Principal, role: str,
    grant: Grant | None,
) -> None:
    """Refuse (403 ``grant_not_allowed``) editing the grants of ``role``: adding ``grant``
    (``None``: a removal) needs the grant held (see :func:`refused_grants`) and the role
    not held by the editor; any edit of the ``admin`` role needs an administrator."""
    if is_admin(policy, principal):
        return
    if role == ADMIN_ROLE:
        raise Forbidden(
            "Only an administrator edits the admin role's grants.", code="grant_not_allowed",
            refused=[role], reason="admin_role",
        )
    if grant is None:
        return
    if role in policy.roles_of(principal):
        raise Forbidden(
            f"You hold {role!r}: adding to its grants would widen your own access.",
            code="grant_not_allowed", refused=[grant.describe()], reason="self",
        )
    if await refused_grants(session, policy, principal, [grant]):
        raise Forbidden(
            f"You can only grant what you hold, over no wider a scope: {grant.describe()}.",
            code="grant_not_allowed", refused=[grant.describe()], reason="not_held",
        )


def check_reporting_line(
    policy: PolicyEngine, principal: Principal, old_path: str, new_path: str
) -> None:
    """Refuse (403 ``grant_not_allowed``) moving a user (``manager_path`` ``old_path`` →
    ``new_path``) into the caller's own reporting line: the caller's ``subordinates``
    scope would then cover that user's records. Moves within the line, out of it, or
    elsewhere are fine; administrators are exempt."""
    mine = principal.manager_path
    if not mine or not new_path.startswith(mine) or old_path.startswith(mine):
        return
    if is_admin(policy, principal):
        return
    raise Forbidden(
        "You cannot bring a user into your own reporting line: it would widen your access "
        "to their records. Ask someone above you.",
        code="grant_not_allowed", refused=["manager_id"], reason="self",
    )


def check_token_permissions(
    policy: PolicyEngine, principal: Principal, wanted: Sequence[tuple[str, str]]
) -> None:
    """Refuse (403 ``grant_not_allowed``) a personal access token permission the creator
    does not hold. A token carries no scope of its own: at use it is narrowed to its
    owner's scopes at that time, so holding the (resource, action) is the whole test."""
    denied = [
        (i, resource, action) for i, (resource, action) in enumerate(wanted)
        if policy.scope_for(principal, resource, action) is None
    ]
    if denied:
        raise Forbidden(
            "You can only give a token permissions you hold: "
            + ", ".join(f"{a} on {r}" for _, r, a in denied) + ".",
            code="grant_not_allowed", refused=[f"{a} on {r}" for _, r, a in denied],
            reason="not_held",
            errors=[{"field": f"permissions.{i}", "code": "permission_not_held",
                     "message": "not granted to you"} for i, _, _ in denied],
        )
