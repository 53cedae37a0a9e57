"""Users: business rules. Other domains call these, never the users' SQL."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.models.user import User


async def get_active_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    stmt = select(User).where(User.id == user_id, User.active.is_(True))
    return (await session.execute(stmt)).scalar_one_or_none()
