"""``serve`` on a port someone else holds says so in one line, before touching the database
(a new user's first ``python3 dev.py serve`` where 8000 is taken)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/crm_unreachable_test"


def test_serve_on_a_port_in_use_says_which_and_how_to_change_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # an unreachable database: the port must be checked first, so it is never reached
        result = subprocess.run(
            [sys.executable, "-m", "crm_api", "serve"],
            cwd=tmp_path,
            env={**env, "CRM_PORT": str(port), "CRM_DATABASE_URL": UNREACHABLE},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "already in use" in lines[0]
    assert "--port" in lines[0] and "CRM_PORT" in lines[0]
    assert "crm-api on http" not in result.stdout


def test_serve_on_a_free_port_goes_on_to_the_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "crm_api", "serve"],
        cwd=tmp_path,
        env={**env, "CRM_PORT": str(port), "CRM_DATABASE_URL": UNREACHABLE},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL" in result.stderr
