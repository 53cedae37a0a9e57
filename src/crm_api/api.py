"""The one place that mounts every domain router under /v1."""

from __future__ import annotations

from fastapi import APIRouter

from crm_api.auth.endpoints import me_router
from crm_api.auth.endpoints import router as auth
from crm_api.customer.endpoints import router as customers

router = APIRouter(prefix="/v1")
router.include_router(auth)
router.include_router(me_router)
router.include_router(customers)
