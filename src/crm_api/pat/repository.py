"""All SQL of personal access tokens. A token is only ever its owner's: every read and lock
here is pinned to the caller's own ``user_id``, which is the whole of its scope (no grant
reaches another user's tokens, so there is no policy scope to apply)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.kit.repository import Executor, fetch_page, to_dict
from crm_api.kit.transfer import cast_table
from crm_api.models import PersonalAccessToken
from crm_api.pat.schemas import PersonalAccessTokenListQuery, PersonalAccessTokenSort

T = cast_table(PersonalAccessToken)
#: What a caller sees of a token row (never its owner: that is the caller).
COLUMNS = [
    T.c[name]
    for name in (
        "id",
        "name",
        "permissions",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
]
SORT_COLUMNS: dict[str, Any] = {
    PersonalAccessTokenSort.created_at: T.c.created_at,
    PersonalAccessTokenSort.name: T.c.name,
}


def mine(user_id: uuid.UUID) -> Select[Any]:
    """The tokens of ``user_id``: the only statement reads start from."""
    return select(*COLUMNS).where(T.c.user_id == user_id)


async def list_page(
    executor: Executor, user_id: uuid.UUID, query: PersonalAccessTokenListQuery
) -> dict[str, Any]:
    stmt = mine(user_id)
    if not query.include_revoked:
        stmt = stmt.where(T.c.revoked_at.is_(None))
    return await fetch_page(
        executor, stmt, SORT_COLUMNS, T.c.id, query.page(PersonalAccessTokenSort)
    )


async def get_row(
    executor: Executor, user_id: uuid.UUID, token_id: uuid.UUID
) -> dict[str, Any] | None:
    row = (await executor.execute(mine(user_id).where(T.c.id == token_id))).mappings().first()
    return dict(row) if row is not None else None


async def lock(
    session: AsyncSession, user_id: uuid.UUID, token_id: uuid.UUID
) -> PersonalAccessToken | None:
    """The caller's token row, locked ``FOR UPDATE``."""
    stmt = (
        select(PersonalAccessToken)
        .where(PersonalAccessToken.id == token_id, PersonalAccessToken.user_id == user_id)
        .with_for_update()
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert(session: AsyncSession, token_row: PersonalAccessToken) -> dict[str, Any]:
    """Store a new row; returns it as a caller sees it."""
    session.add(token_row)
    await session.flush()
    return to_dict(token_row, COLUMNS)
