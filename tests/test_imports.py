"""The import direction (STYLE.md: ``kit/`` depends on no domain; domains depend on ``kit/``,
``authz/``, ``audit/``, never on each other's repositories), read from the source with
``ast`` (imports inside functions included), so a violation fails here rather than in a
review:

1. ``db/`` and ``models/`` sit at the bottom: they import nothing of the app but
   themselves and the leaf modules (errors, config, logs). The search column's field
   separator lives in ``db/base.py`` for that reason.
2. ``kit/`` imports no domain package, not the registry (``resources.py``) nor the app's
   assembly (``api.py``, ``main.py``): only itself, the bottom layers, and the machinery
   every domain shares — ``authz.types``/``authz.scope``/``authz.masking`` (who may see
   what) and ``audit.service`` (every mutation's event goes through ``audit.record``).
3. That shared machinery imports no domain package either.
4. No package imports another package's repository: SQL of a domain is reached through
   its service.
5. Only ``audit/`` touches the audit table's model: everyone else writes events through
   ``audit.record`` (and its bulk form), never by inserting rows itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import crm_api

SRC = Path(crm_api.__file__).parent
LEAVES = {"crm_api.errors", "crm_api.config", "crm_api.logs"}
SHARED_MACHINERY = {
    "crm_api.authz.types",
    "crm_api.authz.scope",
    "crm_api.authz.masking",
    "crm_api.audit.service",
    "crm_api.audit.repository",
}
#: Packages with endpoints, a service and SQL of their own (the kit serves them).
DOMAINS = sorted(
    p.name
    for p in SRC.iterdir()
    if p.is_dir() and (p / "service.py").is_file() and p.name not in {"kit", "authz", "audit"}
)


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``crm_api`` module ``path`` imports (``from crm_api.x import y`` counts as
    ``crm_api.x.y`` when ``y`` is a module, else ``crm_api.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("crm_api"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crm_api"):
            base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (SRC.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    SRC.parent / Path(*sub.split("."))
                ).is_dir()
                found.add(sub if is_module else base)
    return found


def _files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (SRC / pkg).rglob("*.py"))


def _within(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def _offenders(files: list[Path], allowed: set[str]) -> dict[str, list[str]]:
    out = {}
    for path in files:
        bad = sorted(m for m in _imports(path) if not _within(m, allowed))
        if bad:
            out[_module(path)] = bad
    return out


def test_db_and_models_are_the_bottom():
    allowed = {"crm_api.db", "crm_api.models", *LEAVES}
    assert _offenders(_files("db", "models"), allowed) == {}


def test_kit_imports_no_domain():
    allowed = {"crm_api.kit", "crm_api.db", "crm_api.models", *LEAVES, *SHARED_MACHINERY}
    assert _offenders(_files("kit"), allowed) == {}


def test_shared_machinery_imports_no_domain():
    files = [SRC / Path(*m.split(".")[1:]).with_suffix(".py") for m in sorted(SHARED_MACHINERY)]
    domains = {f"crm_api.{d}" for d in DOMAINS} | {
        "crm_api.resources",
        "crm_api.api",
        "crm_api.main",
    }
    offenders = {_module(p): sorted(m for m in _imports(p) if _within(m, domains)) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_package_reads_another_packages_repository():
    offenders = {}
    for path in SRC.rglob("*.py"):
        own = _module(path).split(".")[1] if _module(path).count(".") >= 1 else ""
        foreign = sorted(
            m
            for m in _imports(path)
            if m.endswith(".repository")
            and m.split(".")[1] != own
            and m != "crm_api.kit.repository"
        )
        if foreign:
            offenders[_module(path)] = foreign
    assert offenders == {}


def test_only_audit_writes_audit_rows():
    offenders = sorted(
        _module(p)
        for p in SRC.rglob("*.py")
        if "crm_api.models.audit_event" in _imports(p)
        and not _module(p).startswith(("crm_api.audit", "crm_api.models"))
    )
    assert offenders == []


def test_the_rules_see_imports():
    """The collector finds what it must (so the rules above cannot pass vacuously)."""
    lifecycle = _imports(SRC / "kit" / "lifecycle.py")
    assert "crm_api.audit.service" in lifecycle
    assert "crm_api.kit.resource" in lifecycle
    assert {"customer", "contact", "user", "api_client", "pat"} <= set(DOMAINS)
    service = _imports(SRC / "customer" / "service.py")
    assert "crm_api.customer.repository" in service
    assert "crm_api.resources" in service
