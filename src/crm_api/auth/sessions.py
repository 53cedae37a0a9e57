"""Revoked sessions, known to every worker without a query per request.

A session is a refresh-token family; every access token it issues carries the family id as
``sid``. Logout and refresh-token reuse detection end the session: a ``revoked_sessions``
row plus a bump of ``authz_state.sessions_version`` in the same transaction. Each worker
learns of it on its next policy poll (``CRM_AUTHZ_POLL_INTERVAL_S``; the poll reads both
versions in one statement) and reloads this set; the worker that revoked adds the session
right after its commit. The principal resolver then refuses the session's access tokens
with a dict lookup.

Entries are kept until every access token of the session has expired (revocation + the
access-token lifetime + the verifier's leeway), then dropped here and deleted in the table.
Entries are only ever added between expiries: a reload merges, so a reload that started
before a local revocation committed cannot drop it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from crm_api.auth import clock, repository

#: The token verifier's clock leeway (``auth/tokens.py``): a token is accepted that long
#: after its ``exp``, so its session stays revoked that much longer.
LEEWAY_S = 5


def revoked_until(revoked_at: datetime, access_token_ttl_s: int) -> datetime:
    return revoked_at + timedelta(seconds=access_token_ttl_s + LEEWAY_S)


class RevokedSessions:
    def __init__(self) -> None:
        #: session id (the ``sid`` claim, a string) → expiry, microseconds since the epoch.
        self._until: dict[str, int] = {}

    def __contains__(self, sid: object) -> bool:
        return isinstance(sid, str) and sid in self._until

    def __len__(self) -> int:
        return len(self._until)

    def add(self, session_id: uuid.UUID | str, until: datetime) -> None:
        self._until[str(session_id)] = clock.to_us(until)

    def prune(self) -> None:
        now = clock.now_us()
        for sid in [s for s, until in self._until.items() if until <= now]:
            del self._until[sid]

    async def load(self, engine: AsyncEngine) -> None:
        """Merge in every unexpired revoked session (a policy-poll listener)."""
        async with engine.connect() as conn:
            rows = await repository.unexpired_revoked_sessions(conn, clock.now())
        for session_id, until in rows:
            self.add(session_id, until)
        self.prune()
