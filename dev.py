#!/usr/bin/env python3
"""One entry point for a fresh checkout; needs only Python 3.11+.

    python3 dev.py serve    install (first run), then run the API on an embedded PostgreSQL
    python3 dev.py test     install (first run), then run the whole test suite
    python3 dev.py lint     ruff + mypy
    python3 dev.py bench …  the benchmark (see bench/README.md)

Dependencies come from requirements.lock (hash-pinned) into ./.venv; the install is redone
only when the lock file or pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def _stamp() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.lock", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_installed() -> None:
    if sys.version_info < (3, 11):
        sys.exit("crm-api needs Python 3.11 or newer")
    stamp_file = VENV / ".crm-installed"
    if stamp_file.exists() and stamp_file.read_text() == _stamp() and PY.exists():
        return
    if not PY.exists():
        print("creating .venv …", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    print("installing pinned dependencies (requirements.lock) …", flush=True)
    pip = [str(PY), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--require-hashes", "--no-deps", "-r", str(ROOT / "requirements.lock")],
        check=True,
    )
    subprocess.run([*pip, "install", "--no-deps", "-e", str(ROOT)],
                   check=True)
    stamp_file.write_text(_stamp())


def run(args: list[str], env: dict[str, str] | None = None) -> int:
    merged = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=ROOT, env=merged).returncode


def main() -> int:
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("help", [])
    if command in {"help", "-h", "--help"}:
        print(__doc__)
        return 0
    ensure_installed()
    if command == "serve":
        return run([str(BIN / "crm-api"), "serve", *rest])
    if command == "test":
        code = run([str(PY), "-m", "pytest", *rest])
        if code == 5:
            print("pytest collected no tests: that is a failure here", file=sys.stderr)
            return 1
        return code
    if command == "lint":
        return run([str(BIN / "ruff"), "check", "src", "tests", "bench"]) or run(
            [str(BIN / "mypy")]
        )
    if command == "bench":
        return run([str(PY), "-m", "bench", *rest])
    if command == "crm-api":
        return run([str(BIN / "crm-api"), *rest])
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
