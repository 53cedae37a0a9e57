"""The identity tables' SQL that the token service and the workers' caches share."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from crm_api.models import AuthzState, RefreshToken, RevokedSession


# --- sessions ---------------------------------------------------------------------------
async def revoke_family(
    conn: AsyncConnection | AsyncSession, family_id: uuid.UUID, now: datetime,
    *, spare: uuid.UUID | None = None,
) -> None:
    """Mark every live refresh token of the family revoked (except ``spare``)."""
    stmt = update(RefreshToken).where(
        RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None)
    )
    if spare is not None:
        stmt = stmt.where(RefreshToken.id != spare)
    await conn.execute(stmt.values(revoked_at=now).execution_options(synchronize_session=False))


async def revoke_session(
    conn: AsyncConnection | AsyncSession, session_id: uuid.UUID, now: datetime,
    until: datetime,
) -> None:
    """Record the session as revoked and move ``sessions_version`` so every worker reloads
    its set; rows no access token can need any more are deleted on the way."""
    await conn.execute(
        insert(RevokedSession)
        .values(session_id=session_id, revoked_at=now, expires_at=until)
        .on_conflict_do_update(
            index_elements=[RevokedSession.session_id],
            set_={"expires_at": until},
        )
    )
    await conn.execute(
        update(AuthzState)
        .where(AuthzState.id == 1)
        .values(sessions_version=AuthzState.sessions_version + 1)
        .execution_options(synchronize_session=False)
    )
    await conn.execute(
        delete(RevokedSession)
        .where(RevokedSession.expires_at < now)
        .execution_options(synchronize_session=False)
    )


async def unexpired_revoked_sessions(
    conn: AsyncConnection, now: datetime
) -> list[tuple[uuid.UUID, datetime]]:
    rows = await conn.execute(
        select(RevokedSession.session_id, RevokedSession.expires_at).where(
            RevokedSession.expires_at > now
        )
    )
    return [(r.session_id, r.expires_at) for r in rows]
