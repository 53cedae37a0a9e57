"""``create_app()``: the lifespan builds the database engine and the policy engine."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from crm_api import __version__, api
from crm_api.auth.keys import keyring_from_settings
from crm_api.auth.passwords import PasswordChecker
from crm_api.auth.principals import PrincipalResolver
from crm_api.authz.enforcer import PolicyEngine
from crm_api.config import Settings, get_settings
from crm_api.db.engine import create_database
from crm_api.db.migrate import head_revision
from crm_api.errors import install_error_handlers
from crm_api.health import router as health_router
from crm_api.kit.routing import document_problems, document_query_models
from crm_api.logs import configure_logging
from crm_api.middleware import InflightCap, RequestMiddleware, SecurityHeadersMiddleware
from crm_api.system_settings.store import SettingsStore
from crm_api.warmup import WarmUp

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
        policy.session_listeners.append(principals.revoked_sessions.load)
        system_settings = SettingsStore()
        policy.settings_listeners.append(system_settings.refresh)
        app.state.db = db
        app.state.policy = policy
        app.state.principals = principals
        app.state.system_settings = system_settings
        app.state.keyring = keyring_from_settings(settings)
        app.state.passwords = PasswordChecker(
            settings.password_hash_concurrency, settings.password_hash_wait_s
        )
        app.state.settings = settings
        app.state.migration_head = head_revision()
        # The policy, the revoked sessions and the system settings: loaded now, or (the
        # database down, hung or full) in the background while the API answers 503; the
        # worker starts either way (crm_api.warmup).
        await warm_up.start(
            lambda: policy.refresh_if_changed(db.engine),
            lambda: policy.start_polling(db.engine, settings.authz_poll_interval_s),
        )
        principals.start()
        db.reaper.start()
        logger.info(
            "crm-api started",
            extra={"embedded": settings.database_url is None, "ready": warm_up.ready},
        )
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
            await warm_up.stop()
            await policy.stop()
            await principals.stop()
            await db.dispose()

    configure_logging(settings.log_level, settings.log_json)
    app = FastAPI(
        title="crm-api",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by _mount_docs from local assets
        redoc_url=None,
        openapi_url="/openapi.json",
        # No path ends in a slash. Starlette's redirect to the path without it named the
        # host from the request's Host header (``Location: http://<any host>/v1/…``):
        # a 404 problem instead, like any other path that is not the API's.
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.state.inflight = InflightCap(settings.max_inflight_per_principal)
    app.state.warm_up = warm_up = WarmUp()
    api.mount(app)
    app.include_router(health_router)
    _mount_docs(app)
    document_query_models(app)
    document_problems(app)
    _declare_password_flow(app)
    app.add_middleware(
        RequestMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_query_string_bytes=settings.max_query_string_bytes,
        max_concurrent=settings.max_concurrent_requests,
        warm_up=warm_up,
    )
    if settings.cors_origins:
        # Outermost (added last): the problems RequestMiddleware answers itself (413, 414,
        # 415, 503, 500) need CORS headers too, or a browser app cannot read them.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "Idempotency-Key",
                "X-Request-ID",
            ],
            expose_headers=["ETag", "Location", "X-Request-ID", "Idempotent-Replayed"],
        )
        app.add_middleware(SecurityHeadersMiddleware)  # preflights get nosniff too
    return app


#: Where the Swagger UI / ReDoc assets of the pinned ``fastapi-offline`` package are served.
DOCS_STATIC = "/docs/static"
#: The OAuth2 security scheme that lets Swagger UI's "Authorize" log in with a password.
PASSWORD_SCHEME = "OAuth2Password"
TOKEN_URL = "/v1/auth/token"


def _mount_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their assets served from the pinned
    ``fastapi-offline`` package instead of a CDN, so the docs work without internet (and
    without a third party seeing who reads them)."""
    assert app.openapi_url is not None
    openapi_url = app.openapi_url
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    app.mount(
        DOCS_STATIC,
        StaticFiles(packages=[("fastapi_offline", "static")]),
        name="docs-static",
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            # Keep the token across reloads of the page.
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )


def _declare_password_flow(app: FastAPI) -> None:
    """Beside the bearer scheme, declare the OAuth2 password flow of ``/v1/auth/token``, so
    Swagger UI's "Authorize" can log in with a user's e-mail and password (the README's
    demo accounts). Either scheme carries the same bearer token: each operation that takes
    the bearer token accepts one *or* the other."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[PASSWORD_SCHEME] = {
            "type": "oauth2",
            "description": "Log in with a user's e-mail and password; the access token is "
            "then sent as a bearer token.",
            "flows": {"password": {"tokenUrl": TOKEN_URL, "scopes": {}}},
        }
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                security = operation.get("security")
                if security and {PASSWORD_SCHEME: []} not in security:
                    security.append({PASSWORD_SCHEME: []})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
