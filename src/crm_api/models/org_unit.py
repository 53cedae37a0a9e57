from __future__ import annotations

import uuid

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from crm_api.db.base import Base, IdMixin, TimestampMixin, VersionMixin


class OrgUnit(IdMixin, TimestampMixin, VersionMixin, Base):
    """A node of the organisation tree (group → company → branch → office → team)."""

    __tablename__ = "org_units"

    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("org_units.id", ondelete="RESTRICT")
    )
    #: Materialized path ``/<root id>/…/<own id>/``: a subtree is ``path LIKE '<path>%'``,
    #: one prefix range scan on the C-collated btree index.
    path: Mapped[str] = mapped_column(Text(collation="C"))
    depth: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")

    __table_args__ = (
        Index("ix_org_units_path", "path", unique=True),
        Index("ix_org_units_parent_id", "parent_id"),
        CheckConstraint(
            "kind IN ('group','company','branch','office','team','department')", name="kind"
        ),
    )
