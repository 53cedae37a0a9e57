"""Request-scoped database access.

``WriteSession``: one transaction per request, committed once right after the handler
returns (``scope="function"``: before the response is sent, so a failed commit is the
client's error response, never a 201 for data that was not saved). Services never commit.

``ReadConnection``: the :class:`~crm_api.db.reader.Reader` (asyncpg, autocommit, a pooled
connection per statement; SQLAlchemy's engine with ``CRM_READ_PATH=engine``) for requests
that only read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.db.engine import Database
from crm_api.db.reader import Reader
from crm_api.errors import is_database_unavailable


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _write_session(request: Request) -> AsyncIterator[AsyncSession]:
    db = get_database(request)
    async with db.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException as exc:
            if is_database_unavailable(exc):
                # The connection is lost, refused or hung (a statement past its deadline):
                # a ROLLBACK on it would wait for the same dead server. Drop it instead;
                # the server rolls back what it had when the connection goes.
                await session.invalidate()
            else:
                await session.rollback()
            raise


async def _read_connection(request: Request) -> Reader:
    # Not a generator: the reader borrows a pooled connection per statement, so there is
    # nothing to release after the handler (and FastAPI's generator dependencies cost).
    return get_database(request).reads.reader


WriteSession = Annotated[AsyncSession, Depends(_write_session, scope="function")]
ReadConnection = Annotated[Reader, Depends(_read_connection)]
