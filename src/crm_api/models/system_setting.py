from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Integer, SmallInteger, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from crm_api.db.base import Base, utcnow


class SystemSettingsRow(Base):
    """The one row of system parameters (``id = 1``): only the values an administrator set
    (every other setting is at its default, so a setting added later needs no data
    migration). ``version`` is the ETag and what every worker's poll watches
    (``crm_api.authz.enforcer``): a change reaches every worker within the poll interval."""

    __tablename__ = "system_settings"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False, default=1)
    values: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)
