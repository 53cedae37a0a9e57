"""Who is calling. Until token authentication lands every request acts as the system
principal; handlers and services already take the principal explicitly."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from crm_api.authz.types import SYSTEM, Principal


async def get_principal(request: Request) -> Principal:
    return SYSTEM


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
