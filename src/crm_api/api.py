"""The one place that mounts every domain router under /v1."""

from __future__ import annotations

from fastapi import APIRouter

from crm_api.api_client.endpoints import router as api_clients
from crm_api.audit.endpoints import router as audit_events
from crm_api.auth.endpoints import me_router
from crm_api.auth.endpoints import router as auth
from crm_api.auth.pat_endpoints import router as me_tokens
from crm_api.authz.endpoints import router as authz
from crm_api.contact.endpoints import customer_router as customer_contacts
from crm_api.contact.endpoints import router as contacts
from crm_api.customer.endpoints import router as customers
from crm_api.org_unit.endpoints import router as org_units
from crm_api.role.endpoints import router as roles
from crm_api.user.endpoints import router as users

router = APIRouter(prefix="/v1")
router.include_router(auth)
router.include_router(me_router)
router.include_router(me_tokens)
router.include_router(api_clients)
router.include_router(customers)
router.include_router(customer_contacts)
router.include_router(contacts)
router.include_router(audit_events)
router.include_router(org_units)
router.include_router(users)
router.include_router(roles)
router.include_router(authz)
