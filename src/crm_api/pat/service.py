"""Personal access tokens: an operator's long-lived token for scripts, limited to a subset
of the permissions the user holds.

The token is a signed JWT (``typ: pat``, ``jti`` = the row id); the row makes it listable
and revocable, and the principal resolver checks it on use (revoked, expired, owner) and
narrows the caller's grants to the stored subset, so a token also loses whatever its
owner's roles lose. No HTTP here, and no commit.

Raises: ``Forbidden`` (``pat_not_allowed``: API clients, or a caller already using a
personal access token; ``grant_not_allowed``: a permission the caller does not hold, the
shared delegation check), ``UnprocessableEntity`` (``invalid_expiry``), ``NotFound``
(``token_not_found``, also for other users' tokens).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.audit import service as audit
from crm_api.auth import tokens
from crm_api.auth.keys import KeyRing
from crm_api.authz import delegation
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.state import bump_policy_version
from crm_api.authz.types import Principal, PrincipalKind
from crm_api.config import Settings
from crm_api.db.reader import Reader
from crm_api.errors import Forbidden, NotFound, UnprocessableEntity
from crm_api.models import PersonalAccessToken
from crm_api.pat import repository as repo
from crm_api.pat.schemas import PersonalAccessTokenCreate, PersonalAccessTokenListQuery

RESOURCE = "personal_access_tokens"
DEFAULT_LIFETIME = timedelta(days=365)
MAX_LIFETIME = timedelta(days=3650)
MIN_LIFETIME = timedelta(minutes=1)


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
            errors=[
                {
                    "field": "expires_at",
                    "code": "out_of_range",
                    "message": "between one minute and ten years from now",
                }
            ],
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
    session: AsyncSession,
    principal: Principal,
    policy: PolicyEngine,
    keyring: KeyRing,
    settings: Settings,
    data: PersonalAccessTokenCreate,
) -> dict[str, Any]:
    """Store the token row and return it with the signed token (shown this once).

    No policy-version bump: a new row makes no cached fact stale."""
    _check_caller(principal)
    delegation.check_token_permissions(
        policy, principal, [(p.resource, p.action) for p in data.permissions]
    )
    wanted = sorted({(p.resource, p.action) for p in data.permissions})
    now = datetime.now(UTC).replace(microsecond=0)
    expires_at = _expiry(data, now)
    token_row = PersonalAccessToken(
        id=uuid.uuid4(),
        user_id=principal.id,
        name=data.name,
        permissions=[list(p) for p in wanted],
        created_at=now,
        expires_at=expires_at,
    )
    row = await repo.insert(session, token_row)
    raw, _ = tokens.issue(
        keyring,
        subject=f"user:{principal.id}",
        token_type="pat",
        ttl_s=int((expires_at - now).total_seconds()),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        jti=str(token_row.id),
    )
    audit.record(
        session,
        principal,
        action="create",
        resource_type=RESOURCE,
        resource_id=token_row.id,
        changes=audit.diff(
            None,
            {"name": data.name, "permissions": token_row.permissions, "expires_at": expires_at},
        ),
        owner_id=principal.id,
        org_unit_id=principal.org_unit_id,
    )
    return {**_present(row), "token": raw}


async def list_tokens(
    conn: Reader, principal: Principal, query: PersonalAccessTokenListQuery
) -> dict[str, Any]:
    page = await repo.list_page(conn, principal.id, query)
    page["data"] = [_present(r) for r in page["data"]]
    return page


async def get_token(conn: Reader, principal: Principal, token_id: uuid.UUID) -> dict[str, Any]:
    row = await repo.get_row(conn, principal.id, token_id)
    if row is None:
        raise not_found(token_id)
    return _present(row)


async def revoke_token(session: AsyncSession, principal: Principal, token_id: uuid.UUID) -> None:
    """Revoke one of the caller's tokens; revoking a revoked token changes nothing. The
    policy-version bump makes every worker drop its cached copy of the token's row."""
    token_row = await repo.lock(session, principal.id, token_id)
    if token_row is None:
        raise not_found(token_id)
    if token_row.revoked_at is not None:
        return
    token_row.revoked_at = datetime.now(UTC)
    await bump_policy_version(session)
    audit.record(
        session,
        principal,
        action="revoke",
        resource_type=RESOURCE,
        resource_id=token_row.id,
        changes={"revoked_at": {"before": None, "after": token_row.revoked_at.isoformat()}},
        owner_id=principal.id,
        org_unit_id=principal.org_unit_id,
    )
