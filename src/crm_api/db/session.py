"""Request-scoped database access.

``WriteSession``: one transaction per request, committed once right after the handler
returns (``scope="function"``: before the response is sent, so a failed commit is the
client's error response, never a 201 for data that was not saved). Services never commit.

``ReadConnection``: a :class:`~crm_api.db.reader.Reader` (asyncpg, autocommit) for
requests that only read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.db.engine import Database
from crm_api.db.reader import Reader


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _write_session(request: Request) -> AsyncIterator[AsyncSession]:
    db = get_database(request)
    async with db.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def _read_connection(request: Request) -> AsyncIterator[Reader]:
    db = get_database(request)
    async with db.reads.connect() as reader:
        yield reader


WriteSession = Annotated[AsyncSession, Depends(_write_session, scope="function")]
ReadConnection = Annotated[Reader, Depends(_read_connection, scope="function")]
