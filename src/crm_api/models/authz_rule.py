from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from crm_api.db.base import Base, IdMixin, utcnow


class AuthzRule(IdMixin, Base):
    """Casbin policy rows (``p``: role grants; ``g``: subject → role), in Casbin's own
    column layout so any Casbin tooling can read them."""

    __tablename__ = "authz_rules"

    ptype: Mapped[str] = mapped_column(String(2))
    v0: Mapped[str] = mapped_column(String(100))
    v1: Mapped[str] = mapped_column(String(100))
    v2: Mapped[str] = mapped_column(String(100), default="")
    v3: Mapped[str] = mapped_column(String(100), default="")
    #: ``custom`` scope: the org unit ids, ``|``-separated.
    v4: Mapped[str] = mapped_column(String(4000), default="")
    v5: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())

    __table_args__ = (Index("uq_authz_rules_row", "ptype", "v0", "v1", "v2", "v3", unique=True),)


class AuthzState(Base):
    """A single row whose ``version`` is bumped (in the same transaction) by every change to
    policies, roles, users or API clients; each worker polls it and reloads on change."""

    __tablename__ = "authz_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    #: Bumped with every revoked session (logout, refresh-token reuse): workers reload their
    #: revoked-session set when it moves, without reloading the policy.
    sessions_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    changed_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
