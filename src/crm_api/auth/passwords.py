"""Password hashing (argon2id), off the event loop with bounded concurrency, and the
password policy.

One argon2 verification costs ~200 ms of CPU. On the event loop it stalls every other
request of the worker for that long (four concurrent logins took another user's GET from
9 to 552 ms). :class:`PasswordChecker` runs it in a thread (argon2-cffi releases the GIL),
at most ``CRM_PASSWORD_HASH_CONCURRENCY`` at a time per worker; a request that cannot get
a slot within ``CRM_PASSWORD_HASH_WAIT_S`` is answered 503 ``login_busy`` with
``Retry-After`` instead of queueing without bound.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from crm_api.errors import ServiceUnavailable

_hasher = PasswordHasher()

#: A dummy hash verified when the user does not exist, so an unknown e-mail costs the same
#: time as a wrong password (no user enumeration by timing).
DUMMY_HASH = _hasher.hash("not-a-real-password-0")

POLICY = (
    "At least 10 characters, with at least one letter and one digit; at most 128 characters; "
    "must not contain the e-mail's local part."
)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class PasswordChecker:
    """Verifies passwords and client secrets in worker threads, ``concurrency`` at a time."""

    def __init__(self, concurrency: int, wait_s: float) -> None:
        self.concurrency = concurrency
        self.wait_s = wait_s
        self._slots = asyncio.Semaphore(concurrency)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """``verify_password`` in a thread. Raises ``ServiceUnavailable`` (``login_busy``)
        when no slot frees up within ``wait_s``."""
        try:
            # ``timeout`` rather than ``wait_for``: on 3.11 a timeout landing just as the
            # semaphore was granted could lose the slot; cancelling ``acquire`` is safe.
            async with asyncio.timeout(self.wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise ServiceUnavailable(
                "Too many logins are being checked; retry in a moment.",
                code="login_busy",
                headers={"Retry-After": "1"},
            ) from None
        # The slot is given back when the thread ends, not when the request does: a client
        # that disconnects mid-check must not let more threads run than ``concurrency``.
        work = asyncio.ensure_future(asyncio.to_thread(verify_password, password_hash, password))
        work.add_done_callback(lambda _: self._slots.release())
        return await asyncio.shield(work)


def policy_violations(password: str, email: str | None = None) -> list[str]:
    problems = []
    if len(password) < 10:
        problems.append("must be at least 10 characters")
    if len(password) > 128:
        problems.append("must be at most 128 characters")
    if not any(c.isalpha() for c in password) or not any(c.isdigit() for c in password):
        problems.append("must contain a letter and a digit")
    local = (email or "").split("@")[0].lower()
    if len(local) >= 3 and local in password.lower():
        problems.append("must not contain the e-mail name")
    return problems
