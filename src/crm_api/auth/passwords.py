"""Password hashing (argon2id) and the password policy."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

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
