"""The vocabulary grants may use: the registered resources, those some route enforces and
those of the default grants, and the actions of :class:`~crm_api.authz.types.Action`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from crm_api.authz.defaults import DEFAULT_GRANTS
from crm_api.authz.dependencies import PERMISSION_ATTR
from crm_api.authz.types import Action
from crm_api.resources import REGISTRY

ACTIONS = frozenset(a.value for a in Action)
#: Markers of routes that are open or act on the caller themself: not resources.
_NOT_RESOURCES = frozenset({"self", "public"})


def known_resources(app: FastAPI) -> frozenset[str]:
    """Collected once per app from the routes' permission dependencies, so a new domain's
    resource becomes grantable as soon as its router is mounted."""
    cached: frozenset[str] | None = getattr(app.state, "known_resources", None)
    if cached is not None:
        return cached
    found = {res for grants in DEFAULT_GRANTS.values() for res, _, _ in grants if res != "*"}
    # not those every caller has of their own (personal access tokens): no grant reaches them
    found.update(n for n, r in REGISTRY.items() if r.grant_group != "self")
    # iter_route_contexts: app.routes holds included routers, not their routes (FastAPI
    # keeps an included router whole); this walks the routes as mounted.
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        pending = list(route.dependant.dependencies)
        while pending:
            dep = pending.pop()
            marker = getattr(dep.call, PERMISSION_ATTR, None)
            if marker and marker[0] not in _NOT_RESOURCES:
                found.add(marker[0])
            pending.extend(dep.dependencies)
    resources = frozenset(found)
    app.state.known_resources = resources
    return resources
