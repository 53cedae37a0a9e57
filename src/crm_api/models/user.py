from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from crm_api.db.base import Base, IdMixin, TimestampMixin, VersionMixin


class User(IdMixin, TimestampMixin, VersionMixin, Base):
    """A person who logs in. Roles live in the Casbin policy store (``g`` rows)."""

    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(40))
    org_unit_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("org_units.id", ondelete="RESTRICT")
    )
    manager_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    #: ``/<top manager id>/…/<own id>/``: everyone reporting to U, directly or not, has a
    #: path starting with U's path (the ``subordinates`` scope is one prefix predicate).
    manager_path: Mapped[str] = mapped_column(Text(collation="C"))
    #: ``person`` (logs in) or ``service`` (the account behind an API client).
    kind: Mapped[str] = mapped_column(String(10), default="person", server_default="person")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    #: Tokens issued before this instant are refused (deactivation, password change).
    tokens_valid_after: Mapped[datetime] = mapped_column(
        default=func.now(), server_default=func.now()
    )

    __table_args__ = (
        Index("uq_users_email_lower", func.lower(email), unique=True),
        Index("ix_users_manager_path", "manager_path"),
        Index("ix_users_org_unit_id", "org_unit_id"),
    )
