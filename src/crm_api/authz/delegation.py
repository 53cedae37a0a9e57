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
  reporting line (which hands you their records under ``subordinates``), or a unit into
  your own subtree, or moving the unit you stand in (:func:`check_unit_move`).
  Administrators are exempt — nothing widens ``*``/``*``/``all`` — and keep full ability
  to administer.
* Nobody acts on someone stronger (:func:`check_target`): changing the credentials,
  identity, active flag or place of a user or API client (password, e-mail, secret,
  manager, org unit) is signing in as them, or choosing what they reach. It needs that
  the caller could confer every role the target holds, judged from where the target
  stands (:class:`Position`) before and after the change.

Every refusal is a 403 problem: ``role_not_grantable`` for roles, ``grant_not_allowed``
for grants, token permissions, moves and acting on a stronger target, each naming what
was refused in ``refused`` and why in ``reason``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import String, case, cast, literal, select
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


@dataclass(frozen=True, slots=True)
class Position:
    """Where a principal stands, which is what its relative scopes are read from: itself
    (``own``), its reporting line (``subordinates``), its unit (``org_unit``) and that
    unit's path (``org_subtree``)."""

    user_id: uuid.UUID
    manager_path: str | None
    org_unit_id: uuid.UUID | None
    org_path: str | None


def _anchored(kind: ScopeKind, principal: Principal, at: Position) -> bool:
    """Whether the principal's own ``kind`` scope reaches the position ``at``: ``at`` is
    the principal (``own``), in its reporting line (``subordinates``), in its unit
    (``org_unit``) or in its subtree (``org_subtree``)."""
    if kind is ScopeKind.own:
        return at.user_id == principal.id
    if kind is ScopeKind.subordinates:
        return bool(
            principal.manager_path
            and at.manager_path
            and at.manager_path.startswith(principal.manager_path)
        )
    if kind is ScopeKind.org_unit:
        return principal.org_unit_id is not None and at.org_unit_id == principal.org_unit_id
    if kind is ScopeKind.org_subtree:
        return bool(
            principal.org_path and at.org_path and at.org_path.startswith(principal.org_path)
        )
    return False


def covers(
    held: Scope,
    wanted: ScopeKind,
    units: Iterable[uuid.UUID],
    principal: Principal,
    subtree_units: Iterable[uuid.UUID] = (),
    at: Position | None = None,
) -> bool:
    """Whether a holder of ``held`` may confer ``wanted`` (equal or narrower).

    ``all`` covers everything. ``created_by_self`` is covered by itself only (see the
    code). A relative scope (own, subordinates, org_unit, org_subtree)
    is covered by a held relative scope at least as high on :data:`LADDER`; a held
    ``custom`` list never covers one (it is not anchored on the receiver). ``custom``
    units are covered one by one: each must be among the holder's own custom units, be
    the holder's unit under ``org_unit``, or lie in the holder's subtree under
    ``org_subtree`` (``subtree_units``: those of ``units`` that do).

    With ``at`` (the receiver's position, known), a relative scope is judged there: the
    held kind must also reach that position from the holder's own (:func:`_anchored`):
    ``org_subtree`` read at a unit outside the holder's subtree reaches units the holder
    does not. A unit scope read at no unit reaches nothing, so it is covered. The ladder
    keeps one approximation: a user's ``own``/``subordinates`` records are taken to lie
    where the unit scopes that reach the user reach.
    """
    if held.is_all:
        return True
    if wanted is ScopeKind.all:
        return False
    if wanted is ScopeKind.created_by_self:
        # Off the ladder: what the receiver creates is no one else's own, unit or
        # subtree. Like ``own``, it is covered by itself judged without a position, and at
        # a position only where that position is the holder (which :func:`check_roles`
        # refuses as a self-grant): in effect only ``all`` confers it on someone else.
        return ScopeKind.created_by_self in held.kinds and (
            at is None or at.user_id == principal.id
        )
    if wanted is ScopeKind.custom:
        rest = set(units)
        if ScopeKind.custom in held.kinds:
            rest -= held.unit_ids
        if ScopeKind.org_unit in held.kinds and principal.org_unit_id is not None:
            rest.discard(principal.org_unit_id)
        if ScopeKind.org_subtree in held.kinds:
            rest -= set(subtree_units)
        return not rest
    if (
        at is not None
        and at.org_unit_id is None
        and wanted in (ScopeKind.org_unit, ScopeKind.org_subtree)
    ):
        return True
    return any(
        kind in LADDER
        and LADDER[kind] >= LADDER[wanted]
        and (at is None or _anchored(kind, principal, at))
        for kind in held.kinds
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


async def position_of(
    session: AsyncSession,
    user_id: uuid.UUID,
    manager_path: str | None,
    org_unit_id: uuid.UUID | None,
) -> Position:
    """The :class:`Position` of a user (or API client's service account) placed in
    ``org_unit_id``, as of the caller's transaction (the unit's path is read)."""
    from crm_api.models.org_unit import OrgUnit

    path = None
    if org_unit_id is not None:
        path = (
            await session.execute(select(OrgUnit.path).where(OrgUnit.id == org_unit_id))
        ).scalar_one_or_none()
    return Position(user_id, manager_path, org_unit_id, path)


async def refused_grants(
    session: AsyncSession,
    policy: PolicyEngine,
    principal: Principal,
    grants: Iterable[Grant],
    at: Position | None = None,
) -> list[Grant]:
    """The grants among ``grants`` the principal could not confer (empty: all fine), on a
    receiver standing at ``at`` when given (see :func:`covers`)."""
    refused: list[Grant] = []
    for grant in grants:
        held = policy.scope_for(principal, grant.resource, grant.action)
        if held is None:
            refused.append(grant)
            continue
        subtree: set[uuid.UUID] = set()
        if (
            grant.scope is ScopeKind.custom
            and not held.is_all
            and ScopeKind.org_subtree in held.kinds
        ):
            subtree = await _in_subtree(session, principal, grant.units)
        if not covers(held, grant.scope, grant.units, principal, subtree, at):
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


async def _unconferrable(
    session: AsyncSession,
    policy: PolicyEngine,
    principal: Principal,
    names: Sequence[str],
    positions: Sequence[Position | None],
) -> dict[str, list[str]]:
    """Of the roles ``names``, those the (non-administrator) principal could not confer on
    a receiver standing at each of ``positions`` (``None``: judged by the ladder alone),
    with the grants that stop it."""
    refused: dict[str, list[str]] = {}
    grants = await role_grants(session, names)
    for name in sorted(set(names)):
        if name == ADMIN_ROLE:
            refused[name] = ["only an administrator confers the admin role"]
            continue
        why: list[str] = []
        for at in positions:
            why += [
                g.describe()
                for g in await refused_grants(session, policy, principal, grants[name], at)
                if g.describe() not in why
            ]
        if why:
            refused[name] = why
    return refused


async def check_target(
    session: AsyncSession,
    policy: PolicyEngine,
    principal: Principal,
    *,
    roles: Iterable[str],
    positions: Sequence[Position],
    fields: Iterable[str],
) -> None:
    """Refuse (403 ``grant_not_allowed``, ``reason: target_outranks``) changing ``fields``
    of a user or API client holding ``roles`` unless the principal could confer each of
    those roles on it at each of ``positions`` (where it stands now, and after the
    change). Setting someone's password, e-mail or secret is signing in as them; moving or
    switching them on chooses what they reach: with more than the caller holds, either
    widens the caller's own access. Acting on yourself passes (you hold what you hold),
    unless narrowed by a personal access token. Administrators are exempt."""
    changing = sorted(set(fields))
    held = sorted(set(roles))
    if not changing or not held or is_admin(policy, principal):
        return
    refused = await _unconferrable(session, policy, principal, held, positions)
    if refused:
        raise Forbidden(
            "This principal holds more than you could give: changing its "
            + ", ".join(changing)
            + " would hand you (or let you choose) access you do not "
            "hold. Ask an administrator. Beyond your reach: "
            + "; ".join(f"{name} ({', '.join(why)})" for name, why in sorted(refused.items()))
            + ".",
            code="grant_not_allowed",
            refused=sorted(refused),
            reason="target_outranks",
            fields=changing,
        )


async def check_roles(
    session: AsyncSession,
    policy: PolicyEngine,
    principal: Principal,
    *,
    added: Sequence[str],
    removed: Sequence[str] = (),
    to_self: bool,
    at: Position | None = None,
) -> None:
    """Refuse (403 ``role_not_grantable``) giving ``added`` or taking ``removed`` unless
    the principal could confer each of those roles on a receiver standing at ``at`` (see
    :func:`covers`), and adding any role to itself."""
    changed = sorted(set(added) | set(removed))
    if not changed:
        return
    admin = is_admin(policy, principal)
    if admin:
        return
    if to_self and added:
        raise Forbidden(
            "You cannot give yourself roles: " + ", ".join(sorted(set(added))) + ".",
            code="role_not_grantable",
            refused=sorted(set(added)),
            reason="self",
        )
    refused = await _unconferrable(session, policy, principal, changed, (at,))
    if refused:
        raise Forbidden(
            "You can only give or take roles whose every grant you hold yourself, over no "
            "wider a scope. Refused: "
            + "; ".join(f"{name} ({', '.join(why)})" for name, why in sorted(refused.items()))
            + ".",
            code="role_not_grantable",
            refused=sorted(refused),
            reason="not_held",
        )


async def check_grant_edit(
    session: AsyncSession,
    policy: PolicyEngine,
    principal: Principal,
    role: str,
    grant: Grant | None,
) -> None:
    """Refuse (403 ``grant_not_allowed``) editing the grants of ``role``: adding ``grant``
    (``None``: a removal) needs the grant held (see :func:`refused_grants`) — a relative
    grant also where each current holder of the role stands, since it takes effect there
    at once — and the role not held by the editor; any edit of the ``admin`` role needs
    an administrator."""
    if is_admin(policy, principal):
        return
    if role == ADMIN_ROLE:
        raise Forbidden(
            "Only an administrator edits the admin role's grants.",
            code="grant_not_allowed",
            refused=[role],
            reason="admin_role",
        )
    if grant is None:
        return
    if role in policy.roles_of(principal):
        raise Forbidden(
            f"You hold {role!r}: adding to its grants would widen your own access.",
            code="grant_not_allowed",
            refused=[grant.describe()],
            reason="self",
        )
    positions: list[Position | None] = [None]
    if grant.scope in LADDER and grant.scope is not ScopeKind.all:
        positions += await holder_positions(session, role)
    for at in positions:
        if await refused_grants(session, policy, principal, [grant], at):
            raise Forbidden(
                f"You can only grant what you hold, over no wider a scope: {grant.describe()}"
                + (" (read where the role's holders stand)" if at is not None else "")
                + ".",
                code="grant_not_allowed",
                refused=[grant.describe()],
                reason="not_held",
            )


async def holder_positions(session: AsyncSession, role: str) -> list[Position]:
    """Where each current holder of ``role`` (user or API client) stands: a relative grant
    added to the role is read at each of them."""
    from crm_api.models.authz_rule import AuthzRule
    from crm_api.models.org_unit import OrgUnit
    from crm_api.models.user import User

    subject = case((User.kind == "service", literal("client:")), else_=literal("user:")) + cast(
        User.id, String
    )
    stmt = (
        select(User.id, User.manager_path, User.org_unit_id, OrgUnit.path)
        .outerjoin(OrgUnit, OrgUnit.id == User.org_unit_id)
        .where(
            subject.in_(select(AuthzRule.v0).where(AuthzRule.ptype == "g", AuthzRule.v1 == role))
        )
    )
    return [Position(*row) for row in (await session.execute(stmt)).all()]


def check_reporting_line(
    policy: PolicyEngine, principal: Principal, old_path: str, new_path: str
) -> None:
    """Refuse (403 ``grant_not_allowed``, ``reason: self``) moving a user (``manager_path``
    ``old_path`` → ``new_path``) when the move

    * brings the user into the caller's own reporting line: the caller's ``subordinates``
      scope would then cover that user's records; or
    * carries the caller (the user is the caller, or someone the caller reports to):
      changing whom you report to takes your records, and your reports', out of your
      superiors' ``subordinates`` oversight, or hands them to someone of your choosing.
      Someone above does that, as with the org unit one stands in
      (:func:`check_unit_move`).

    Moves within the caller's line, out of it, or elsewhere are fine; administrators are
    exempt."""
    mine = principal.manager_path
    if not mine:
        return
    into_mine = new_path.startswith(mine) and not old_path.startswith(mine)
    carries_me = mine.startswith(old_path)
    if not (into_mine or carries_me):
        return
    if is_admin(policy, principal):
        return
    if carries_me:
        raise Forbidden(
            "You cannot change whom you report to (or whom those above you report to): "
            "it decides who oversees your records. Ask someone above you.",
            code="grant_not_allowed",
            refused=["manager_id"],
            reason="self",
        )
    raise Forbidden(
        "You cannot bring a user into your own reporting line: it would widen your access "
        "to their records. Ask someone above you.",
        code="grant_not_allowed",
        refused=["manager_id"],
        reason="self",
    )


def check_unit_move(
    policy: PolicyEngine, principal: Principal, old_path: str, new_path: str
) -> None:
    """Refuse (403 ``grant_not_allowed``, ``reason: self``) moving an org unit (path
    ``old_path`` → ``new_path``) when the move

    * brings it into the caller's own subtree from outside: every ``org_subtree`` grant
      the caller holds would then reach its people and records; or
    * carries the caller's own unit (it contains it): that moves the caller, which is for
      someone above. (It widens no ``org_subtree`` of the caller, whose contents move
      along, but hands the caller's subtree to new ancestors and takes it from old ones.)

    Moves within the caller's subtree, out of it, or elsewhere are fine (the caller's
    scope on org units decides where it may act at all); administrators are exempt."""
    mine = principal.org_path
    if not mine:
        return
    into_mine = new_path.startswith(mine) and not old_path.startswith(mine)
    if not (into_mine or mine.startswith(old_path)):
        return
    if is_admin(policy, principal):
        return
    raise Forbidden(
        "You cannot move the unit you stand in, nor bring a unit under it: it would widen "
        "your own access (or move you). Ask someone above you.",
        code="grant_not_allowed",
        refused=["parent_id"],
        reason="self",
    )


def check_token_permissions(
    policy: PolicyEngine, principal: Principal, wanted: Sequence[tuple[str, str]]
) -> None:
    """Refuse (403 ``grant_not_allowed``) a personal access token permission the creator
    does not hold. A token carries no scope of its own: at use it is narrowed to its
    owner's scopes at that time, so holding the (resource, action) is the whole test."""
    denied = [
        (i, resource, action)
        for i, (resource, action) in enumerate(wanted)
        if policy.scope_for(principal, resource, action) is None
    ]
    if denied:
        raise Forbidden(
            "You can only give a token permissions you hold: "
            + ", ".join(f"{a} on {r}" for _, r, a in denied)
            + ".",
            code="grant_not_allowed",
            refused=[f"{a} on {r}" for _, r, a in denied],
            reason="not_held",
            errors=[
                {
                    "field": f"permissions.{i}",
                    "code": "permission_not_held",
                    "message": "not granted to you",
                }
                for i, _, _ in denied
            ],
        )
