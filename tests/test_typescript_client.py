"""The TypeScript client frontend teams generate from the committed contract compiles
with ``tsc --strict`` (issue #7, item 9), and its usage file proves that create bodies
leave defaulted fields optional and that errors are typed as the Problem schema.

Runs ``npm ci`` (pinned by clients/typescript/package-lock.json), regenerates
``src/schema.d.ts`` from openapi/openapi.json with openapi-typescript, and compiles
``src/usage.ts``. Without node/npm the test skips on a developer's machine but fails in
CI (``CI=true``), so the client check cannot silently disappear there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "typescript"


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        message = "node and npm are needed to build the TypeScript client"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: not skipped)")
        pytest.skip(message)
    return npm


def _run(*args: str) -> str:
    result = subprocess.run(
        args,
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={
            **os.environ,
            "NO_UPDATE_NOTIFIER": "1",
            "NPM_CONFIG_FUND": "false",
            "NPM_CONFIG_AUDIT": "false",
        },
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_typescript_client_compiles_strict() -> None:
    npm = _npm()
    _run(npm, "ci", "--prefer-offline", "--no-audit", "--no-fund")
    _run(npm, "run", "--silent", "generate")
    schema = (CLIENT / "src" / "schema.d.ts").read_text()
    assert '"application/problem+json": components["schemas"]["Problem"]' in schema
    _run(npm, "run", "--silent", "check")
