"""Token issuance: password and client-credentials grants, rotating refresh tokens, logout.

Writes that must outlive the request's rolled-back transaction (a login attempt's count, a
refresh-token family revoked on reuse) go through a separate short transaction. Password
and secret checks run in threads (``PasswordChecker``), never on the event loop.

Raises ``Unauthorized`` (``invalid_grant``/``invalid_client``) and ``TooManyRequests``
(``too_many_attempts``): the same answer, after the same work, for an unknown user and a
wrong password.

A password login starts a session (a refresh-token family); its access tokens carry the
family id as ``sid`` so that logout and reuse detection can end them too
(``auth/sessions.py``).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from crm_api.auth import clock, repository, sessions, throttle, tokens
from crm_api.auth.keys import KeyRing
from crm_api.auth.passwords import PasswordChecker
from crm_api.auth.sessions import RevokedSessions
from crm_api.config import Settings
from crm_api.errors import ServiceUnavailable, Unauthorized
from crm_api.models import RefreshToken


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    refresh_token: str | None = None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invalid_grant() -> Unauthorized:
    return Unauthorized("Invalid credentials.", code="invalid_grant", headers={})


def access_token_for(
    keyring: KeyRing, settings: Settings, subject: str, extra: dict[str, object] | None = None
) -> tuple[str, int]:
    token, _ = tokens.issue(
        keyring,
        subject=subject,
        token_type="access",
        ttl_s=settings.access_token_ttl_s,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        extra=extra,
    )
    return token, settings.access_token_ttl_s


async def _new_refresh_token(
    session: AsyncSession, settings: Settings, user_id: uuid.UUID, family_id: uuid.UUID
) -> str:
    raw = "rt_" + secrets.token_urlsafe(32)
    now = clock.now()
    await repository.add_refresh_token(
        session,
        RefreshToken(
            id=uuid.uuid4(),
            family_id=family_id,
            user_id=user_id,
            token_hash=_hash(raw),
            created_at=now,
            expires_at=now + timedelta(seconds=settings.refresh_token_ttl_s),
        ),
    )
    return raw


# --- password grant ---------------------------------------------------------------------
async def password_grant(
    session: AsyncSession,
    engine: AsyncEngine,
    keyring: KeyRing,
    settings: Settings,
    checker: PasswordChecker,
    username: str,
    password: str,
    client: str,
) -> IssuedTokens:
    """``client`` is the caller's throttle identity (``auth/client_ip.py``). Raises
    ``Unauthorized`` (``invalid_grant``), ``TooManyRequests`` (``too_many_attempts``) or
    ``ServiceUnavailable`` (``login_busy``: no password-check slot free)."""
    email = username.strip().lower()
    now = clock.now()
    # Neither lookup nor counting holds a connection during the ~200 ms password check.
    async with engine.connect() as conn:
        user = await repository.person_for_login(conn, email)
    keys = throttle.keys_for(settings, client, user.id if user else None, email)
    await throttle.reserve(engine, settings, keys, now)
    # Always verify (against a dummy hash for unknown users): equal time, equal answer.
    try:
        ok = await checker.verify(user.password_hash if user else None, password)
    except ServiceUnavailable:
        await throttle.unchecked(engine, keys)  # busy: not a guess, so not counted
        raise
    if user is None or not ok or not user.active:
        await throttle.expire(engine, now)  # the attempt stays counted: it failed
        raise invalid_grant()
    await throttle.succeeded(session, keys)
    family = uuid.uuid4()  # the session: its access tokens carry it as ``sid``
    access, ttl = access_token_for(keyring, settings, f"user:{user.id}", {"sid": str(family)})
    refresh = await _new_refresh_token(session, settings, user.id, family)
    return IssuedTokens(access, ttl, refresh)


# --- client credentials -----------------------------------------------------------------
async def client_credentials_grant(
    session: AsyncSession,
    engine: AsyncEngine,
    keyring: KeyRing,
    settings: Settings,
    checker: PasswordChecker,
    client_id: str,
    secret: str,
    caller: str,
) -> IssuedTokens:
    """``caller`` is the throttle identity of the request's client (``auth/client_ip.py``):
    a wrong secret counts against it like a wrong password. Raises ``Unauthorized``
    (``invalid_client``), ``TooManyRequests`` (``too_many_attempts``) or
    ``ServiceUnavailable`` (``login_busy``)."""
    row = await repository.client_for_credentials(session, client_id)
    client = row[0] if row else None
    now = clock.now()
    keys = throttle.client_secret_keys(settings, caller)
    await throttle.reserve(engine, settings, keys, now)
    try:
        ok = await checker.verify(client.secret_hash if client else None, secret)
        if (
            not ok
            and client is not None
            and client.previous_secret_hash
            and (client.previous_secret_expires_at and client.previous_secret_expires_at > now)
        ):
            ok = await checker.verify(client.previous_secret_hash, secret)
    except ServiceUnavailable:
        await throttle.unchecked(engine, keys)  # busy: not a guess, so not counted
        raise
    if row is None or client is None or not ok or not client.active or not row[1]:
        await throttle.expire(engine, now)  # the attempt stays counted: it failed
        raise Unauthorized("Invalid client credentials.", code="invalid_client", headers={})
    await throttle.succeeded(session, keys)
    await repository.client_used(session, client.id, now)
    access, ttl = access_token_for(
        keyring, settings, f"client:{client.user_id}", {"cid": client.client_id}
    )
    return IssuedTokens(access, ttl)


# --- refresh rotation -----------------------------------------------------------------
async def _revoke_family(
    engine: AsyncEngine,
    settings: Settings,
    revoked: RevokedSessions | None,
    family_id: uuid.UUID,
    spent_id: uuid.UUID,
) -> None:
    # ``spent_id`` is locked FOR UPDATE by the request's own transaction: touching it from
    # this second transaction would wait on ourselves until lock_timeout. It is spent
    # already, so every later presentation of it lands here again.
    now = clock.now()
    until = sessions.revoked_until(now, settings.access_token_ttl_s)
    async with engine.begin() as conn:
        await repository.revoke_family(conn, family_id, now, spare=spent_id)
        await repository.revoke_session(conn, family_id, now, until)
    if revoked is not None:
        revoked.add(family_id, until)


async def refresh_grant(
    session: AsyncSession,
    engine: AsyncEngine,
    keyring: KeyRing,
    settings: Settings,
    raw: str,
    revoked: RevokedSessions | None = None,
) -> IssuedTokens:
    """Raises ``Unauthorized`` (``invalid_grant``). Presenting a spent token again is reuse:
    the whole session ends, its access tokens included (on every worker within the poll
    interval, at once in this one: ``revoked``)."""
    stored = await repository.refresh_token_for_update(session, _hash(raw))
    now = clock.now()
    if stored is None or stored.revoked_at is not None or stored.expires_at <= now:
        raise invalid_grant()
    if stored.used_at is not None:
        # Reuse of a rotated token: someone has a copy. Revoke every token of the family.
        await _revoke_family(engine, settings, revoked, stored.family_id, stored.id)
        raise Unauthorized(
            "Refresh token reuse detected; the session was revoked.",
            code="invalid_grant",
            headers={},
        )
    user = await repository.user(session, stored.user_id)
    if not user.active or stored.created_at <= user.tokens_valid_after:
        raise invalid_grant()
    stored.used_at = now
    access, ttl = access_token_for(
        keyring, settings, f"user:{user.id}", {"sid": str(stored.family_id)}
    )
    refresh = await _new_refresh_token(session, settings, user.id, stored.family_id)
    return IssuedTokens(access, ttl, refresh)


async def logout(
    session: AsyncSession, settings: Settings, raw: str, revoked: RevokedSessions | None = None
) -> None:
    """End the refresh token's session: every token of its family, and the access tokens it
    issued (``revoked``, this worker's set, learns it when the request commits; the others
    on their next poll). Unknown tokens are ignored (idempotent)."""
    family = await repository.family_of(session, _hash(raw))
    if family is None:
        return
    now = clock.now()
    until = sessions.revoked_until(now, settings.access_token_ttl_s)
    await repository.revoke_family(session, family, now)
    await repository.revoke_session(session, family, now, until)
    if revoked is not None:
        event.listen(
            session.sync_session,
            "after_commit",
            lambda _: revoked.add(family, until),
            once=True,
        )
