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
import signal
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
    # The lock holds every extra's packages (dev tools, pgserver for the embedded default).
    subprocess.run([*pip, "install", "--no-deps", "-e", f"{ROOT}[embedded,dev]"], check=True)
    stamp_file.write_text(_stamp())


def run(args: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``args`` and return its exit code. SIGTERM, SIGINT and SIGHUP sent to dev.py are
    passed on to the child, and dev.py waits for it to finish: ``kill -TERM`` on dev.py
    stops the server (and its embedded PostgreSQL) instead of orphaning them."""
    merged = {**os.environ, **(env or {})}
    child = subprocess.Popen(args, cwd=ROOT, env=merged)
    forwarded = (signal.SIGTERM, signal.SIGINT) + (
        (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
    )

    def forward(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and _terminal_sends_to_group():
            return  # Ctrl+C already reached the child: a second one would cut its clean-up
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # only if a handler above could not be installed
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _terminal_sends_to_group() -> bool:
    """Whether we run in the terminal's foreground process group (then the terminal's
    Ctrl+C goes to the child as well, and must not be sent twice)."""
    try:
        return os.name == "posix" and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def replace_with(args: list[str]) -> int:
    """Become ``args`` (POSIX ``exec``): the server then *is* the process a supervisor or
    ``kill`` sees, gets every signal directly, and reads the terminal for prompts
    (``create-admin``). Elsewhere, :func:`run` it."""
    if os.name != "posix":
        return run(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    os.execv(args[0], args)


def main() -> int:
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("help", [])
    if command in {"help", "-h", "--help"}:
        print(__doc__)
        return 0
    ensure_installed()
    if command == "serve":
        return replace_with([str(BIN / "crm-api"), "serve", *rest])
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
        return replace_with([str(BIN / "crm-api"), *rest])
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
