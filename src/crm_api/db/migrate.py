"""Alembic, driven from code (``crm-api migrate``, app start-up, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


def migrations_dir() -> Path:
    candidates = [
        Path.cwd() / "migrations",
        Path(__file__).resolve().parents[3] / "migrations",
        Path("/app/migrations"),
    ]
    for path in candidates:
        if (path / "env.py").exists():
            return path
    raise RuntimeError("cannot find the migrations directory (run from the project root)")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    script = ScriptDirectory.from_config(alembic_config("postgresql+asyncpg://"))
    return script.get_current_head()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
