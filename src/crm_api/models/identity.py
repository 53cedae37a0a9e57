"""Identity tables: roles, API clients, refresh tokens, revoked sessions, personal access
tokens, login throttling."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from crm_api.db.base import Base, IdMixin, TimestampMixin, VersionMixin, utcnow


class Role(IdMixin, TimestampMixin, VersionMixin, Base):
    """A named role. Its grants are Casbin ``p`` rows in ``authz_rules`` (v0 = name)."""

    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")

    __table_args__ = (Index("uq_roles_name", "name", unique=True),)


class ApiClient(IdMixin, TimestampMixin, VersionMixin, Base):
    """A machine caller (partner, storefront) using the OAuth2 client-credentials grant.

    Each client acts through a service-account row in ``users`` (``user_id``), so records
    it creates have an owner and the ``own`` scope means "this client's records".

    The client itself is a record placed like others: owned by whoever created it
    (``owner_id``) in its service account's org unit (``org_unit_id``, copied from the
    account, which never moves), so grants on ``api_clients`` reach it by the same scope
    predicate as any record."""

    __tablename__ = "api_clients"

    client_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(255))
    #: After a rotation the old secret keeps working until this instant (grace period).
    previous_secret_hash: Mapped[str | None] = mapped_column(String(255))
    previous_secret_expires_at: Mapped[datetime | None]
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    last_used_at: Mapped[datetime | None]
    #: Who created the client (``None`` for clients made before it was recorded, or whose
    #: creator is gone): the ``own`` scope's owner.
    owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    #: The service account's org unit: the org scopes' unit.
    org_unit_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("org_units.id", ondelete="RESTRICT")
    )

    __table_args__ = (
        Index("uq_api_clients_client_id", "client_id", unique=True),
        Index("ix_api_clients_user_id", "user_id"),
        Index("ix_api_clients_owner_id", "owner_id"),
        Index("ix_api_clients_org_unit_id", "org_unit_id"),
    )


class RefreshToken(IdMixin, Base):
    """A rotating refresh token, stored as a SHA-256 hash. Each use replaces it with a new one
    in the same ``family_id``; presenting a used one again revokes the whole family."""

    __tablename__ = "refresh_tokens"

    family_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (
        Index("uq_refresh_tokens_hash", "token_hash", unique=True),
        Index("ix_refresh_tokens_family", "family_id"),
        Index("ix_refresh_tokens_user", "user_id"),
    )


class RevokedSession(Base):
    """A login session ended early: by logout or by refresh-token reuse detection.

    A session is a refresh-token family; its access tokens carry the family id as ``sid``.
    Every worker keeps the unexpired rows in memory (``auth/sessions.py``) and refuses
    their access tokens without a query per request. ``expires_at`` is the revocation plus
    the access-token lifetime: after it no access token of the session can be valid, and
    the row is deleted."""

    __tablename__ = "revoked_sessions"

    session_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    revoked_at: Mapped[datetime]
    expires_at: Mapped[datetime]

    __table_args__ = (Index("ix_revoked_sessions_expires_at", "expires_at"),)


class PersonalAccessToken(IdMixin, Base):
    """An operator's long-lived token for scripts, limited to a subset of the user's own
    permissions. The token itself is a signed JWT (``typ: pat``, ``jti`` = this id); the row
    makes it listable, revocable and records when it was last used."""

    __tablename__ = "personal_access_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    #: ``[[resource, action], …]`` the token may use (each must also be granted to the user).
    permissions: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_personal_access_tokens_user", "user_id"),)


class LoginThrottle(Base):
    """Login attempts per throttle key (``auth/throttle.py``): a client IP (``ip:…``), an
    account (``acct:<user id>``) or an account from one IP (``acct_ip:<user id>|…``; an
    unknown username is keyed by a digest and treated the same, so the lock-out itself
    reveals nothing).

    An attempt is counted before the password is checked (atomically, so a burst cannot
    get more checks than the limit) and given back when it succeeds."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    #: Attempts in the current window, failed or still being checked.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]
    #: Lock-outs so far: an account+IP pair's next lock-out lasts 2**lockouts times longer.
    lockouts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: When the row stops mattering (window and lock over, plus the back-off memory); rows
    #: past it are deleted.
    expires_at: Mapped[datetime]

    __table_args__ = (Index("ix_login_throttle_expires_at", "expires_at"),)
