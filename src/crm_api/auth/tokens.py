"""JWT issue and verification: the only module that imports python-jose.

python-jose's defaults are unsafe (no claim required, any ``alg`` accepted unless pinned, a
missing ``aud`` passes). Here: the key is chosen by ``kid`` from our own key ring, the
algorithm is pinned to that key's, and exp/iat/nbf/aud/iss/sub/jti and our ``typ`` are all
required. Swapping the JWT library touches this file only.

Revocation (``users.tokens_valid_after``) is compared in microseconds: ``iat`` stays the
standard whole-second claim, and the private ``iat_us`` claim carries the same instant to
the microsecond, so a token minted earlier in the very second of a revocation is refused
and one minted right after it is accepted. A token without ``iat_us`` counts from the start
of its ``iat`` second (fail closed).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from jose import jwt
from jose.exceptions import JOSEError

from crm_api.auth import clock
from crm_api.auth.keys import KeyRing

ALLOWED_ALGORITHMS = frozenset({"HS256", "HS384", "HS512", "RS256", "ES256"})
_REQUIRED = ("exp", "iat", "nbf", "aud", "iss", "sub", "jti")
#: Private claim: the issue instant in microseconds since the epoch (``iat`` to the µs).
ISSUED_AT_US = "iat_us"
_US = 1_000_000


class InvalidToken(Exception):
    """Any reason a token is not accepted; the message is for logs, not clients."""


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str
    token_type: str
    jti: str
    issued_at: int
    #: ``issued_at`` to the microsecond, for exact comparison with a revocation instant.
    issued_at_us: int
    expires_at: int
    extra: dict[str, Any]


def issue(
    keyring: KeyRing,
    *,
    subject: str,
    token_type: str,
    ttl_s: int,
    issuer: str,
    audience: str,
    jti: str | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[str, Claims]:
    now_us = clock.now_us()
    now = now_us // _US
    key = keyring.current
    claims: dict[str, Any] = {
        **(extra or {}),
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": jti or uuid.uuid4().hex,
        "typ": token_type,
        ISSUED_AT_US: now_us,
    }
    token = jwt.encode(claims, key.signing, algorithm=key.algorithm, headers={"kid": key.kid})
    return token, _claims(claims)


def verify(
    keyring: KeyRing, token: str, *, issuer: str, audience: str, token_types: frozenset[str]
) -> Claims:
    if len(token) > 8192:
        raise InvalidToken("token too long")
    try:
        header = jwt.get_unverified_header(token)
    except JOSEError as exc:
        raise InvalidToken("malformed header") from exc
    kid, alg = header.get("kid"), header.get("alg")
    key = keyring.by_kid.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise InvalidToken("unknown kid")
    if alg != key.algorithm or alg not in ALLOWED_ALGORITHMS:
        raise InvalidToken("algorithm not allowed for this key")
    try:
        claims = jwt.decode(
            token,
            key.verifying,
            algorithms=[key.algorithm],
            audience=audience,
            issuer=issuer,
            options={
                "verify_signature": True,
                "verify_aud": True,
                "verify_iss": True,
                "verify_exp": True,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_sub": True,
                "verify_jti": True,
                **{f"require_{c}": True for c in _REQUIRED},
                "leeway": 5,
            },
        )
    except JOSEError as exc:
        raise InvalidToken(str(exc)) from exc
    if claims.get("typ") not in token_types:
        raise InvalidToken("wrong token type")
    if not isinstance(claims.get("iat"), int) or not isinstance(claims.get("exp"), int):
        raise InvalidToken("bad time claims")
    issued_us = claims.get(ISSUED_AT_US)
    if issued_us is not None and (
        not isinstance(issued_us, int)
        or isinstance(issued_us, bool)
        or issued_us // _US != claims["iat"]
    ):
        raise InvalidToken("iat_us disagrees with iat")
    return _claims(claims)


def _claims(raw: dict[str, Any]) -> Claims:
    reserved = {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "typ", ISSUED_AT_US}
    issued_at = int(raw["iat"])
    return Claims(
        subject=str(raw["sub"]),
        token_type=str(raw["typ"]),
        jti=str(raw["jti"]),
        issued_at=issued_at,
        issued_at_us=int(raw.get(ISSUED_AT_US, issued_at * _US)),
        expires_at=int(raw["exp"]),
        extra={k: v for k, v in raw.items() if k not in reserved},
    )
