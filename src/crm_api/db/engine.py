"""Engine and session factories.

Two ways into the database, by purpose:

* writes use an :class:`AsyncSession` whose transaction the request owns (one commit after
  the handler, see :mod:`crm_api.db.session`);
* reads use :mod:`crm_api.db.reader`: statements compiled by SQLAlchemy, run on an asyncpg
  pool of their own in autocommit (no BEGIN/ROLLBACK round trips, no ORM layers).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from crm_api.config import Settings
from crm_api.db.embedded import start_embedded
from crm_api.db.reader import ReadPool


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        url = settings.database_url
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        return url
    return start_embedded(settings.data_dir)


@dataclass(slots=True)
class Database:
    engine: AsyncEngine
    reads: ReadPool
    sessionmaker: async_sessionmaker[AsyncSession]
    url: str

    async def dispose(self) -> None:
        await self.reads.close()
        await self.engine.dispose()


def create_database(settings: Settings, url: str | None = None) -> Database:
    url = url or resolve_database_url(settings)
    server_settings = {
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "lock_timeout": str(settings.db_lock_timeout_ms),
        "idle_in_transaction_session_timeout": "60000",
        "application_name": "crm-api",
        "timezone": "UTC",
    }
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_recycle=settings.db_pool_recycle_s,
        pool_pre_ping=settings.db_pool_pre_ping,
        echo=settings.db_echo,
        # asyncpg waits 60 s by default for a server that accepts but never answers (a hung
        # host, a dead proxy): bound opening a connection like waiting for a pooled one.
        connect_args={"server_settings": server_settings, "timeout": settings.db_pool_timeout_s},
    )
    reads = ReadPool(
        url, engine.dialect, size=settings.db_read_pool_size,
        acquire_timeout=settings.db_pool_timeout_s, recycle_s=settings.db_pool_recycle_s,
        server_settings=server_settings,
    )
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
    return Database(engine=engine, reads=reads, sessionmaker=sessionmaker, url=url)
