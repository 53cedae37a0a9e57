"""The one authorization choke point: ``require(resource, action)``.

Every route declares it (a test fails for a route without one). It resolves the caller's
widest scope for the action; no grant at all is 403. The resulting :class:`Access` is what
repositories turn into SQL, so out-of-scope records are simply not found (404).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from crm_api.auth.dependencies import CurrentPrincipal
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.scope import contains
from crm_api.authz.types import Access, Action, Principal, Scope, ScopeKind
from crm_api.errors import Forbidden

#: Marker attribute the route-coverage test looks for.
PERMISSION_ATTR = "__crm_permission__"


def get_policy(request: Request) -> PolicyEngine:
    engine: PolicyEngine = request.app.state.policy
    return engine


def access_for(
    policy: PolicyEngine, principal: Principal, resource: str, action: Action | str
) -> Access | None:
    """The :class:`Access` ``principal`` holds for ``action`` on ``resource`` (``None``:
    not granted), as :func:`require` hands it to a handler: for a service that acts on a
    second resource besides its route's own (an order POST upserting its customer)."""
    action_name = action.value if isinstance(action, Action) else action
    scope = policy.scope_for(principal, resource, action_name)
    if scope is None:
        return None
    # read_sensitive has a scope of its own: a caller reading more widely than it may
    # see sensitive fields gets them masked outside that scope (see sensitive_clause)
    sensitive_scope = policy.scope_for(principal, resource, Action.read_sensitive.value)
    sensitive = sensitive_scope is not None and contains(sensitive_scope, scope)
    return Access(principal, resource, action_name, scope, sensitive, sensitive_scope)


def require(resource: str, action: Action | str) -> Any:
    action_name = action.value if isinstance(action, Action) else action

    async def dependency(request: Request, principal: CurrentPrincipal) -> Access:
        access = access_for(get_policy(request), principal, resource, action_name)
        if access is None:
            raise Forbidden(
                f"Your role does not allow '{action_name}' on '{resource}'.",
                code="permission_denied",
                resource=resource,
                action=action_name,
            )
        return access

    setattr(dependency, PERMISSION_ATTR, (resource, action_name))
    dependency.__name__ = f"require_{resource}_{action_name}".replace("-", "_")
    return Depends(dependency)


def optional(resource: str, action: Action | str) -> Any:
    """The caller's access for a secondary action (``assign`` while creating, say), or
    ``None``: for handlers whose behaviour widens with a permission. Not a route guard."""
    action_name = action.value if isinstance(action, Action) else action

    async def dependency(request: Request, principal: CurrentPrincipal) -> Access | None:
        policy = get_policy(request)
        scope = policy.scope_for(principal, resource, action_name)
        if scope is None:
            return None
        return Access(principal, resource, action_name, scope, False)

    return Depends(dependency)


def authenticated() -> Any:
    """Any valid token, whatever its grants (``/v1/me``): the caller acts on themself."""

    async def dependency(principal: CurrentPrincipal) -> Principal:
        return principal

    setattr(dependency, PERMISSION_ATTR, ("self", "authenticated"))
    return Depends(dependency)


def own_records(resource: str, action: Action | str) -> Any:
    """Any valid token, acting on the caller's own records of ``resource`` and nobody
    else's (``/v1/me/tokens``): the access of an ``own`` scope, granted by being signed in
    rather than by a role. Fail closed like every scope: a record whose owner is not the
    caller matches nothing."""
    action_name = action.value if isinstance(action, Action) else action

    async def dependency(principal: CurrentPrincipal) -> Access:
        return Access(principal, resource, action_name, Scope(frozenset({ScopeKind.own})))

    setattr(dependency, PERMISSION_ATTR, ("self", action_name))
    dependency.__name__ = f"own_{resource}_{action_name}"
    return Depends(dependency)


def public() -> Any:
    """Marks a route as deliberately open (health, metrics, token issuance)."""

    async def dependency() -> None:
        return None

    setattr(dependency, PERMISSION_ATTR, ("public", "public"))
    return Depends(dependency)
