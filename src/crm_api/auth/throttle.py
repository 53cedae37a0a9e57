"""Login throttling: which keys an attempt counts against, and when they lock.

Three keys, counted before the password is checked (see docs/access-model.md, "Login
throttling"):

- ``acct_ip:<user>|<client>``: one account from one client, ``CRM_LOGIN_MAX_FAILURES`` per
  window, then locked for ``CRM_LOGIN_LOCKOUT_S``, doubling with each further lock-out up to
  ``CRM_LOGIN_LOCKOUT_MAX_S``. A success from that client resets it.
- ``ip:<client>``: every attempt from one client, ``CRM_LOGIN_IP_MAX_FAILURES`` per window
  (password spraying across accounts).
- ``acct:<user>``: one account from everywhere, ``CRM_LOGIN_ACCOUNT_MAX_FAILURES`` per
  window: far above the per-pair limit, so someone guessing from elsewhere cannot lock the
  owner out unless they spread over that many guesses (many clients, each backing off).

An unknown username is throttled like an account per client (keyed by a digest, so no
made-up username is stored), so the lock-out reveals nothing about which accounts exist;
it has no per-account key. Its rows, like all others, are deleted once stale, and one
client can create at most ``CRM_LOGIN_IP_MAX_FAILURES`` of them per window.

Counting is one atomic upsert per key in a fixed order (client, pair, account) in one
transaction, stopping at the first key that refuses and giving back what it counted
before: a refused attempt counts against nothing, so a burst from one client at one
account cannot run the account counter up, and a client locked out creates no rows. The
upsert's row lock serializes a burst, so at most the limit's worth of attempts reaches the
password check. (Two logins share the client and the account key only when they share the
pair key too, so the order cannot deadlock.)
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from crm_api.auth import repository
from crm_api.config import Settings
from crm_api.errors import TooManyRequests

#: Stale rows deleted per failed login (opportunistic expiry, bounded work).
CLEANUP_BATCH = 100


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    limit: int
    lockout_s: int
    #: Each lock-out lasts twice the previous one (and the row remembers them).
    backoff: bool = False


def account_key(user_id: uuid.UUID | None, email: str) -> str:
    """An account's part of a key: its id, or for an unknown username a digest of it (the
    table never holds made-up usernames)."""
    if user_id is not None:
        return str(user_id)
    return "?" + hashlib.sha256(email.encode()).hexdigest()[:32]


def keys_for(settings: Settings, client: str, user_id: uuid.UUID | None, email: str) -> list[Key]:
    """The keys in counting order (client, pair, account). An unknown username gets the same
    per-pair treatment as an account (the lock-out must not tell which accounts exist) but
    no per-account key."""
    pair = Key(
        f"acct_ip:{account_key(user_id, email)}|{client}",
        settings.login_max_failures,
        settings.login_lockout_s,
        backoff=True,
    )
    ip = Key(f"ip:{client}", settings.login_ip_max_failures, settings.login_lockout_s)
    if user_id is None:
        return [ip, pair]
    return [
        ip,
        pair,
        Key(f"acct:{user_id}", settings.login_account_max_failures, settings.login_lockout_s),
    ]


def client_secret_keys(settings: Settings, client: str) -> list[Key]:
    """The keys an API client's secret check counts against: the caller's address alone,
    the budget its password logins share. Every check costs an argon2 hash, so unthrottled
    guesses would keep the password-check slots busy (503 ``login_busy`` for everyone).
    No per-client_id key: secrets are random and long (no guessing one), and a lock-out
    per client_id would let anyone shut a partner's integration out."""
    return [Key(f"ip:{client}", settings.login_ip_max_failures, settings.login_lockout_s)]


def _memory_s(settings: Settings, key: Key) -> int:
    return settings.login_lockout_max_s if key.backoff else 0


def lockout_s(settings: Settings, key: Key, lockouts: int) -> int:
    if not key.backoff:
        return key.lockout_s
    doubled: int = key.lockout_s * 2 ** min(lockouts, 32)
    return min(doubled, settings.login_lockout_max_s)


def too_many(until: datetime, now: datetime) -> TooManyRequests:
    wait = max(1, math.ceil((until - now).total_seconds()))
    return TooManyRequests(
        "Too many failed logins; try again later.",
        code="too_many_attempts",
        headers={"Retry-After": str(wait)},
    )


async def _count(
    conn: AsyncConnection, settings: Settings, keys: list[Key], now: datetime
) -> datetime | None:
    counted: list[str] = []
    for key in keys:
        attempts, locked_until, lockouts = await repository.count_attempt(
            conn, key.name, now, settings.login_window_s
        )
        refused_until = None
        if locked_until is not None and locked_until > now:
            refused_until = locked_until
        elif attempts > key.limit:
            refused_until = now + timedelta(seconds=lockout_s(settings, key, lockouts))
            await repository.lock(conn, key.name, refused_until, _memory_s(settings, key))
        if refused_until is not None:
            await repository.give_back(conn, counted, [])
            return refused_until
        counted.append(key.name)
    return None


async def reserve(engine: AsyncEngine, settings: Settings, keys: list[Key], now: datetime) -> None:
    """Count this attempt against every key, committed at once (a concurrent attempt sees
    it). Raises ``TooManyRequests`` (``too_many_attempts``, ``Retry-After``) when a key is
    locked or this attempt goes over its limit (which locks it)."""
    async with engine.begin() as conn:
        refused_until = await _count(conn, settings, keys, now)
    if refused_until is not None:
        raise too_many(refused_until, now)


async def succeeded(session: AsyncSession, keys: list[Key]) -> None:
    """The password was right: the attempt counts as no failure, and the pair starts over."""
    await repository.give_back(
        session, [k.name for k in keys if not k.backoff], [k.name for k in keys if k.backoff]
    )


async def unchecked(engine: AsyncEngine, keys: list[Key]) -> None:
    """The password could not be checked (no slot free): the attempt counts as none."""
    async with engine.begin() as conn:
        await repository.give_back(conn, [k.name for k in keys], [])


async def expire(engine: AsyncEngine, now: datetime) -> None:
    async with engine.begin() as conn:
        await repository.delete_expired_throttles(conn, now, CLEANUP_BATCH)
