"""Personal access tokens: an operator's long-lived token for scripts, limited to a subset
of the permissions the user holds.

The token is a signed JWT (``typ: pat``, ``jti`` = the row id); the row makes it listable
and revocable, and the principal resolver checks it on use (revoked, expired, owner) and
narrows the caller's grants to the stored subset, so a token also loses whatever its
owner's roles lose. No HTTP here, and no commit.

Raises: ``Forbidden`` (``pat_not_allowed``: API clients, or a caller already using a
personal access token), ``UnprocessableEntity`` (``permission_not_held``,
``invalid_expiry``), ``NotFound`` (``token_not_found``, also for other users' tokens).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import service as audit
from crm_api.auth import tokens
from crm_api.auth.keys import KeyRing
from crm_api.auth.schemas import (
    PersonalAccessTokenCreate,
    PersonalAccessTokenListQuery,
    PersonalAccessTokenSort,
)
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.state import bump_policy_version
from crm_api.authz.types import Principal, PrincipalKind
from crm_api.config import Settings
from crm_api.db.reader import Reader
from crm_api.errors import Forbidden, NotFound, UnprocessableEntity
from crm_api.kit.repository import fetch_page
from crm_api.models import PersonalAccessToken

RESOURCE = "personal_access_tokens"
DEFAULT_LIFETIME = timedelta(days=365)
MAX_LIFETIME = timedelta(days=3650)
MIN_LIFETIME = timedelta(minutes=1)

COLUMNS: list[Any] = [
    PersonalAccessToken.id, PersonalAccessToken.name, PersonalAccessToken.permissions,
    PersonalAccessToken.created_at, PersonalAccessToken.expires_at,
    PersonalAccessToken.last_used_at, PersonalAccessToken.revoked_at,
]
SORT_COLUMNS: dict[str, Any] = {
    PersonalAccessTokenSort.created_at: PersonalAccessToken.created_at,
    PersonalAccessTokenSort.name: PersonalAccessToken.name,
}


def not_found(token_id: uuid.UUID) -> NotFound:
    return NotFound(f"No personal access token {token_id}.", code="token_not_found")


def _present(row: dict[str, Any]) -> dict[str, Any]:
    row["permissions"] = [{"resource": r, "action": a} for r, a in row["permissions"]]
    return row


def _expiry(data: PersonalAccessTokenCreate, now: datetime) -> datetime:
    if data.expires_in_days is not None:
        return now + timedelta(days=data.expires_in_days)
    if data.expires_at is None:
        return now + DEFAULT_LIFETIME
    if not now + MIN_LIFETIME <= data.expires_at <= now + MAX_LIFETIME:
        raise UnprocessableEntity(
            "expires_at must be between one minute and ten years from now.",
            code="invalid_expiry",
            errors=[{"field": "expires_at", "code": "out_of_range",
                     "message": "between one minute and ten years from now"}],
        )
    return data.expires_at


def _check_caller(principal: Principal) -> None:
    if principal.kind is not PrincipalKind.user:
        raise Forbidden("Only people have personal access tokens.", code="pat_not_allowed")
    if principal.token_permissions is not None:
        # Otherwise a narrow token could mint a wide one.
        raise Forbidden(
            "Sign in (not with a personal access token) to create one.", code="pat_not_allowed"
        )


async def create_token(
    session: AsyncSession, principal: Principal, policy: PolicyEngine, keyring: KeyRing,
    settings: Settings, data: PersonalAccessTokenCreate,
) -> dict[str, Any]:
    """Store the token row and return it with the signed token (shown this once).

    No policy-version bump: a new row makes no cached fact stale."""
    _check_caller(principal)
    wanted = sorted({(p.resource, p.action) for p in data.permissions})
    denied = [
        f"permissions.{i}" for i, p in enumerate(data.permissions)
        if policy.scope_for(principal, p.resource, p.action) is None
    ]
    if denied:
        raise UnprocessableEntity(
            "You can only give a token permissions you hold.", code="permission_not_held",
            errors=[{"field": f, "code": "permission_not_held", "message": "not granted to you"}
                    for f in denied],
        )
    now = datetime.now(UTC).replace(microsecond=0)
    expires_at = _expiry(data, now)
    token_row = PersonalAccessToken(
        id=uuid.uuid4(), user_id=principal.id, name=data.name,
        permissions=[list(p) for p in wanted], created_at=now, expires_at=expires_at,
    )
    session.add(token_row)
    await session.flush()
    raw, _ = tokens.issue(
        keyring, subject=f"user:{principal.id}", token_type="pat",
        ttl_s=int((expires_at - now).total_seconds()), issuer=settings.jwt_issuer,
        audience=settings.jwt_audience, jti=str(token_row.id),
    )
    audit.record(
        session, principal, action="create", resource_type=RESOURCE, resource_id=token_row.id,
        changes=audit.diff(None, {"name": data.name, "permissions": token_row.permissions,
                                  "expires_at": expires_at}),
        owner_id=principal.id, org_unit_id=principal.org_unit_id,
    )
    row = {c.key: getattr(token_row, c.key) for c in COLUMNS}
    return {**_present(row), "token": raw}


async def list_tokens(
    conn: Reader, principal: Principal, query: PersonalAccessTokenListQuery
) -> dict[str, Any]:
    stmt = select(*COLUMNS).where(PersonalAccessToken.user_id == principal.id)
    if not query.include_revoked:
        stmt = stmt.where(PersonalAccessToken.revoked_at.is_(None))
    page = await fetch_page(
        conn, stmt, SORT_COLUMNS, PersonalAccessToken.id.expression,
        query.page(PersonalAccessTokenSort),
    )
    page["data"] = [_present(r) for r in page["data"]]
    return page


async def get_token(
    conn: Reader, principal: Principal, token_id: uuid.UUID
) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(*COLUMNS).where(
                PersonalAccessToken.id == token_id, PersonalAccessToken.user_id == principal.id
            )
        )
    ).mappings().first()
    if row is None:
        raise not_found(token_id)
    return _present(dict(row))


async def revoke_token(session: AsyncSession, principal: Principal, token_id: uuid.UUID) -> None:
    """Revoke one of the caller's tokens; revoking a revoked token changes nothing. The
    policy-version bump makes every worker drop its cached copy of the token's row."""
    token_row = (
        await session.execute(
            select(PersonalAccessToken)
            .where(PersonalAccessToken.id == token_id, PersonalAccessToken.user_id == principal.id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if token_row is None:
        raise not_found(token_id)
    if token_row.revoked_at is not None:
        return
    token_row.revoked_at = datetime.now(UTC)
    await bump_policy_version(session)
    audit.record(
        session, principal, action="revoke", resource_type=RESOURCE, resource_id=token_row.id,
        changes={"revoked_at": {"before": None, "after": token_row.revoked_at.isoformat()}},
        owner_id=principal.id, org_unit_id=principal.org_unit_id,
    )
