from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, SmallInteger, String, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from crm_api.db.base import Base, IdMixin, SoftDeleteMixin, TimestampMixin, VersionMixin

LIVE = text("deleted_at IS NULL")


class Customer(IdMixin, TimestampMixin, VersionMixin, SoftDeleteMixin, Base):
    """A company or a person the business sells to; the centre of the CRM."""

    __tablename__ = "customers"

    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(20))
    lifecycle_stage: Mapped[str] = mapped_column(String(20), server_default="lead")
    grade: Mapped[str | None] = mapped_column(String(1))
    #: 1 (lowest) … 5 (highest): how much credit the business extends to the customer.
    credit_level: Mapped[int | None] = mapped_column(SmallInteger)
    industry: Mapped[str | None] = mapped_column(String(100))
    region: Mapped[str | None] = mapped_column(String(100))
    address: Mapped[str | None] = mapped_column(String(500))
    phone: Mapped[str | None] = mapped_column(String(40))
    email: Mapped[str | None] = mapped_column(String(320))
    website: Mapped[str | None] = mapped_column(String(500))
    bank_name: Mapped[str | None] = mapped_column(String(200))
    #: Sensitive: masked unless the caller holds ``read_sensitive`` on customers.
    bank_account: Mapped[str | None] = mapped_column(String(64))
    #: Sensitive; unique among live customers (duplicate detection).
    tax_number: Mapped[str | None] = mapped_column(String(64))
    ownership_type: Mapped[str | None] = mapped_column(String(30))
    size: Mapped[str | None] = mapped_column(String(20))
    source: Mapped[str | None] = mapped_column(String(30))
    tags: Mapped[list[str]] = mapped_column(
        ARRAY(String(50)), default=list, server_default="{}"
    )
    custom_fields: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default="{}"
    )
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    org_unit_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("org_units.id", ondelete="RESTRICT")
    )
    #: The id of this customer in the caller's own system (storefront, ERP); unique.
    external_ref: Mapped[str | None] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("type IN ('company','individual')", name="type"),
        CheckConstraint(
            "lifecycle_stage IN ('lead','prospect','customer','churned')", name="lifecycle_stage"
        ),
        CheckConstraint("grade IN ('A','B','C','D')", name="grade"),
        CheckConstraint("credit_level BETWEEN 1 AND 5", name="credit_level"),
        Index("uq_customers_external_ref", "external_ref", unique=True),
        Index("uq_customers_tax_number_live", "tax_number", unique=True, postgresql_where=LIVE),
        Index("ix_customers_created_at_id", "created_at", "id", postgresql_where=LIVE),
        Index("ix_customers_updated_at_id", "updated_at", "id", postgresql_where=LIVE),
        Index("ix_customers_name_id", "name", "id", postgresql_where=LIVE),
        Index("ix_customers_owner_created", "owner_id", "created_at", "id", postgresql_where=LIVE),
        Index(
            "ix_customers_org_unit_created", "org_unit_id", "created_at", "id",
            postgresql_where=LIVE,
        ),
        Index(
            "ix_customers_stage_created", "lifecycle_stage", "created_at", "id",
            postgresql_where=LIVE,
        ),
        Index("ix_customers_grade", "grade", postgresql_where=LIVE),
        Index("ix_customers_region", "region", postgresql_where=LIVE),
        Index("ix_customers_industry", "industry", postgresql_where=LIVE),
        Index("ix_customers_tags", "tags", postgresql_using="gin", postgresql_where=LIVE),
        Index("ix_customers_deleted_at", "deleted_at", postgresql_where=text("deleted_at IS NOT NULL")),
    )
