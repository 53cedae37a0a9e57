"""The zero-configuration default: a private PostgreSQL cluster through the ``pgserver`` wheel.

The cluster lives in ``<data_dir>/pg``, is reached over a Unix socket and is stopped when the
last process that started it exits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs, urlparse

logger = logging.getLogger("crm_api.db")

_servers: dict[Path, object] = {}


def start_embedded(data_dir: Path, database: str = "crm") -> str:
    """Start (or join) the embedded cluster and return an asyncpg SQLAlchemy URL for ``database``."""
    import pgserver  # heavy import: only when the embedded default is used

    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _servers.get(pgdata)
    if server is None:
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        _servers[pgdata] = server
    uri = server.get_uri()  # type: ignore[attr-defined]
    socket_dir = parse_qs(urlparse(uri).query)["host"][0]
    exists = server.psql(  # type: ignore[attr-defined]
        f"SELECT 1 FROM pg_database WHERE datname = '{database}';"
    )
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')  # type: ignore[attr-defined]
    logger.info(
        "embedded PostgreSQL running", extra={"pgdata": str(pgdata), "socket_dir": socket_dir}
    )
    return f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}"


def stop_embedded() -> None:
    for server in list(_servers.values()):
        server.cleanup()  # type: ignore[attr-defined]
    _servers.clear()
