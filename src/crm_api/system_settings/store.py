"""The process's cached snapshot of the system settings.

Loaded at start-up, reloaded whenever the policy poll (``crm_api.authz.enforcer``) sees
``system_settings.version`` move — so every worker has a change within
``CRM_AUTHZ_POLL_INTERVAL_S`` — and replaced at once, right after its commit, on the worker
that made it. A request reads it with a dict lookup, never a query.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_api.system_settings import repository
from crm_api.system_settings.schemas import SystemSettings

logger = logging.getLogger("crm_api.system_settings")


def effective(stored: dict[str, Any]) -> SystemSettings:
    """The settings ``stored`` (what administrators set) makes, every other one at its
    default. A stored value the code no longer accepts (a setting removed, a range
    narrowed) falls back to its default, logged, instead of stopping the worker."""
    values = {k: v for k, v in stored.items() if k in SystemSettings.model_fields}
    dropped = sorted(set(stored) - set(values))
    while True:
        try:
            settings = SystemSettings.model_validate(values)
            break
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            if not bad & set(values):  # cannot happen with defaults that validate
                raise
            dropped.extend(sorted(bad & set(values)))
            values = {k: v for k, v in values.items() if k not in bad}
    if dropped:
        logger.warning("stored system settings ignored (at their defaults): %s", dropped)
    return settings


class SettingsStore:
    """``current`` and its ``version`` (0: nothing stored, every setting at its default)."""

    def __init__(self) -> None:
        self.current = SystemSettings()
        self.version = 0

    def apply(self, stored: dict[str, Any], version: int) -> None:
        """Take the snapshot a change committed on this worker made (right after the
        commit); an older version than the cached one is ignored."""
        if version >= self.version:
            self.current, self.version = effective(stored), version

    async def load(self, engine: AsyncEngine) -> None:
        """Read the stored settings and take them, whatever was cached (start-up)."""
        async with engine.connect() as conn:
            stored, version = await repository.read(conn)
        self.current, self.version = effective(stored), version

    async def refresh(self, engine: AsyncEngine) -> None:
        """Read the stored settings (a policy-poll listener). A read that started before
        this worker committed a change of its own (and :meth:`apply`-ed it) is older than
        the cache and ignored; the next poll sees the version it missed. Version 0 means
        the row is gone: back to the defaults."""
        async with engine.connect() as conn:
            stored, version = await repository.read(conn)
        if version >= self.version or version == 0:
            self.current, self.version = effective(stored), version
