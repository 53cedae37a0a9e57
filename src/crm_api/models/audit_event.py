from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from crm_api.db.base import Base, IdMixin, utcnow


class AuditEvent(IdMixin, Base):
    """One mutation: who, when, what (field-level before/after), under which request.

    Written in the same transaction as the change it records. ``owner_id`` and
    ``org_unit_id`` are the affected record's at the time, so the audit log is scoped like
    the records themselves."""

    __tablename__ = "audit_events"

    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(40))
    resource_type: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[uuid.UUID]
    owner_id: Mapped[uuid.UUID | None]
    org_unit_id: Mapped[uuid.UUID | None]
    #: ``{field: {"before": …, "after": …}}``; sensitive values are stored as ``"***"``.
    changes: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_audit_events_occurred_id", "occurred_at", "id"),
        Index("ix_audit_events_resource", "resource_type", "resource_id", "occurred_at"),
        Index("ix_audit_events_actor", "actor_id", "occurred_at"),
        Index("ix_audit_events_owner", "owner_id", "occurred_at"),
    )
