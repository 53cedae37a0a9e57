"""System settings: the change rules. No HTTP here, and no commit (the request owns the
transaction).

Raises: ``PreconditionFailed`` (412 ``version_mismatch``: stale ``If-Match``),
``PreconditionRequired`` (428, when the app requires ``If-Match``).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import service as audit
from crm_api.authz.types import Access
from crm_api.kit.concurrency import check_if_match
from crm_api.system_settings import repository as repo
from crm_api.system_settings.schemas import SystemSettings, SystemSettingsUpdate
from crm_api.system_settings.store import effective

#: The audit events of the settings (one record) carry this ``resource_id``.
SETTINGS_ID = uuid.UUID(int=1)
RESOURCE = "system_settings"
#: Where a committed change waits for the session's ``after_commit`` (endpoints.py).
PENDING = "system_settings_pending"


async def update_settings(
    session: AsyncSession,
    access: Access,
    patch: SystemSettingsUpdate,
    if_match: str | None,
    *,
    require_if_match: bool,
) -> tuple[SystemSettings, int]:
    """Apply the settings sent (already typed and range-checked) under the row lock, audited
    with the field-level diff; ``(settings, version)`` as they now are. Sending only
    current values writes nothing: no new version, no event."""
    stored, version = await repo.lock(session)
    check_if_match(if_match, version, required=require_if_match)
    before = effective(stored)
    changes: dict[str, Any] = patch.model_dump(mode="json", exclude_unset=True)
    after = effective({**before.model_dump(mode="json"), **changes})
    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
    changed = {k: v for k, v in new.items() if old[k] != v}
    if not changed:
        return before, version
    # keep only what differs from the defaults: a default changed by a later release
    # reaches every setting nobody chose
    defaults = SystemSettings().model_dump(mode="json")
    kept = {k: v for k, v in new.items() if defaults[k] != v}
    await repo.write(session, kept, version + 1)
    audit.record(
        session,
        access.principal,
        action="update",
        resource_type=RESOURCE,
        resource_id=SETTINGS_ID,
        changes=audit.diff(old, new),
    )
    session.info[PENDING] = (kept, version + 1)
    return after, version + 1
