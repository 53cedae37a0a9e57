"""The zero-configuration default: a private PostgreSQL cluster through the ``pgserver`` wheel.

The cluster lives in ``<data_dir>/pg``, is reached over a Unix socket and is stopped when the
last process that started it exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import warnings
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlparse

logger = logging.getLogger("crm_api.db")

_servers: dict[Path, object] = {}


class EmbeddedUnavailable(RuntimeError):
    """No database URL is configured and the embedded PostgreSQL is not installed."""


def _import_get_server() -> Any:
    """``pgserver.postgres_server.get_server``, imported quietly.

    pgserver is the optional ``embedded`` extra (the Docker image leaves it out). On import
    it resolves a runtime directory for its lock file through platformdirs, which warns
    ``XDG_RUNTIME_DIR is not set`` (every CLI call in a container or over ``sudo``) and
    then uses a private fallback directory that works; the warning says nothing a user
    can act on, so it is not shown."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from pgserver.postgres_server import get_server
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("pgserver"):
            raise
        raise EmbeddedUnavailable(
            "CRM_DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "set CRM_DATABASE_URL=postgresql://user:password@host:5432/db, or install "
            "the embedded extra (pip install 'crm-api[embedded]'; dev.py does)"
        ) from exc
    return get_server


def _exit_on_sigterm() -> None:
    """pgserver stops the cluster from an ``atexit`` hook, which a plain SIGTERM (the
    default action kills the process) never runs: ``docker stop``, systemd or a supervisor
    would leave the cluster running. Turn SIGTERM into a normal exit instead. Only when
    nobody else handles it (uvicorn captures it while serving, restores this handler and
    re-raises the signal when it is done), and only where handlers can be set."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def start_embedded(data_dir: Path, database: str = "crm") -> str:
    """Start (or join) the embedded cluster and return an asyncpg SQLAlchemy URL for
    ``database``. The cluster stops when the last process using it exits, SIGTERM included."""
    get_server = _import_get_server()  # heavy: only for the embedded default
    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _servers.get(pgdata)
    if server is None:
        _exit_on_sigterm()
        server = get_server(pgdata, cleanup_mode="stop")
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
