"""Test fixtures: a real PostgreSQL, migrated by Alembic, reset between tests.

Which server: ``CRM_TEST_DATABASE_URL`` when set (CI points it at the machine's PostgreSQL
service and must fail, not skip, when it is unreachable); otherwise an embedded cluster
started through ``pgserver`` in ``.crm-data/test``.

The suite drops and recreates the ``public`` schema of that database. So it refuses a
database whose name does not say it is one for tests (no ``test`` in it) unless
``CRM_TEST_DATABASE_ALLOW_ANY=1``, and a database it cannot reach ends the run at once
with one clear line (exit code 3) instead of an error per test.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from crm_api.config import Environment, Settings
from crm_api.main import create_app

ROOT = Path(__file__).resolve().parents[1]

#: Tables emptied between tests (everything but the migration marker and the policy seed,
#: which is restored to the defaults).
_KEEP = {"alembic_version"}


#: Exit codes of a run stopped before any test: no usable database, or one refused.
EXIT_NO_DATABASE = 3
EXIT_NOT_A_TEST_DATABASE = 4


def _test_url() -> str:
    url = os.environ.get("CRM_TEST_DATABASE_URL")
    if url:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        return url
    if os.environ.get("CI"):
        pytest.exit("CI=true but CRM_TEST_DATABASE_URL is not set", returncode=EXIT_NO_DATABASE)
    from crm_api.db.embedded import EmbeddedUnavailable, start_embedded

    try:
        return start_embedded(ROOT / ".crm-data" / "test", database="crm_test")
    except EmbeddedUnavailable as exc:
        pytest.exit(f"no test database: {exc}", returncode=EXIT_NO_DATABASE)


def _refuse_non_test_database(url: str) -> None:
    """The suite wipes the schema: never point it at a real database by mistake."""
    try:
        name = make_url(url).database or ""
    except Exception as exc:  # an unparsable URL: say so once
        pytest.exit(
            f"CRM_TEST_DATABASE_URL is not a database URL: {exc}", returncode=EXIT_NO_DATABASE
        )
    if "test" in name.lower() or os.environ.get("CRM_TEST_DATABASE_ALLOW_ANY") == "1":
        return
    pytest.exit(
        f"refusing to run the tests on database {name!r}: the suite drops and recreates its "
        "schema. Use a database whose name contains 'test' (e.g. crm_test), or set "
        "CRM_TEST_DATABASE_ALLOW_ANY=1 if this one really is disposable",
        returncode=EXIT_NOT_A_TEST_DATABASE,
    )


def _require_reachable(url: str) -> None:
    from crm_api.db.check import DatabaseUnavailable, check_database

    try:
        check_database(url, within_s=10)
    except DatabaseUnavailable as exc:
        pytest.exit(f"test database unavailable: {exc}", returncode=EXIT_NO_DATABASE)


async def _prepare_schema(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def database_url() -> str:
    url = _test_url()
    _refuse_non_test_database(url)
    _require_reachable(url)
    asyncio.run(_prepare_schema(url))
    from crm_api.db.migrate import upgrade

    upgrade(url)
    return url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(
        env=Environment.test,
        database_url=database_url,
        log_level="WARNING",
        jwt_signing_key="test-signing-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        db_pool_size=10,
        authz_poll_interval_s=0.2,
        # concurrency tests fire a dozen requests as one principal at once; the cap itself
        # is tested with its own limit (test_inflight_cap.py)
        max_inflight_per_principal=64,
    )


@pytest.fixture(scope="session")
async def app(settings: Settings, database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(settings, database_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url)
    yield eng
    await eng.dispose()


async def reset_database(engine: AsyncEngine) -> None:
    """Empty every table and restore the seed. Retried on deadlock: the app's background
    policy reload reads authz_state then authz_rules in one transaction, and TRUNCATE can
    lock them in the other order (PostgreSQL then aborts one of the two)."""
    for attempt in range(5):
        try:
            await _reset_database(engine)
            return
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "40P01" or attempt == 4:
                raise
            await asyncio.sleep(0.05)


async def _reset_database(engine: AsyncEngine) -> None:
    from crm_api.authz.defaults import BUILTIN_ROLES, default_policy_rows

    async with engine.begin() as conn:
        tables = (
            (
                await conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            )
            .scalars()
            .all()
        )
        doomed = [t for t in tables if t not in _KEEP]
        if doomed:
            await conn.execute(text(f"TRUNCATE {', '.join(doomed)} RESTART IDENTITY CASCADE"))
        await conn.execute(text("INSERT INTO authz_state (id, version) VALUES (1, 1)"))
        await conn.execute(
            text(
                "INSERT INTO roles (id, name, description, builtin, version) "
                "VALUES (gen_random_uuid(), :name, :description, true, 1)"
            ),
            [{"name": n, "description": d} for n, d in BUILTIN_ROLES.items()],
        )
        rows = default_policy_rows()
        await conn.execute(
            text(
                "INSERT INTO authz_rules (id, ptype, v0, v1, v2, v3, v4, v5) "
                "VALUES (gen_random_uuid(), :ptype, :v0, :v1, :v2, :v3, :v4, '')"
            ),
            rows,
        )


@pytest.fixture(autouse=True)
async def _clean(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every test that touches the database starts from the migrated, seeded state."""
    if "engine" in request.fixturenames or "client" in request.fixturenames:
        from crm_api.authz.state import settle

        # A policy reload the previous test's last write started may still be running:
        # let it finish before TRUNCATE takes the policy tables (the deadlock retry in
        # reset_database stays as the safety net for the periodic poller).
        await settle()
        eng: AsyncEngine = request.getfixturevalue("engine")
        await reset_database(eng)
        application: FastAPI | None = (
            request.getfixturevalue("app") if "app" in request.fixturenames else None
        )
        if application is not None:
            await application.state.policy.load(application.state.db.engine)
            await application.state.system_settings.load(application.state.db.engine)
    yield


def token_for(app: FastAPI, user: dict[str, Any], token_type: str = "access", **extra: Any) -> str:
    """A valid access token for a factory-made user (or API client: ``kind="client"``)."""
    from crm_api.auth import tokens

    settings: Settings = app.state.settings
    kind = "client" if user.get("kind") == "service" else "user"
    token, _ = tokens.issue(
        app.state.keyring,
        subject=f"{kind}:{user['id']}",
        token_type=token_type,
        ttl_s=600,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        jti=extra.pop("jti", None),
        extra=extra or None,
    )
    return token


# --- every response checked against the committed contract ---------------------------------
class ContractViolation(AssertionError):
    """A response the committed OpenAPI document does not describe."""


class ContractChecker:
    """Checks responses against ``openapi/openapi.json``, the committed contract: the
    operation (method + path template) must be documented, the status documented for it,
    and a JSON body (``application/json`` or ``application/problem+json``) must match the
    schema documented for that status and content type (JSON Schema 2020-12, as OpenAPI
    3.1 says, with ``format`` checked; ``$ref`` resolved against the document).

    Validators are built once per (operation, status, content type) and cached; a request
    for an operation the document lacks (an unknown URL, another method) may only be a
    404, 405, 414 or 400 (invalid_query) problem. CORS preflights are outside the contract.
    """

    #: Served by FastAPI itself, outside the contract.
    UNDOCUMENTED = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
    JSON_TYPES = ("application/json", "application/problem+json")
    #: What a request for an operation the document lacks may get.
    WITHOUT_OPERATION = frozenset({400, 404, 405, 414})

    def __init__(self, document: dict[str, Any]) -> None:
        import re

        self.document = document
        self._components = {"components": document.get("components", {})}
        templates = []
        for template in document["paths"]:
            pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
            # literal segments win over parameters: /customers/transfer, not /{customer_id}
            templates.append((template.count("{"), template, re.compile(pattern + "$")))
        self._templates = sorted(templates)
        self._validators: dict[tuple[str, str, str, str], Any] = {}
        #: Responses checked and the time spent checking them (the run's summary shows it).
        self.checked = 0
        self.seconds = 0.0

    @classmethod
    def committed(cls) -> ContractChecker:
        import orjson

        return cls(orjson.loads((ROOT / "openapi" / "openapi.json").read_bytes()))

    def _template(self, path: str) -> str | None:
        for _, template, pattern in self._templates:
            if pattern.match(path):
                return template
        return None

    def _validator(
        self, method: str, template: str, status: str, media: str, schema: dict[str, Any]
    ) -> Any:
        key = (method, template, status, media)
        validator = self._validators.get(key)
        if validator is None:
            import jsonschema_rs

            validator = jsonschema_rs.Draft202012Validator(
                {**self._components, **schema}, validate_formats=True
            )
            self._validators[key] = validator
        return validator

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        started = time.perf_counter()
        try:
            self._check(method, path, status, content_type, body)
        finally:
            self.checked += 1
            self.seconds += time.perf_counter() - started

    def _check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        if path in self.UNDOCUMENTED or path.startswith("/docs/static/"):
            return
        media = content_type.split(";", 1)[0].strip().lower()
        where = f"{method} {path} answered {status} ({media or 'no content type'})"
        template = self._template(path)
        operation = self.document["paths"][template].get(method.lower()) if template else None
        if operation is None:
            # no such operation: the router's 404/405 or the request middleware's 414 or 400, a
            # problem like any other
            if status not in self.WITHOUT_OPERATION:
                raise ContractViolation(
                    f"{where}: no operation {method} {template or path} in openapi/openapi.json"
                )
            operation = {
                "responses": {
                    str(status): {
                        "content": {
                            "application/problem+json": {
                                "schema": {"$ref": "#/components/schemas/Problem"}
                            }
                        }
                    }
                }
            }
            template = path
        label = f"{method} {template} ({operation.get('operationId', 'undocumented')})"
        documented = operation["responses"].get(str(status))
        if documented is None:
            raise ContractViolation(
                f"{where}: status {status} is not documented for {label}; documented: "
                f"{', '.join(operation['responses'])}\nbody: {body[:500]!r}"
            )
        content = documented.get("content")
        if not body:
            return
        if media not in self.JSON_TYPES:
            if content and media not in content:
                raise ContractViolation(
                    f"{where}: {label} documents {', '.join(content)} for {status}"
                )
            return
        if not content or media not in content:
            raise ContractViolation(
                f"{where}: {label} documents "
                f"{', '.join(content) if content else 'no body'} for {status}"
                f"\nbody: {body[:500]!r}"
            )
        schema = content[media].get("schema")
        if schema is None:
            return
        import orjson

        try:
            instance = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ContractViolation(f"{where}: the body is not JSON ({exc})") from None
        validator = self._validator(method, template, str(status), media, schema)
        if validator.is_valid(instance):
            return
        errors = [
            f"  at {'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message}"
            f"  [schema: {'/'.join(map(str, e.schema_path))}]"
            for e in itertools.islice(validator.iter_errors(instance), 5)
        ]
        raise ContractViolation(
            f"{where}: the body does not match the schema documented for {label}:\n"
            + "\n".join(errors)
            + f"\nbody: {body[:1000]!r}"
        )


#: One checker for the whole run (the committed document does not change during it).
_CONTRACT: ContractChecker | None = None


def contract() -> ContractChecker:
    global _CONTRACT
    if _CONTRACT is None:
        _CONTRACT = ContractChecker.committed()
    return _CONTRACT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _CONTRACT is not None and _CONTRACT.checked:
        terminalreporter.write_line(
            f"contract check: {_CONTRACT.checked} responses checked against "
            f"openapi/openapi.json in {_CONTRACT.seconds:.2f} s "
            f"({len(_CONTRACT._validators)} schemas compiled)"
        )


async def _check_response(response: httpx.Response) -> None:
    await response.aread()
    request = response.request
    if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
        return  # a CORS preflight: the CORS protocol, answered by its middleware
    contract().check(
        # HEAD is answered as GET without the body (RequestMiddleware): GET's statuses apply
        "GET" if request.method == "HEAD" else request.method,
        request.url.path,
        response.status_code,
        response.headers.get("content-type", ""),
        response.content,
    )


def _http_client(
    app: FastAPI, headers: dict[str, str] | None = None, *, check_contract: bool = True
) -> httpx.AsyncClient:
    """An in-process client of ``app``. Every response it gets is checked against the
    committed OpenAPI document (:class:`ContractChecker`): an undocumented status or a body
    that does not match its schema fails the test at the request that got it
    (``CRM_TEST_CONTRACT_CHECK=0`` turns that off, to measure what it costs)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    check_contract = check_contract and os.environ.get("CRM_TEST_CONTRACT_CHECK") != "0"
    hooks = {"response": [_check_response]} if check_contract else {}
    return httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=headers, event_hooks=hooks
    )


@pytest.fixture
async def admin_user(app: FastAPI, engine: AsyncEngine) -> dict[str, Any]:
    from factories.identity import make_org_unit, make_user

    root = await make_org_unit(engine, "Head office", kind="group")
    return await make_user(engine, roles=("admin",), org_unit=root, email="admin@test.crm")


@pytest.fixture
async def client(
    app: FastAPI, engine: AsyncEngine, admin_user: dict[str, Any]
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client authenticated as an administrator (role ``admin``, scope all)."""
    await app.state.policy.load(engine)
    async with _http_client(app, {"Authorization": f"Bearer {token_for(app, admin_user)}"}) as c:
        yield c


@pytest.fixture
async def anon_client(app: FastAPI, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with _http_client(app) as c:
        yield c


@pytest.fixture
async def client_for(app: FastAPI, engine: AsyncEngine) -> AsyncIterator[Any]:
    """``await client_for(user)``: an HTTP client authenticated as that user. Reloads the
    policy first, so roles given to freshly made users are in force."""
    opened: list[httpx.AsyncClient] = []

    async def make(user: dict[str, Any], **token_extra: Any) -> httpx.AsyncClient:
        await app.state.policy.load(engine)
        c = _http_client(app, {"Authorization": f"Bearer {token_for(app, user, **token_extra)}"})
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


async def count_rows(engine: AsyncEngine, table: str, where: str = "TRUE") -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"))).scalar_one()
        )


def problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert ``response`` is an RFC 9457 problem with ``status`` (and ``code``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "code", "request_id"} <= body.keys()
    if code is not None:
        assert body["code"] == code, body
    return body
