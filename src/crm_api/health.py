"""Liveness, readiness and metrics: open routes, outside /v1.

Exposure is configurable (``CRM_METRICS``, ``CRM_METRICS_TOKEN``): ``/metrics`` can be
public, require the metrics token, or be off; in production ``/readyz`` names the migration
revision only to a caller presenting that token.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from crm_api.authz.dependencies import public
from crm_api.config import Settings
from crm_api.db.engine import Database
from crm_api.errors import problem_response
from crm_api.kit.responses import json_response
from crm_api.kit.routing import StrictRoute
from crm_api.warmup import WarmUp

router = APIRouter(tags=["health"], dependencies=[public()], route_class=StrictRoute)


class Health(BaseModel):
    status: str
    database: str | None = None
    migration: str | None = None


def _has_metrics_token(request: Request, settings: Settings) -> bool:
    if settings.metrics_token is None:
        return False
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_token.get_secret_value()
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), expected.encode()
    )


@router.get("/healthz", operation_id="health_live", summary="Process is up", response_model=Health)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    operation_id="health_ready",
    summary="Database reachable and migrations at head",
    response_model=Health,
    description="Opens a fresh database connection (so a server refusing new connections "
    "is not ready) within `CRM_READINESS_TIMEOUT_S`. 503 `database_unavailable` when the "
    "database does not answer, `migrations_pending` when its schema is not the code's, "
    "`starting` while a worker that started without its database has not loaded its "
    "access policy yet (the API answers 503 meanwhile). In production the migration "
    "revision is shown only with `Authorization: Bearer <CRM_METRICS_TOKEN>`.",
    responses={503: {"description": "Not ready", "content": {"application/problem+json": {}}}},
)
async def readyz(request: Request) -> Response:
    db: Database = request.app.state.db
    settings: Settings = request.app.state.settings
    head: str | None = request.app.state.migration_head
    warm_up: WarmUp = request.app.state.warm_up
    try:
        current = await db.reads.probe(
            "SELECT version_num FROM alembic_version", settings.readiness_timeout_s
        )
    except Exception:
        return problem_response(
            503,
            "database_unavailable",
            "The database is not reachable."
            if warm_up.ready
            else "The database is not reachable; this worker has not loaded its access "
            "policy yet and answers 503 to the API until it has.",
            headers={"Retry-After": "1"},
        )
    detail = not settings.is_production or _has_metrics_token(request, settings)
    if head is not None and current != head:
        return problem_response(
            503,
            "migrations_pending",
            f"Database is at {current}, code expects {head}."
            if detail
            else "Database migrations are not at the expected revision.",
            headers={"Retry-After": "5"},
        )
    if not warm_up.ready:
        # reachable now, but the worker's background load has not succeeded yet (it
        # retries within seconds; crm_api.warmup)
        why = f" Last attempt: {warm_up.last_error}" if detail and warm_up.last_error else ""
        return problem_response(
            503,
            "starting",
            "This worker is still loading its access policy, revoked sessions and system "
            f"settings from the database.{why}",
            headers={"Retry-After": "1"},
        )
    body = {"status": "ok", "database": "ok"}
    if detail:
        body["migration"] = current
    return json_response(body)


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    include_in_schema=True,
    description="Public, behind `Authorization: Bearer <CRM_METRICS_TOKEN>`, or off "
    "(404), as `CRM_METRICS` says (default: public outside production, token in production).",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}},
        401: {
            "description": "Metrics token missing or wrong",
            "content": {"application/problem+json": {}},
        },
        404: {"description": "Metrics are off", "content": {"application/problem+json": {}}},
    },
)
async def metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    mode = settings.metrics_mode
    if mode == "off":
        return problem_response(404, "not_found", "No such resource or route.")
    if mode == "token" and not _has_metrics_token(request, settings):
        return problem_response(
            401,
            "unauthorized",
            "The metrics token is required.",
            headers={"WWW-Authenticate": 'Bearer realm="crm-api-metrics"'},
        )
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
