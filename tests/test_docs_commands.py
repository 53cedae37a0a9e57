"""Commands the docs tell an operator to type exist as written (issue #7, item 14: "check
every README command by running it").

docs/operations.md sends operators to the fault drill; from a fresh checkout the system
``python`` has none of the app's dependencies, so the documented way in is
``python3 dev.py bench faults``, which runs it with the checkout's .venv."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_fault_drill_in_operations_md_is_a_dev_py_command() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    commands = re.findall(r"`(python3 dev\.py bench faults)[^`]*`", doc)
    assert commands, "docs/operations.md should show `python3 dev.py bench faults`"
    # what `python3 dev.py bench faults --help` runs, once the .venv exists
    result = subprocess.run(
        [sys.executable, "-m", "bench", "faults", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--clients", "--restarts", "--interval"):
        assert option in result.stdout
    assert "dev.py bench faults" in result.stdout


def test_bench_lists_the_fault_drill() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "faults" in result.stdout


def test_every_setting_is_documented() -> None:
    """A setting an operator cannot find is one they cannot use (README's table said "all
    settings" while some were in no document at all)."""
    from crm_api.config import Settings

    docs = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))
    )
    missing = [
        f"CRM_{name.upper()}" for name in Settings.model_fields if f"CRM_{name.upper()}" not in docs
    ]
    assert not missing, missing


def test_error_codes_in_the_api_guide_exist() -> None:
    """The status table names only codes the API can answer."""
    guide = (ROOT / "docs" / "api-guide.md").read_text()
    table = [ln for ln in guide.splitlines() if re.match(r"\| [1-5]\d\d \|", ln)]
    assert table
    source = "".join(p.read_text() for p in (ROOT / "src" / "crm_api").rglob("*.py"))
    codes = {c for ln in table for c in re.findall(r"`([a-z_]+)`", ln.split("|")[3])}
    assert {"too_many_concurrent_requests", "database_busy", "login_busy"} <= codes
    unknown = sorted(c for c in codes if f'"{c}"' not in source)
    assert not unknown, unknown
