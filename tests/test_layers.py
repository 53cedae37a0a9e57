"""Where SQL may live (STYLE.md: all SQL in repositories): handlers and services build no
statements and run none; personal access tokens are their own domain package."""

from __future__ import annotations

import ast
from pathlib import Path

import crm_api

SRC = Path(crm_api.__file__).parent
#: Services that still run SQL themselves, each with the reason it is not moved yet: none.
PENDING: set[str] = set()
_STATEMENTS = {"select", "insert", "update", "delete", "text", "exists"}


def _sql_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [f"imports {a.name}" for a in node.names if a.name in _STATEMENTS]
        if isinstance(node, ast.Attribute) and node.attr == "execute":
            found.append(f"calls .execute (line {node.lineno})")
    return found


def test_handlers_and_services_run_no_sql():
    offenders = {}
    for path in sorted([*SRC.glob("*/endpoints.py"), *SRC.glob("*/service.py")]):
        name = str(path.relative_to(SRC))
        uses = _sql_uses(path)
        if uses and name not in PENDING:
            offenders[name] = uses
    assert offenders == {}


def test_personal_access_tokens_are_their_own_domain():
    assert not list((SRC / "auth").glob("pat*.py"))
    for part in ("endpoints", "service", "repository", "schemas"):
        assert (SRC / "pat" / f"{part}.py").is_file(), part
