"""All SQL of the identity tables that the token service and the workers' caches share."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import Row, case, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from crm_api.models import (
    ApiClient,
    AuthzState,
    LoginThrottle,
    RefreshToken,
    RevokedSession,
    User,
)


# --- grants ---------------------------------------------------------------------------
async def client_for_credentials(
    session: AsyncSession, client_id: str
) -> Row[ApiClient, bool] | None:
    """``(client, its service account's active flag)`` of the public ``client_id``."""
    stmt = (
        select(ApiClient, User.active)
        .join(User, User.id == ApiClient.user_id)
        .where(ApiClient.client_id == client_id)
    )
    return (await session.execute(stmt)).first()


async def client_used(session: AsyncSession, client_pk: uuid.UUID, now: datetime) -> None:
    """Record a successful token request. A plain UPDATE, not an attribute change: a token
    request must not move the client's version (its ETag) or ``updated_at``, which belong
    to administrative edits."""
    await session.execute(
        update(ApiClient)
        .where(ApiClient.id == client_pk)
        .values(last_used_at=now, updated_at=ApiClient.updated_at)
        .execution_options(synchronize_session=False)
    )


async def add_refresh_token(session: AsyncSession, token: RefreshToken) -> None:
    session.add(token)
    await session.flush()


async def refresh_token_for_update(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    """The refresh token with this hash, locked ``FOR UPDATE`` (one use at a time)."""
    stmt = select(RefreshToken).where(RefreshToken.token_hash == token_hash).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def family_of(session: AsyncSession, token_hash: str) -> uuid.UUID | None:
    stmt = select(RefreshToken.family_id).where(RefreshToken.token_hash == token_hash)
    return (await session.execute(stmt)).scalar_one_or_none()


async def user(session: AsyncSession, user_id: uuid.UUID) -> User:
    return (await session.execute(select(User).where(User.id == user_id))).scalar_one()


# --- sessions ---------------------------------------------------------------------------
async def revoke_family(
    conn: AsyncConnection | AsyncSession,
    family_id: uuid.UUID,
    now: datetime,
    *,
    spare: uuid.UUID | None = None,
) -> None:
    """Mark every live refresh token of the family revoked (except ``spare``)."""
    stmt = update(RefreshToken).where(
        RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None)
    )
    if spare is not None:
        stmt = stmt.where(RefreshToken.id != spare)
    await conn.execute(stmt.values(revoked_at=now).execution_options(synchronize_session=False))


async def revoke_session(
    conn: AsyncConnection | AsyncSession,
    session_id: uuid.UUID,
    now: datetime,
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


# --- login ------------------------------------------------------------------------------
async def person_for_login(
    conn: AsyncConnection, email: str
) -> Row[uuid.UUID, str | None, bool] | None:
    """``(id, password_hash, active)`` of the person with this e-mail (case-insensitive)."""
    return (
        await conn.execute(
            select(User.id, User.password_hash, User.active).where(
                func.lower(User.email) == email, User.kind == "person"
            )
        )
    ).first()


async def count_attempt(
    conn: AsyncConnection, key: str, now: datetime, window_s: int
) -> tuple[int, datetime | None, int]:
    """Count one login attempt against ``key`` atomically (the row lock of the upsert
    serializes concurrent attempts): ``(attempts in the window, locked_until, lockouts)``.
    A running lock is left as it is; an ended lock or window starts a new window."""
    t = LoginThrottle
    locked = t.locked_until > now
    fresh = or_(
        t.window_started_at <= now - timedelta(seconds=window_s), t.locked_until.is_not(None)
    )
    keep_until = now + timedelta(seconds=window_s)  # a lock-out keeps it longer: ``lock``
    row = (
        await conn.execute(
            insert(t)
            .values(
                key=key,
                failures=1,
                window_started_at=now,
                locked_until=None,
                lockouts=0,
                expires_at=keep_until,
            )
            .on_conflict_do_update(
                index_elements=[t.key],
                set_={
                    "failures": case((locked, t.failures), (fresh, 1), else_=t.failures + 1),
                    "window_started_at": case(
                        (locked, t.window_started_at), (fresh, now), else_=t.window_started_at
                    ),
                    "locked_until": case((locked, t.locked_until), else_=None),
                    "expires_at": func.greatest(t.expires_at, keep_until),
                },
            )
            .returning(t.failures, t.locked_until, t.lockouts)
        )
    ).one()
    return int(row.failures), row.locked_until, int(row.lockouts)


async def lock(conn: AsyncConnection, key: str, until: datetime, memory_s: int) -> None:
    await conn.execute(
        update(LoginThrottle)
        .where(LoginThrottle.key == key)
        .values(
            locked_until=until,
            lockouts=LoginThrottle.lockouts + 1,
            expires_at=func.greatest(LoginThrottle.expires_at, until + timedelta(seconds=memory_s)),
        )
    )


async def give_back(
    conn: AsyncConnection | AsyncSession, keys: list[str], forget: list[str]
) -> None:
    """Undo one counted attempt of ``keys`` (a success, or a refusal by a later key) and
    delete the ``forget`` rows (a success resets its account+IP pair, back-off included)."""
    if forget:
        await conn.execute(
            delete(LoginThrottle)
            .where(LoginThrottle.key.in_(forget))
            .execution_options(synchronize_session=False)
        )
    if keys:
        await conn.execute(
            update(LoginThrottle)
            .where(
                LoginThrottle.key.in_(keys),
                LoginThrottle.locked_until.is_(None),
                LoginThrottle.failures > 0,
            )
            .values(failures=LoginThrottle.failures - 1)
            .execution_options(synchronize_session=False)
        )


async def delete_expired_throttles(conn: AsyncConnection, now: datetime, batch: int) -> int:
    """Delete up to ``batch`` rows past their ``expires_at``. Rows another transaction holds
    are skipped (never waited for, so this cannot deadlock with a login)."""
    stale = (
        select(LoginThrottle.key)
        .where(LoginThrottle.expires_at < now)
        .order_by(LoginThrottle.expires_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    result = await conn.execute(
        delete(LoginThrottle)
        .where(LoginThrottle.key.in_(stale))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
