from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.dependencies import require
from crm_api.authz.types import Access, Action
from crm_api.db.session import WriteSession
from crm_api.kit.concurrency import IfMatch, RequireIfMatch, etag
from crm_api.kit.responses import json_response
from crm_api.kit.routing import ETAG_HEADER, StrictRoute, problems
from crm_api.system_settings import service
from crm_api.system_settings.schemas import SystemSettings, SystemSettingsOut, SystemSettingsUpdate
from crm_api.system_settings.store import SettingsStore

router = APIRouter(prefix="/settings", tags=["settings"], route_class=StrictRoute)

R = "system_settings"
SettingsRead = Annotated[Access, require(R, Action.read)]
SettingsUpdate = Annotated[Access, require(R, Action.update)]


async def _store(request: Request) -> SettingsStore:
    store: SettingsStore = request.app.state.system_settings
    return store


Store = Annotated[SettingsStore, Depends(_store)]


async def _settings_session(store: Store, session: WriteSession) -> AsyncSession:
    """The write session, with this worker's cache replaced right after a change commits
    (the other workers follow on their next poll)."""

    def after_commit(_: Any) -> None:
        pending = session.info.pop(service.PENDING, None)
        if pending is not None:
            store.apply(*pending)

    event.listen(session.sync_session, "after_commit", after_commit)
    return session


SettingsSession = Annotated[AsyncSession, Depends(_settings_session)]


def _answer(settings: SystemSettings, version: int) -> Response:
    body = {**settings.model_dump(mode="json"), "version": version}
    return json_response(body, headers={"ETag": etag(version)})


@router.get(
    "",
    operation_id="settings_get",
    summary="Get the system settings",
    response_model=SystemSettingsOut,
    responses={**problems(), 200: {"headers": ETAG_HEADER}},
)
async def get_settings(access: SettingsRead, store: Store) -> Response:
    """Every system setting at its current value (the defaults until an administrator
    changes one), as this worker has it: a change reaches every worker within the policy
    poll interval (`CRM_AUTHZ_POLL_INTERVAL_S`, 0.5 s by default)."""
    return _answer(store.current, store.version)


@router.patch(
    "",
    operation_id="settings_update",
    summary="Change system settings",
    response_model=SystemSettingsOut,
    responses={**problems(412, 428), 200: {"headers": ETAG_HEADER}},
)
async def update_settings(
    body: SystemSettingsUpdate,
    access: SettingsUpdate,
    session: SettingsSession,
    strict: RequireIfMatch,
    if_match: IfMatch = None,
) -> Response:
    """Change the settings sent; the others keep their values. Each is typed and
    range-checked: a bad value or an unknown setting is a 422 naming the field, and nothing
    changes. `sla_hours` and `commission_rates` are sent whole. With `If-Match`, a stale
    version is a 412. Audited with the field-level diff."""
    settings, version = await service.update_settings(
        session, access, body, if_match, require_if_match=strict
    )
    return _answer(settings, version)
