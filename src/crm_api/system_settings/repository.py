"""All SQL of the system settings: one row (``id = 1``) holding what administrators set."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from crm_api.models.system_setting import SystemSettingsRow

_ROW: Table = SystemSettingsRow.__table__  # type: ignore[assignment]


async def read(conn: AsyncConnection | AsyncSession) -> tuple[dict[str, Any], int]:
    """``(stored values, version)``; ``({}, 0)`` when nothing was ever stored."""
    row = (
        await conn.execute(select(_ROW.c["values"], _ROW.c.version).where(_ROW.c.id == 1))
    ).first()
    return (dict(row[0]), int(row[1])) if row is not None else ({}, 0)


async def lock(session: AsyncSession) -> tuple[dict[str, Any], int]:
    """The stored row locked for a change (created at version 0 first if missing, so two
    concurrent first changes serialize on it too)."""
    await session.execute(
        insert(_ROW)
        .values(id=1, values={}, version=0)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = (
        await session.execute(
            select(_ROW.c["values"], _ROW.c.version).where(_ROW.c.id == 1).with_for_update()
        )
    ).one()
    return dict(row[0]), int(row[1])


async def write(session: AsyncSession, values: dict[str, Any], version: int) -> None:
    await session.execute(
        _ROW.update()
        .where(_ROW.c.id == 1)
        .values(values=values, version=version, updated_at=func.now())
    )
