"""The operator's first run: the command line and the test harness fail clearly and stop
cleanly.

* ``serve`` with the database unreachable: one line on stderr and a non-zero exit code;
* settings refused in production (no signing key): one line, not a pydantic traceback;
* no database URL and no embedded PostgreSQL installed: one line saying what to do;
* ``seed-demo`` is idempotent and ``--customers N`` adds N more;
* ``kill -TERM`` on ``python3 dev.py serve`` stops the server and its embedded PostgreSQL,
  whose start-up chatter and ``XDG_RUNTIME_DIR`` warning stay out of the output;
* the test suite refuses a database not named for tests, and one it cannot reach ends the
  run at once with one message.

Commands run in subprocesses, as a user runs them. Nothing here depends on timing: waits
poll for a state with generous limits.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conftest import count_rows

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/crm_unreachable_test"


def _env(**overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.pop("XDG_RUNTIME_DIR", None)
    for key, value in overrides.items():
        if value is not None:
            env[key] = value
    return env


def crm_api(*args: str, cwd: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_api", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_serve_with_the_database_unreachable_says_so_in_one_line(tmp_path: Path) -> None:
    result = crm_api("serve", cwd=tmp_path, CRM_DATABASE_URL=UNREACHABLE)
    assert result.returncode != 0
    line = _one_line(result.stderr)
    assert "cannot connect to PostgreSQL" in line and "127.0.0.1:1" in line


def test_migrate_with_a_missing_database_says_so_in_one_line(
    tmp_path: Path, database_url: str
) -> None:
    missing = make_url(database_url).set(database=f"crm_missing_{uuid.uuid4().hex[:8]}_test")
    result = crm_api(
        "migrate", cwd=tmp_path, CRM_DATABASE_URL=missing.render_as_string(hide_password=False)
    )
    assert result.returncode != 0
    assert "does not exist" in _one_line(result.stderr)


def test_production_without_a_signing_key_is_one_line(tmp_path: Path) -> None:
    result = crm_api(
        "create-admin",
        "--email",
        "you@example.com",
        "--password",
        "a-long-pass-phrase-2026",
        cwd=tmp_path,
        CRM_ENV="production",
        CRM_DATABASE_URL=UNREACHABLE,
    )
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "invalid settings" in line and "CRM_JWT_SIGNING_KEY" in line


def test_seed_demo_is_refused_in_production(tmp_path: Path) -> None:
    result = crm_api(
        "seed-demo",
        cwd=tmp_path,
        CRM_ENV="production",
        CRM_DATABASE_URL=UNREACHABLE,
        CRM_JWT_SIGNING_KEY="k3y-" + uuid.uuid4().hex + uuid.uuid4().hex,
    )
    assert result.returncode == 2
    assert "refused with CRM_ENV=production" in _one_line(result.stderr)


def test_no_database_url_and_no_embedded_postgresql(tmp_path: Path) -> None:
    """The Docker image has no pgserver: forgetting CRM_DATABASE_URL must say what to do."""
    code = (
        "import sys; sys.modules['pgserver'] = None; "
        "from crm_api.cli import main; sys.exit(main(['migrate']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(CRM_DATA_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "CRM_DATABASE_URL is not set" in line and "embedded" in line


async def test_seed_demo_is_idempotent_and_adds_customers_on_request(
    engine: AsyncEngine, database_url: str
) -> None:
    from crm_api.seed import DEFAULT_CUSTOMERS, DEMO_PRODUCTS, seed_demo

    first = await seed_demo(database_url)
    assert first["new_users"] == 8 and first["customers_added"] == DEFAULT_CUSTOMERS
    assert first["products_added"] == len(DEMO_PRODUCTS)
    counts = {
        t: await count_rows(engine, t)
        for t in ("users", "org_units", "customers", "contacts", "authz_rules", "products")
    }
    again = await seed_demo(database_url)  # e.g. `seed-demo` after `serve` loaded it
    assert again["new_users"] == 0 and again["new_org_units"] == 0
    assert again["customers_added"] == 0 and again["products_added"] == 0
    assert {t: await count_rows(engine, t) for t in counts} == counts

    more = await seed_demo(database_url, customers=7)
    assert more["customers_added"] == 7 and more["new_users"] == 0
    assert await count_rows(engine, "customers") == counts["customers"] + 7
    assert await count_rows(engine, "users") == counts["users"]
    # only_if_empty (what serve does) leaves a database with users alone.
    assert (await seed_demo(database_url, only_if_empty=True)).get("skipped")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for(predicate: Any, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {limit_s} s waiting for {what}")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Inside the checkout, not /tmp: pgserver runs PostgreSQL as its own system user when
    # started by root, and pytest's tmp dirs are private to the user who runs the tests.
    path = ROOT / ".crm-data" / f"ops-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sigterm_on_dev_py_serve_stops_server_and_embedded_postgresql(data_dir: Path) -> None:
    port = _free_port()
    log = data_dir.parent / f"{data_dir.name}.log"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w+") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "dev.py"),
                "serve",
                "--port",
                str(port),
                "--demo-customers",
                "5",
            ],
            cwd=ROOT,
            env=_env(CRM_DATA_DIR=str(data_dir)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a signal to dev.py alone, not to a process group
        )
        try:

            def healthy() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                        return True
                except OSError:
                    return False

            _wait_for(healthy, 240, "the server to answer /healthz")
            postmaster = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
            assert _alive(postmaster)

            # seed-demo while serve runs: a no-op on the demo data serve loaded.
            seeded = crm_api("seed-demo", cwd=ROOT, CRM_DATA_DIR=str(data_dir))
            assert seeded.returncode == 0, seeded.stderr
            assert (
                "0 customers and 0 products added" in seeded.stdout and "(0 new)" in seeded.stdout
            )
            assert "XDG_RUNTIME_DIR" not in seeded.stderr

            os.kill(proc.pid, signal.SIGTERM)  # dev.py's pid, as `kill -TERM` would
            proc.wait(timeout=120)
            _wait_for(lambda: not _alive(postmaster), 120, "the embedded PostgreSQL to stop")
            assert not (data_dir / "pg" / "postmaster.pid").exists()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        output = log.read_text()
    log.unlink(missing_ok=True)
    assert "XDG_RUNTIME_DIR" not in output
    assert '"logger":"pgserver"' not in output  # pg_ctl/initdb output is not logged at INFO
    assert "loading demo data (5 customers)" in output


# --- the test harness's own guards (conftest.py) ------------------------------------------


def _pytest(
    database_url: str, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_customers.py",
            "tests/test_pagination.py",
            *args,
        ],
        cwd=ROOT,
        env=_env(CRM_TEST_DATABASE_URL=database_url, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, time.monotonic() - started


def test_a_missing_test_database_stops_the_run_once(database_url: str) -> None:
    missing = make_url(database_url).set(database=f"crm_nope_{uuid.uuid4().hex[:8]}_test")
    result, _ = _pytest(missing.render_as_string(hide_password=False))
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert output.count("test database unavailable") == 1, output
    assert "does not exist" in output
    assert " passed" not in output and "ERROR tests/" not in output, output


def test_an_unreachable_server_stops_the_run_once() -> None:
    result, _ = _pytest(UNREACHABLE)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert output.count("test database unavailable") == 1, output


async def _admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for sql in statements:
                await conn.execute(text(sql))
    finally:
        await engine.dispose()


def test_a_database_not_named_for_tests_is_refused_and_left_alone(database_url: str) -> None:
    name = f"crm_precious_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(database_url, f'CREATE DATABASE "{name}"'))
    precious = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        asyncio.run(_admin(precious, "CREATE TABLE keep_me (id int)"))
        result, _ = _pytest(precious)
        output = result.stdout + result.stderr
        assert result.returncode == 4, output
        assert "refusing to run the tests on database" in output
        assert "CRM_TEST_DATABASE_ALLOW_ANY=1" in output
        asyncio.run(_admin(precious, "SELECT * FROM keep_me"))  # still there
    finally:
        asyncio.run(_admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_create_admin_in_production_mode_on_a_fresh_database(
    database_url: str, tmp_path: Path
) -> None:
    """README's `docker run --env-file crm.env … create-admin`: production mode, a signing
    key from the env file, a database nobody has migrated yet. Run twice: idempotent."""
    name = f"crm_fresh_{uuid.uuid4().hex[:8]}_test"
    asyncio.run(_admin(database_url, f'CREATE DATABASE "{name}"'))
    fresh = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    key = "k3y-" + uuid.uuid4().hex + uuid.uuid4().hex
    try:
        for expected in ("created administrator", "already an administrator"):
            result = crm_api(
                "create-admin",
                "--email",
                "you@example.com",
                "--password",
                "Correct-horse-battery-2026",
                cwd=tmp_path,
                CRM_ENV="production",
                CRM_DATABASE_URL=fresh,
                CRM_JWT_SIGNING_KEY=key,
            )
            assert result.returncode == 0, result.stderr
            assert expected in result.stdout
    finally:
        asyncio.run(_admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
