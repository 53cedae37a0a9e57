"""``create_app()``: the lifespan builds the database engine and the policy engine."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from crm_api import __version__, api
from crm_api.auth.keys import keyring_from_settings
from crm_api.auth.principals import PrincipalResolver
from crm_api.authz.enforcer import PolicyEngine
from crm_api.config import Settings, get_settings
from crm_api.db.engine import create_database
from crm_api.db.migrate import head_revision
from crm_api.errors import install_error_handlers
from crm_api.health import router as health_router
from crm_api.kit.routing import document_query_models
from crm_api.logs import configure_logging
from crm_api.middleware import InflightCap, RequestMiddleware, SecurityHeadersMiddleware

logger = logging.getLogger("crm_api")

DESCRIPTION = """
A headless CRM: customers, contacts and the rest of the relationship, behind one typed API.

* **Errors** are RFC 9457 `application/problem+json` with a stable `code` and a `request_id`.
* **Lists** use cursor pagination: `limit` (1–200, default 50), `cursor`, `sort`; the
  envelope is `{data, next_cursor, has_more}`.
* **Writes**: `POST` accepts `Idempotency-Key`; `PATCH`/`DELETE` accept `If-Match` with the
  `ETag` of a `GET` (stale → 412). Deletes are soft and restorable.
* **Access**: each role holds actions on resources over a data scope; records outside your
  scope answer 404.
"""  # noqa: RUF001


def create_app(settings: Settings | None = None, database_url: str | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = create_database(settings, database_url)
        policy = PolicyEngine()
        principals = PrincipalResolver(db.engine)
        policy.listeners.append(principals.clear)
        await policy.load(db.engine)
        policy.start_polling(db.engine, settings.authz_poll_interval_s)
        principals.start()
        db.reaper.start()
        app.state.db = db
        app.state.policy = policy
        app.state.principals = principals
        app.state.keyring = keyring_from_settings(settings)
        app.state.settings = settings
        app.state.migration_head = head_revision()
        logger.info("crm-api started", extra={"embedded": settings.database_url is None})
        # Everything built so far (routes, models, SQLAlchemy and pydantic metadata: several
        # hundred thousand objects) lives as long as the app: keep it out of the cyclic
        # collector, whose full passes over it were the longest pauses under load (list p99
        # 200 -> 95 ms, docs/benchmarks.md). Unfrozen at shutdown, so whatever dies with the
        # app (tests run many) is collectable again.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await policy.stop()
            await principals.stop()
            await db.dispose()

    configure_logging(settings.log_level, settings.log_json)
    app = FastAPI(
        title="crm-api",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
    )
    install_error_handlers(app)
    app.state.inflight = InflightCap(settings.max_inflight_per_principal)
    api.mount(app)
    app.include_router(health_router)
    document_query_models(app)
    app.add_middleware(
        RequestMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_query_string_bytes=settings.max_query_string_bytes,
        max_concurrent=settings.max_concurrent_requests,
    )
    if settings.cors_origins:
        # Outermost (added last): the problems RequestMiddleware answers itself (413, 414,
        # 415, 503, 500) need CORS headers too, or a browser app cannot read them.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization", "Content-Type", "If-Match", "Idempotency-Key", "X-Request-ID",
            ],
            expose_headers=["ETag", "Location", "X-Request-ID", "Idempotent-Replayed"],
        )
        app.add_middleware(SecurityHeadersMiddleware)  # preflights get nosniff too
    return app
