"""Verified token → :class:`Principal`, with no database round trip on the hot path.

User facts (active, org unit and its path, manager path, revocation instant) and personal
access tokens are cached per worker and dropped whenever ``authz_state.version`` moves —
every change to users, roles, grants, clients or tokens bumps it, and each worker polls it
(``CRM_AUTHZ_POLL_INTERVAL_S``), so a deactivation or revocation takes effect everywhere
within that interval and at once in the worker that made it. Sessions ended by logout or
refresh-token reuse are refused through :class:`~crm_api.auth.sessions.RevokedSessions`,
kept fresh by the same poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from crm_api.auth.sessions import RevokedSessions
from crm_api.auth.tokens import Claims
from crm_api.authz.types import Principal, PrincipalKind
from crm_api.models import OrgUnit, PersonalAccessToken, User

logger = logging.getLogger("crm_api.auth")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_us(when: datetime) -> int:
    """Microseconds since the epoch, exactly (``timestamp()`` is a float)."""
    return (when - _EPOCH) // timedelta(microseconds=1)


class Rejected(Exception):
    """The token was valid but its subject may no longer act (deactivated, revoked)."""


@dataclass(frozen=True, slots=True)
class _UserFacts:
    name: str
    kind: str
    active: bool
    org_unit_id: uuid.UUID | None
    org_path: str | None
    manager_path: str
    #: Units in the user's subtree and in the tree (a planning hint, see Principal).
    subtree_units: int | None
    units_total: int
    #: ``users.tokens_valid_after`` in microseconds since the epoch.
    valid_after_us: int


@dataclass(frozen=True, slots=True)
class _PatFacts:
    user_id: uuid.UUID
    permissions: frozenset[tuple[str, str]]
    usable: bool


class PrincipalResolver:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._users: dict[uuid.UUID, _UserFacts | None] = {}
        self._pats: dict[str, _PatFacts | None] = {}
        self._pat_last_used: dict[str, datetime] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self.revoked_sessions = RevokedSessions()

    def clear(self) -> None:
        self._users.clear()
        self._pats.clear()

    async def _user(self, user_id: uuid.UUID) -> _UserFacts | None:
        if user_id in self._users:
            return self._users[user_id]
        below = aliased(OrgUnit)
        # Same statement, no extra round trip; tree changes bump the policy version, which
        # drops this cache, so the counts follow the tree (they only steer a plan anyway).
        subtree_units = (
            select(func.count())
            .where(func.starts_with(below.path, OrgUnit.path))
            .correlate(OrgUnit)
            .scalar_subquery()
        )
        units_total = select(func.count()).select_from(below).scalar_subquery()
        stmt = (
            select(
                User.display_name,
                User.kind,
                User.active,
                User.org_unit_id,
                OrgUnit.path,
                User.manager_path,
                User.tokens_valid_after,
                subtree_units.label("subtree_units"),
                units_total.label("units_total"),
            )
            .outerjoin(OrgUnit, OrgUnit.id == User.org_unit_id)
            .where(User.id == user_id)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        facts = None
        if row is not None:
            facts = _UserFacts(
                name=row.display_name,
                kind=row.kind,
                active=row.active,
                org_unit_id=row.org_unit_id,
                org_path=row.path,
                manager_path=row.manager_path,
                subtree_units=row.subtree_units if row.path is not None else None,
                units_total=row.units_total,
                valid_after_us=_epoch_us(row.tokens_valid_after),
            )
        self._users[user_id] = facts
        return facts

    async def _pat(self, jti: str) -> _PatFacts | None:
        if jti in self._pats:
            return self._pats[jti]
        try:
            pat_id = uuid.UUID(jti)
        except ValueError:
            return None
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        PersonalAccessToken.user_id,
                        PersonalAccessToken.permissions,
                        PersonalAccessToken.revoked_at,
                        PersonalAccessToken.expires_at,
                    ).where(PersonalAccessToken.id == pat_id)
                )
            ).first()
        facts = None
        if row is not None:
            now = datetime.now(UTC)
            usable = row.revoked_at is None and (row.expires_at is None or row.expires_at > now)
            perms = frozenset((str(p[0]), str(p[1])) for p in row.permissions)
            facts = _PatFacts(row.user_id, perms, usable)
        self._pats[jti] = facts
        return facts

    async def resolve(self, claims: Claims) -> Principal:
        kind_text, _, raw_id = claims.subject.partition(":")
        try:
            subject_id = uuid.UUID(raw_id)
        except ValueError as exc:
            raise Rejected("bad subject") from exc
        if kind_text not in {"user", "client"}:
            raise Rejected("unknown subject kind")
        if claims.extra.get("sid") in self.revoked_sessions:
            raise Rejected("session ended (logout or refresh-token reuse)")
        facts = await self._user(subject_id)
        if facts is None or not facts.active:
            raise Rejected("subject inactive or unknown")
        if claims.issued_at_us <= facts.valid_after_us:
            # Minted at or before the revocation instant, to the microsecond.
            raise Rejected("token revoked")
        kind = PrincipalKind.api_client if kind_text == "client" else PrincipalKind.user
        if (kind is PrincipalKind.api_client) != (facts.kind == "service"):
            raise Rejected("subject kind mismatch")
        token_permissions = None
        token_id = None
        if claims.token_type == "pat":
            pat = await self._pat(claims.jti)
            if pat is None or not pat.usable or pat.user_id != subject_id:
                raise Rejected("personal access token revoked")
            token_permissions = pat.permissions
            token_id = claims.jti
            self._pat_last_used[claims.jti] = datetime.now(UTC)
        return Principal(
            kind=kind,
            id=subject_id,
            name=facts.name,
            roles=frozenset(),
            org_unit_id=facts.org_unit_id,
            org_path=facts.org_path,
            manager_path=facts.manager_path,
            org_subtree_units=facts.subtree_units,
            org_units_total=facts.units_total,
            token_permissions=token_permissions,
            token_id=token_id,
        )

    # --- last-used bookkeeping, written in batches off the request path -------------
    async def flush_last_used(self) -> None:
        pending, self._pat_last_used = self._pat_last_used, {}
        if not pending:
            return
        async with self.engine.begin() as conn:
            for jti, when in pending.items():
                await conn.execute(
                    update(PersonalAccessToken)
                    .where(PersonalAccessToken.id == uuid.UUID(jti))
                    .values(last_used_at=when)
                )

    def start(self, interval_s: float = 5.0) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.flush_last_used()
                except Exception:
                    logger.warning("could not record token use", exc_info=True)

        self._flush_task = asyncio.create_task(loop(), name="pat-last-used")

    async def stop(self) -> None:
        if self._flush_task:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        with contextlib.suppress(Exception):
            await self.flush_last_used()
