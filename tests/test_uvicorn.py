"""The app as it is deployed: a real uvicorn process spoken to over real HTTP, and
`crm-api serve` with its embedded PostgreSQL, which must stop with it. No process outlives
its test."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import psutil

from conftest import problem
from crm_api.auth.passwords import hash_password
from factories.identity import make_org_unit, make_user

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PASSWORD = "Uvicorn-smoke-test-42!"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    """The parent's environment without any CRM_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(extra)
    return env


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``args`` in a process group of its own; on the way out stop it (SIGTERM, then
    SIGKILL to that group) so that nothing leaks whatever the test did."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)


def _log(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


async def _wait_ready(base: str, proc: subprocess.Popen, log: Path, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=base, timeout=2) as http:
        while True:
            assert proc.poll() is None, f"server exited ({proc.returncode}):\n{_log(log)}"
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in {within_s}s:\n{_log(log)}"
            await asyncio.sleep(0.25)


async def test_uvicorn_serves_real_http(engine, database_url, tmp_path):
    unit = await make_org_unit(engine)
    admin = await make_user(
        engine,
        roles=("admin",),
        org_unit=unit,
        email="uvicorn-admin@test.crm",
        password_hash=hash_password(PASSWORD),
    )
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "uvicorn.log"
    env = _env(
        CRM_DATABASE_URL=database_url, CRM_LOG_LEVEL="WARNING", CRM_DATA_DIR=str(tmp_path / "data")
    )
    args = [
        str(BIN / "python"),
        "-m",
        "uvicorn",
        "crm_api.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with _process(args, env, log) as proc:
        await _wait_ready(base, proc, log, within_s=60)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            ready = (await http.get("/readyz")).json()
            assert ready["status"] == "ok" and ready["migration"]

            token = await http.post(
                "/v1/auth/token",
                data={
                    "grant_type": "password",
                    "username": admin["email"],
                    "password": PASSWORD,
                },
            )
            assert token.status_code == 200, token.text
            http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

            created = await http.post(
                "/v1/customers",
                json={"name": "上海明远贸易有限公司", "grade": "A"},
                headers={"X-Request-ID": "uvicorn-1"},
            )
            assert created.status_code == 201, created.text
            assert created.headers["x-request-id"] == "uvicorn-1"
            got = await http.get(created.headers["location"])
            assert got.status_code == 200 and got.json() == created.json()
            assert got.headers["etag"] == '"1"'
            assert got.json()["owner_id"] == str(admin["id"])

            too_big = orjson.dumps({"name": "x", "notes": "n" * (1_048_576 + 1)})
            response = await http.post(
                "/v1/customers", content=too_big, headers={"Content-Type": "application/json"}
            )
            problem(response, 413, "payload_too_large")

            async def streamed():
                for _ in range(20):
                    yield b"n" * 65_536

            response = await http.post(
                "/v1/customers", content=streamed(), headers={"Content-Type": "application/json"}
            )
            problem(response, 413, "payload_too_large")

            problem(await http.get("/v1/customers", params={"limit": 0}), 422)
            listed = (await http.get("/v1/customers")).json()
            assert [c["id"] for c in listed["data"]] == [created.json()["id"]]
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert proc.wait(30) in (0, -signal.SIGTERM), _log(log)
        assert "Application shutdown complete" in _log(log)


def _cluster_processes(pgdata: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(pgdata) in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def test_crm_api_serve_embedded_starts_and_stops_its_postgres(tmp_path):
    data_dir = tmp_path / "data"
    pgdata = (data_dir / "pg").resolve()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = _env(CRM_DATA_DIR=str(data_dir), CRM_PORT=str(port), CRM_LOG_LEVEL="WARNING")
    args = [str(BIN / "crm-api"), "serve", "--demo-customers", "20"]
    cluster: list[psutil.Process] = []
    try:
        with _process(args, env, log) as proc:
            await _wait_ready(base, proc, log, within_s=90)
            cluster = _cluster_processes(pgdata)
            assert cluster, "no embedded postgres found for " + str(pgdata)
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                assert (await http.get("/healthz")).json() == {"status": "ok"}
                problem(await http.get("/v1/customers"), 401, "missing_token")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            assert code in (0, 128 + signal.SIGTERM), f"exit {code}:\n{_log(log)}"
        _, alive = psutil.wait_procs(cluster, timeout=30)
        assert not alive, f"embedded postgres still running after crm-api stopped:\n{_log(log)}"
        assert not _cluster_processes(pgdata)
    finally:
        for p in _cluster_processes(pgdata):  # never leak the cluster, even on failure
            p.kill()


def _workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """uvicorn's worker processes (not multiprocessing's resource tracker)."""
    workers = []
    for child in psutil.Process(proc.pid).children():
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.NoSuchProcess:
            continue
    return workers


async def test_uvicorn_workers_started_without_the_database_stay_up_and_become_ready(
    database_url, tmp_path
):
    """``uvicorn --workers 2`` whose database does not answer (a proxy that never
    forwards: a hung server) when the workers start: no worker exits (uvicorn would stop
    them all), health is up, readiness and the API answer 503 with Retry-After; once the
    database answers, both become ready without a restart."""
    from pgproxy import PgProxy

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "uvicorn-workers.log"
    async with PgProxy(database_url) as proxy:
        proxy.freeze()
        env = _env(
            CRM_DATABASE_URL=proxy.url,
            CRM_LOG_LEVEL="WARNING",
            CRM_DATA_DIR=str(tmp_path / "data"),
        )
        args = [
            str(BIN / "python"),
            "-m",
            "uvicorn",
            "crm_api.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ]
        with _process(args, env, log) as proc:
            deadline = time.monotonic() + 60
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                while True:  # both workers up and answering (a worker that failed to start
                    # would have made uvicorn stop every worker)
                    assert proc.poll() is None, f"uvicorn exited ({proc.returncode}):\n{_log(log)}"
                    seen: object = None
                    try:
                        seen = (await http.get("/healthz")).status_code
                        if seen == 200 and len(_workers(proc)) == 2:
                            break
                    except httpx.TransportError as exc:
                        seen = exc
                    assert time.monotonic() < deadline, (
                        f"not up in 60 s ({len(_workers(proc))} workers, {seen!r}):\n{_log(log)}"
                    )
                    await asyncio.sleep(0.25)
                for _ in range(6):  # over several connections: whichever worker answers
                    async with httpx.AsyncClient(base_url=base, timeout=10) as fresh:
                        ready = await fresh.get("/readyz")
                        problem(ready, 503)
                        assert ready.headers["retry-after"] == "1"
                        api = await fresh.get("/v1/customers")
                        problem(api, 503, "database_unavailable")
                        assert api.headers["retry-after"] == "1"
                assert proc.poll() is None and len(_workers(proc)) == 2
                proxy.thaw()
                await _wait_ready(base, proc, log, within_s=60)
                served = 0
                deadline = time.monotonic() + 60
                while served < 10:  # ten fresh connections in a row: both workers ready
                    async with httpx.AsyncClient(base_url=base, timeout=10) as fresh:
                        if (await fresh.get("/readyz")).status_code == 200:
                            problem(await fresh.get("/v1/customers"), 401, "missing_token")
                            served += 1
                        else:
                            served = 0
                            assert time.monotonic() < deadline, _log(log)
                            await asyncio.sleep(0.25)
                assert len(_workers(proc)) == 2
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) in (0, -signal.SIGTERM), _log(log)
