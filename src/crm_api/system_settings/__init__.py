"""System settings (``/v1/settings``): typed, range-checked parameters every worker keeps
cached and fresh within the policy poll interval.

Use them through the dependency::

    async def handler(settings: CurrentSystemSettings) -> ...:
        places = settings.amount_decimal_places
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from crm_api.system_settings.schemas import SystemSettings
from crm_api.system_settings.store import SettingsStore


async def current_system_settings(request: Request) -> SystemSettings:
    """The process's cached snapshot (``app.state.system_settings``): no query. Async,
    so FastAPI does not run it in its thread pool (a thread hop per order create)."""
    store: SettingsStore = request.app.state.system_settings
    return store.current


#: The system settings as this worker currently knows them.
CurrentSystemSettings = Annotated[SystemSettings, Depends(current_system_settings)]

__all__ = ["CurrentSystemSettings", "SettingsStore", "SystemSettings", "current_system_settings"]
