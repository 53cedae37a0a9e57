"""Logical backup and restore with PostgreSQL's own tools (``crm-api backup`` / ``restore``).

A backup is a ``pg_dump`` archive in the custom format (``-Fc``: compressed, restorable
table by table, readable by any newer ``pg_restore``). It holds the whole database: schema,
``alembic_version``, every row (soft-deleted ones, audit events, idempotency keys,
policies), so a restored database is exactly the one dumped.

Which binaries: ``pg_dump`` must not be older than the server (it refuses), and an archive
can only be read by a ``pg_restore`` at least as new as the ``pg_dump`` that wrote it. The
candidates are every PostgreSQL client found on ``PATH``, in ``/usr/lib/postgresql/*/bin``
(Debian, Ubuntu), ``/usr/pgsql-*/bin`` (RHEL) and the embedded cluster's own binaries
inside the ``pgserver`` wheel; the one whose major version is closest to (and not below)
the server's wins. So the embedded cluster (PostgreSQL 16) is dumped with the wheel's
tools, and a PostgreSQL 15 server with a 15 client when one is installed.

This is a tool for operators and small installations. Production practice (scheduled
dumps *and* continuous WAL archiving for point-in-time recovery) is in the README.
"""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crm_api.db.check import DatabaseUnavailable, Target


class BackupError(Exception):
    """A backup or restore that could not be done; the message is one line for a human."""

    exit_code = 1


class RestoreRefused(BackupError):
    """Restoring would overwrite data and ``--force`` was not given."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Tool:
    path: Path
    major: int
    version: str


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def _bin_dirs() -> list[Path]:
    dirs: list[Path] = []
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    patterns = (
        "/usr/lib/postgresql/*/bin",
        "/usr/pgsql-*/bin",
        "/opt/homebrew/opt/postgresql@*/bin",
    )
    for pattern in patterns:
        dirs.extend(Path(p) for p in sorted(glob.glob(pattern)))
    spec = importlib.util.find_spec("pgserver")  # found without importing it (that is slow)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            dirs.append(Path(location) / "pginstall" / "bin")
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        if d not in seen and d.is_dir():
            seen.add(d)
            unique.append(d)
    return unique


def find_tools(name: str) -> list[Tool]:
    """Every usable ``name`` (``pg_dump``, ``pg_restore``) found, with its version."""
    tools = []
    for directory in _bin_dirs():
        path = directory / name
        if not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run(
                [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        match = _VERSION.search(out)
        if match:
            tools.append(Tool(path=path, major=int(match.group(1)), version=out.strip()))
    return tools


def choose_tool(name: str, at_least: int) -> Tool:
    """The ``name`` whose major version is the closest to ``at_least`` without being older."""
    tools = find_tools(name)
    fitting = sorted((t for t in tools if t.major >= at_least), key=lambda t: t.major)
    if fitting:
        return fitting[0]
    found = ", ".join(f"{t.path} ({t.major})" for t in tools) or "none"
    raise BackupError(
        f"no {name} of PostgreSQL {at_least} or newer found (found: {found}); install the "
        f"PostgreSQL {at_least} client tools (e.g. postgresql-client-{at_least}) or put them "
        "on PATH"
    )


async def _server_facts(target: Target) -> tuple[int, int]:
    """(server major version, number of user relations in the database)."""
    try:
        conn = await target.connect(within_s=10)
    except DatabaseUnavailable as exc:
        raise BackupError(str(exc)) from exc
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        relations = int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
                " AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
                " AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
            )
        )
    finally:
        await conn.close()
    return major, relations


def _run(args: list[str], target: Target, what: str) -> None:
    result = subprocess.run(args, env=target.tool_env(), capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        reason = lines[0] if lines else f"exit code {result.returncode}"
        more = f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else ""
        raise BackupError(f"{what} failed: {reason}{more}")


@dataclass(frozen=True, slots=True)
class Outcome:
    file: Path
    database: str
    tool: Tool
    server_major: int


def backup(url: str, file: Path) -> Outcome:
    """Dump the database at ``url`` into ``file`` (custom format). The archive is written
    next to ``file`` and renamed into place when complete, so a failed or interrupted
    backup never leaves a truncated file under the name a restore would pick up."""
    target = Target.from_url(url)
    server_major, _ = asyncio.run(_server_facts(target))
    tool = choose_tool("pg_dump", server_major)
    file = file.expanduser()
    if file.parent and not file.parent.is_dir():
        raise BackupError(f"directory {file.parent} does not exist")
    partial = file.with_name(file.name + ".partial")
    try:
        _run(
            [
                str(tool.path),
                *target.tool_args(),
                "--format=custom",
                f"--file={partial}",
                target.database,
            ],
            target,
            "pg_dump",
        )
        partial.replace(file)
    finally:
        partial.unlink(missing_ok=True)
    return Outcome(file=file, database=target.database, tool=tool, server_major=server_major)


_DUMPED_BY = re.compile(r"Dumped by pg_dump version:\s*(\d+)")


def _archive_version(file: Path, candidates: list[Tool]) -> tuple[Tool, int]:
    """A ``pg_restore`` that can read ``file``, and the major version of the ``pg_dump``
    that wrote it (from the archive's table of contents)."""
    for tool in sorted(candidates, key=lambda t: t.major):
        result = subprocess.run(
            [str(tool.path), "--list", str(file)], capture_output=True, text=True
        )
        if result.returncode == 0:
            match = _DUMPED_BY.search(result.stdout)
            return tool, int(match.group(1)) if match else tool.major
        if "unsupported version" not in result.stderr:
            reason = result.stderr.strip().splitlines()[:1] or ["unreadable"]
            raise BackupError(f"{file} is not a crm-api backup (pg_dump -Fc): {reason[0]}")
    raise BackupError(f"no pg_restore found that can read {file}")


def restore(url: str, file: Path, force: bool = False) -> Outcome:
    """Restore ``file`` into the database at ``url``, in one transaction (a failure leaves
    the database as it was).

    Refuses (:class:`RestoreRefused`) when the database already has tables, unless
    ``force``: then every object the archive holds is dropped first and recreated.
    Ownership and grants of the archive are not restored; the objects belong to the role
    of ``url``, the role the app connects with.
    """
    target = Target.from_url(url)
    file = file.expanduser()
    if not file.is_file():
        raise BackupError(f"no such backup file: {file}")
    server_major, relations = asyncio.run(_server_facts(target))
    if relations and not force:
        raise RestoreRefused(
            f"database {target.describe()} is not empty ({relations} tables, views or "
            "sequences): restore into an empty database, or pass --force to replace its "
            "contents"
        )
    restorers = find_tools("pg_restore")
    if not restorers:
        raise BackupError("no pg_restore found; install the PostgreSQL client tools")
    _, dumped_by = _archive_version(file, restorers)
    tool = choose_tool("pg_restore", max(server_major, dumped_by))
    _run(
        [
            str(tool.path),
            *target.tool_args(),
            f"--dbname={target.database}",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            str(file),
        ],
        target,
        "pg_restore",
    )
    return Outcome(file=file, database=target.database, tool=tool, server_major=server_major)
