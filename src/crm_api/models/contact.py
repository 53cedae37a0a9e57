from __future__ import annotations

import uuid

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from crm_api.db.base import Base, IdMixin, SoftDeleteMixin, TimestampMixin, VersionMixin


class Contact(IdMixin, TimestampMixin, VersionMixin, SoftDeleteMixin, Base):
    """A person at a customer. Visible to whoever may see the customer."""

    __tablename__ = "contacts"

    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(200))
    department: Mapped[str | None] = mapped_column(String(200))
    #: Work phone.
    phone: Mapped[str | None] = mapped_column(String(40))
    #: Personal mobile phone; sensitive (masked without ``read_sensitive`` on contacts).
    mobile: Mapped[str | None] = mapped_column(String(40))
    email: Mapped[str | None] = mapped_column(String(320))
    is_primary: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    notes: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(
            "ix_contacts_customer_created", "customer_id", "created_at", "id",
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index(
            "uq_contacts_one_primary", "customer_id", unique=True,
            postgresql_where=text("is_primary AND deleted_at IS NULL"),
        ),
        Index("ix_contacts_created_at_id", "created_at", "id", postgresql_where=text("deleted_at IS NULL")),
        Index("ix_contacts_email", "email", postgresql_where=text("deleted_at IS NULL")),
    )
