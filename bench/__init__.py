"""The crm-api benchmark: a data generator and a load runner (see bench/README.md).

Not part of the test suite and not shipped: run it with ``python3 dev.py bench …`` or
``python -m bench …`` from the repository root.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/crm_bench"


def default_url() -> str:
    return os.environ.get("CRM_BENCH_DATABASE_URL", DEFAULT_URL)


def asyncpg_url(url: str) -> str:
    """``postgresql://…`` for asyncpg (drops a SQLAlchemy ``+driver``)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def sqlalchemy_url(url: str) -> str:
    """``postgresql+asyncpg://…`` for the app, Alembic and SQLAlchemy."""
    return "postgresql+asyncpg://" + url.split("://", 1)[1]


def database_name(url: str) -> str:
    return urlsplit(asyncpg_url(url)).path.lstrip("/")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(asyncpg_url(url))
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def host_of(url: str) -> str:
    return urlsplit(asyncpg_url(url)).hostname or ""
