"""The policy version: how a change to who-may-do-what reaches every worker.

Every change to users, roles, grants or org units that can alter an access decision calls
:func:`bump_policy_version` in its own transaction. Other workers notice the new version
within ``CRM_AUTHZ_POLL_INTERVAL_S``; the worker that made the change acts right after its
commit (:data:`PolicySession`): it drops its cached principals at once (a deactivated user's
next request is refused) and reloads the policy in the background.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event, func, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.db.session import WriteSession
from crm_api.models.authz_rule import AuthzState

_CHANGED = "authz_changed"
#: Reload tasks in flight, referenced so they are not garbage-collected mid-run.
_PENDING: set[asyncio.Task[Any]] = set()


async def bump_policy_version(session: AsyncSession) -> None:
    """``UPDATE authz_state SET version = version + 1`` in the caller's transaction."""
    await session.execute(
        update(AuthzState)
        .where(AuthzState.id == 1)
        .values(version=AuthzState.version + 1, changed_at=func.now())
    )
    session.info[_CHANGED] = True


async def _policy_session(request: Request, session: WriteSession) -> AsyncSession:
    state = request.app.state

    def after_commit(_: Any) -> None:
        if not session.info.pop(_CHANGED, False):
            return
        principals = getattr(state, "principals", None)
        if principals is not None:
            principals.clear()
        policy = getattr(state, "policy", None)
        if policy is not None:
            task = asyncio.get_running_loop().create_task(
                policy.refresh_if_changed(state.db.engine)
            )
            _PENDING.add(task)
            task.add_done_callback(_PENDING.discard)

    event.listen(session.sync_session, "after_commit", after_commit)
    return session


async def settle() -> None:
    """Wait for the post-commit policy reloads still running (tests, shutdown): a reload
    racing a ``TRUNCATE`` of the policy tables can deadlock with it."""
    while _PENDING:
        await asyncio.gather(*list(_PENDING), return_exceptions=True)


#: The request's write session, for handlers whose changes may alter access decisions.
PolicySession = Annotated[AsyncSession, Depends(_policy_session)]
