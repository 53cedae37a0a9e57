"""All SQL of personal access tokens. Reads start from the kit's scoped statement
(:data:`~crm_api.resources.PERSONAL_ACCESS_TOKENS`): a token is owned by its user and the
only access to it is its owner's ``own`` (:func:`crm_api.authz.dependencies.own_records`),
so every read and lock is pinned to the caller by the common scope predicate."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit.resource import Executor
from crm_api.kit.transfer import cast_table
from crm_api.models import PersonalAccessToken
from crm_api.pat.schemas import PersonalAccessTokenListQuery, PersonalAccessTokenSort
from crm_api.resources import PERSONAL_ACCESS_TOKENS

R = PERSONAL_ACCESS_TOKENS
T = cast_table(PersonalAccessToken)


async def list_page(
    executor: Executor, access: Access, query: PersonalAccessTokenListQuery
) -> dict[str, Any]:
    live = None if query.include_revoked else T.c.revoked_at.is_(None)
    stmt = kit.narrow(kit.scoped(R, access), live)
    return await kit.fetch_page(executor, R, access, stmt, query.page(PersonalAccessTokenSort))


async def lock(session: AsyncSession, access: Access, token_id: uuid.UUID) -> kit.Locked | None:
    """The caller's token row, locked ``FOR UPDATE``."""
    return await kit.lock(session, R, kit.scoped_entity(R, access), token_id)
