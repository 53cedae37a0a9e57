"""The one place that mounts every domain router under /v1."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from crm_api.api_client.endpoints import router as api_clients
from crm_api.audit.endpoints import router as audit_events
from crm_api.auth.endpoints import me_router
from crm_api.auth.endpoints import router as auth
from crm_api.authz.endpoints import router as authz
from crm_api.contact.endpoints import customer_router as customer_contacts
from crm_api.contact.endpoints import router as contacts
from crm_api.customer.endpoints import router as customers
from crm_api.order.endpoints import customer_router as customer_orders
from crm_api.order.endpoints import router as orders
from crm_api.org_unit.endpoints import router as org_units
from crm_api.pat.endpoints import router as me_tokens
from crm_api.product.endpoints import router as products
from crm_api.role.endpoints import router as roles
from crm_api.system_settings.endpoints import router as system_settings
from crm_api.user.endpoints import router as users

#: Mounted under /v1, each directly on the app: FastAPI matches an included router by
#: scanning its routes and then scanning again to handle the request, at every level of
#: nesting, so one level is measurably cheaper than two (docs/benchmarks.md). The most
#: requested resources come first: matching stops at the first full match.
PREFIX = "/v1"
ROUTERS: tuple[APIRouter, ...] = (
    customers,
    customer_contacts,
    contacts,
    orders,
    customer_orders,
    auth,
    me_router,
    me_tokens,
    api_clients,
    audit_events,
    org_units,
    users,
    roles,
    authz,
    products,
    system_settings,
)


def mount(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router, prefix=PREFIX)
