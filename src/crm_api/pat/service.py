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
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.auth import tokens
from crm_api.auth.keys import KeyRing
from crm_api.authz import delegation
from crm_api.authz.enforcer import PolicyEngine
from crm_api.authz.state import bump_policy_version
from crm_api.authz.types import Access, Principal, PrincipalKind
from crm_api.config import Settings
from crm_api.db.reader import Reader
from crm_api.errors import Forbidden, UnprocessableEntity
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.resource import Placement, to_dict
from crm_api.pat import repository as repo
from crm_api.pat.schemas import PersonalAccessTokenCreate, PersonalAccessTokenListQuery
from crm_api.resources import PERSONAL_ACCESS_TOKENS

R = PERSONAL_ACCESS_TOKENS
DEFAULT_LIFETIME = timedelta(days=365)
MAX_LIFETIME = timedelta(days=3650)
MIN_LIFETIME = timedelta(minutes=1)


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


def _placement(principal: Principal) -> Placement:
    """Where a token's events are filed: its owner, in the owner's unit (the token row has
    no unit of its own), so a manager reading the trail of their unit sees them."""
    return Placement(principal.id, principal.org_unit_id)


async def create_token(
    session: AsyncSession,
    access: Access,
    policy: PolicyEngine,
    keyring: KeyRing,
    settings: Settings,
    data: PersonalAccessTokenCreate,
) -> dict[str, Any]:
    """Store the token row and return it with the signed token (shown this once).

    No policy-version bump: a new row makes no cached fact stale."""
    principal = access.principal
    _check_caller(principal)
    delegation.check_token_permissions(
        policy, principal, [(p.resource, p.action) for p in data.permissions]
    )
    wanted = sorted({(p.resource, p.action) for p in data.permissions})
    now = datetime.now(UTC).replace(microsecond=0)
    expires_at = _expiry(data, now)
    token_id = uuid.uuid4()
    values = {
        "user_id": principal.id,
        "name": data.name,
        "permissions": [list(p) for p in wanted],
        "created_at": now,
        "expires_at": expires_at,
    }
    row = await lifecycle.insert(
        session, R, access, values, _placement(principal), record_id=token_id
    )
    raw, _ = tokens.issue(
        keyring,
        subject=f"user:{principal.id}",
        token_type="pat",
        ttl_s=int((expires_at - now).total_seconds()),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        jti=str(token_id),
    )
    return {**_present(row), "token": raw}


async def list_tokens(
    conn: Reader, access: Access, query: PersonalAccessTokenListQuery
) -> dict[str, Any]:
    page = await repo.list_page(conn, access, query)
    page["data"] = [_present(r) for r in page["data"]]
    return page


async def get_token(conn: Reader, access: Access, token_id: uuid.UUID) -> dict[str, Any]:
    return _present(await kit.read_or_404(conn, R, access, token_id))


async def revoke_token(session: AsyncSession, access: Access, token_id: uuid.UUID) -> None:
    """Revoke one of the caller's tokens; revoking a revoked token changes nothing. The
    policy-version bump makes every worker drop its cached copy of the token's row."""
    locked = await repo.lock(session, access, token_id)
    if locked is None:
        raise R.not_found(token_id)
    if locked.row.revoked_at is not None:
        return
    locked = replace(locked, parent=_placement(access.principal))
    await lifecycle.save_changes(
        session,
        R,
        access,
        locked,
        to_dict(R, locked.row),
        {"revoked_at": datetime.now(UTC)},
        action="revoke",
    )
    await bump_policy_version(session)
