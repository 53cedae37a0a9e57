"""Forged, stale and revoked bearer tokens: every one is a 401 problem, never a 200 or a 500.

Tokens are crafted here with python-jose and by hand (the app itself imports python-jose
only in ``auth/tokens.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt
from sqlalchemy import text

from conftest import problem, token_for
from factories.api_clients import (
    bearer,
    client_access_token,
    create_api_client,
    create_pat,
    policy_settled,
)
from factories.identity import make_user

URL = "/v1/customers"
OTHER_SECRET = "another-secret-that-is-long-enough-0123456789"
GENERIC_DETAILS = {
    "A bearer token is required.",
    "The token is invalid or expired.",
    "The token has been revoked.",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_b64(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _hs_sign(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """A JWT signed with HMAC-SHA256 whatever ``header`` claims (for confusion attacks)."""
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@pytest.fixture
async def rep(app, engine) -> dict[str, Any]:
    user = await make_user(engine, roles=("sales_rep",))
    # Account made an hour ago, so tokens forged with an earlier iat are not "revoked".
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET tokens_valid_after = now() - interval '1 hour' WHERE id = :id"),
            {"id": user["id"]},
        )
    await app.state.policy.load(engine)
    return user


@pytest.fixture
def forge(app, rep):
    """``forge(**overrides, drop=(...), key=..., headers=...)``: a token for ``rep`` that is
    valid except for what the test changes."""
    settings = app.state.settings
    secret = app.state.keyring.current.signing

    def make(
        *,
        drop: tuple[str, ...] = (),
        key: str | None = None,
        headers: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
            "sub": f"user:{rep['id']}",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "typ": "access",
            **overrides,
        }
        for name in drop:
            claims.pop(name)
        return jwt.encode(
            claims,
            key or secret,
            algorithm="HS256",
            headers=headers if headers is not None else {"kid": app.state.keyring.current.kid},
        )

    return make


async def _unauthorized(anon_client, token: str, code: str = "invalid_token") -> None:
    response = await anon_client.get(URL, headers=bearer(token))
    body = problem(response, 401, code)
    assert response.headers["www-authenticate"].startswith("Bearer")
    # One of the generic answers: the reason (bad kid, bad signature, …) is for logs only.
    assert body["detail"] in GENERIC_DETAILS


async def test_the_forger_makes_good_tokens(anon_client, forge):
    """Control: an unaltered forged token is accepted, so each 401 below is the attack's."""
    assert (await anon_client.get(URL, headers=bearer(forge()))).status_code == 200


async def test_no_token(anon_client):
    problem(await anon_client.get(URL), 401, "missing_token")


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwYXNz", "Bearer", "Token abc", "bearer", ""],
)
async def test_not_a_bearer_header(anon_client, authorization):
    response = await anon_client.get(URL, headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.json()["code"] in {"missing_token", "invalid_token"}


@pytest.mark.parametrize(
    "raw",
    [
        "not-a-jwt",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0",  # two parts only
        _b64(b"\xff\xfe\xfd") + "." + _b64(b"\x00\x01") + "." + _b64(b"sig"),
        _b64(b"[1,2,3]") + "." + _b64(b"{}") + ".c2ln",
        "x" * 9000,
    ],
)
async def test_malformed_and_garbage(anon_client, raw):
    await _unauthorized(anon_client, raw)


async def test_alg_none(anon_client, app, rep, forge):
    valid = forge()
    header = {"alg": "none", "typ": "JWT", "kid": app.state.keyring.current.kid}
    payload = valid.split(".")[1]
    for token in (
        f"{_json_b64(header)}.{payload}.",
        f"{_json_b64(header)}.{payload}",
        f"{_json_b64({**header, 'alg': 'None'})}.{payload}.",
    ):
        await _unauthorized(anon_client, token)


async def test_wrong_key_with_our_kid(anon_client, forge):
    await _unauthorized(anon_client, forge(key=OTHER_SECRET))


async def test_rs256_header_signed_with_the_hs_secret(anon_client, app, forge):
    """Algorithm confusion: the header says RS256 (with our kid), the signature is an HMAC
    made with our own secret. The key's algorithm is pinned, so the header's is ignored."""
    payload = json.loads(base64.urlsafe_b64decode(forge().split(".")[1] + "=="))
    secret = app.state.keyring.current.signing.encode()
    for alg in ("RS256", "ES256", "HS512", "PS256"):
        header = {"alg": alg, "typ": "JWT", "kid": app.state.keyring.current.kid}
        await _unauthorized(anon_client, _hs_sign(header, payload, secret))


async def test_hs256_signed_with_a_public_key_pem(anon_client, app, forge):
    """The classic RS→HS confusion: an HMAC whose secret is a public-key PEM, under our kid
    and under the kid such a key would have."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = json.loads(base64.urlsafe_b64decode(forge().split(".")[1] + "=="))
    pem_kid = hashlib.sha256(pem).hexdigest()[:16]
    for kid in (app.state.keyring.current.kid, pem_kid):
        await _unauthorized(
            anon_client, _hs_sign({"alg": "HS256", "typ": "JWT", "kid": kid}, payload, pem)
        )


async def test_unknown_or_missing_kid(anon_client, forge):
    await _unauthorized(anon_client, forge(headers={"kid": "0123456789abcdef"}))
    await _unauthorized(anon_client, forge(headers={}))
    await _unauthorized(anon_client, forge(headers={"kid": 7}))


async def test_expired(anon_client, forge):
    now = int(time.time())
    await _unauthorized(anon_client, forge(iat=now - 1200, nbf=now - 1200, exp=now - 60))


async def test_not_yet_valid(anon_client, forge):
    now = int(time.time())
    await _unauthorized(anon_client, forge(nbf=now + 300, exp=now + 900))
    await _unauthorized(anon_client, forge(iat=now + 300, nbf=now + 300, exp=now + 900))


@pytest.mark.parametrize(
    "claims",
    [{"aud": "someone-else"}, {"aud": ["someone-else"]}, {"iss": "evil"}, {"iss": ""}],
)
async def test_wrong_audience_or_issuer(anon_client, forge, claims):
    await _unauthorized(anon_client, forge(**claims))


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "jti", "aud", "iss", "sub", "typ"])
async def test_missing_claim(anon_client, forge, claim):
    await _unauthorized(anon_client, forge(drop=(claim,)))


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "9999999999"},
        {"iat": 1.5},
        {"sub": 12},
        {"sub": "user:not-a-uuid"},
        {"sub": f"robot:{uuid.uuid4()}"},
        {"sub": f"user:{uuid.uuid4()}"},
    ],
)
async def test_bad_claim_values(anon_client, forge, claims):
    await _unauthorized(anon_client, forge(**claims))


async def test_tampered_payload_keeps_no_signature(anon_client, engine, forge):
    admin = await make_user(engine, roles=("admin",))
    header, payload, signature = forge().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    for change in (
        {"sub": f"user:{admin['id']}"},
        {"exp": claims["exp"] + 86_400},
        {"typ": "access", "extra": 1},
    ):
        await _unauthorized(anon_client, f"{header}.{_json_b64({**claims, **change})}.{signature}")


@pytest.mark.parametrize("token_type", ["refresh", "id", "reset", "", "ACCESS"])
async def test_wrong_token_type(anon_client, app, rep, token_type):
    await _unauthorized(anon_client, token_for(app, rep, token_type=token_type))


async def test_subject_kind_must_match_the_account(anon_client, app, rep):
    """A person's id presented as an API client (and vice versa) is refused."""
    await _unauthorized(anon_client, token_for(app, {**rep, "kind": "service"}))


async def test_revoked_by_tokens_valid_after(anon_client, app, engine, rep, forge):
    now = int(time.time())
    old = forge(iat=now - 100, nbf=now - 100)
    assert (await anon_client.get(URL, headers=bearer(old))).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE users SET tokens_valid_after = now() - interval '10 seconds' WHERE id = :id"
            ),
            {"id": rep["id"]},
        )
        await conn.execute(text("UPDATE authz_state SET version = version + 1"))
    await app.state.policy.refresh_if_changed(engine)  # what the poller does
    await _unauthorized(anon_client, old)
    assert (await anon_client.get(URL, headers=bearer(forge()))).status_code == 200


async def test_deactivated_user(anon_client, app, engine, rep):
    token = token_for(app, rep)
    assert (await anon_client.get(URL, headers=bearer(token))).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET active = false, tokens_valid_after = now() WHERE id = :id"),
            {"id": rep["id"]},
        )
        await conn.execute(text("UPDATE authz_state SET version = version + 1"))
    await app.state.policy.refresh_if_changed(engine)
    await _unauthorized(anon_client, token)
    await _unauthorized(anon_client, token_for(app, rep))


async def test_deactivated_api_client(app, client, anon_client):
    created = await create_api_client(client)
    await policy_settled(app)
    token = await client_access_token(anon_client, created)
    assert (await anon_client.get(URL, headers=bearer(token))).status_code == 200
    assert (await client.delete(f"/v1/api-clients/{created['id']}")).status_code == 204
    await _unauthorized(anon_client, token)


async def test_revoked_personal_access_token(anon_client, client_for, rep):
    pat = await create_pat(await client_for(rep), ("customers", "read"))
    assert (await anon_client.get(URL, headers=bearer(pat["token"]))).status_code == 200
    owner = await client_for(rep)
    assert (await owner.delete(f"/v1/me/tokens/{pat['id']}")).status_code == 204
    await _unauthorized(anon_client, pat["token"])


async def test_pat_claims_cannot_be_moved_to_another_row(anon_client, app, engine, client_for):
    """A PAT-typed token whose jti is not a PAT of its subject is refused."""
    alice = await make_user(engine, roles=("sales_rep",))
    bob = await make_user(engine, roles=("sales_rep",))
    alice_pat = await create_pat(await client_for(alice), ("customers", "read"))
    await _unauthorized(anon_client, token_for(app, bob, token_type="pat", jti=alice_pat["id"]))
    await _unauthorized(anon_client, token_for(app, bob, token_type="pat"))
    await _unauthorized(anon_client, token_for(app, bob, token_type="pat", jti="not-a-uuid"))
