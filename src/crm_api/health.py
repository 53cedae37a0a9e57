"""Liveness, readiness and metrics: open routes, outside /v1."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from crm_api.authz.dependencies import public
from crm_api.db.engine import Database
from crm_api.errors import problem_response
from crm_api.kit.responses import json_response

router = APIRouter(tags=["health"], dependencies=[public()])


class Health(BaseModel):
    status: str
    database: str | None = None
    migration: str | None = None


@router.get("/healthz", operation_id="health_live", summary="Process is up", response_model=Health)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz", operation_id="health_ready",
    summary="Database reachable and migrations at head", response_model=Health,
    responses={503: {"description": "Not ready", "content": {"application/problem+json": {}}}},
)
async def readyz(request: Request) -> Response:
    db: Database = request.app.state.db
    head: str | None = request.app.state.migration_head
    try:
        current = (
            await db.reads.reader.execute(text("SELECT version_num FROM alembic_version"))
        ).scalar_one_or_none()
    except Exception:
        return problem_response(503, "database_unavailable", "The database is not reachable.")
    if head is not None and current != head:
        return problem_response(
            503, "migrations_pending", f"Database is at {current}, code expects {head}.",
        )
    return json_response({"status": "ok", "database": "ok", "migration": current})


@router.get(
    "/metrics", operation_id="metrics", summary="Prometheus metrics", include_in_schema=True,
    response_class=Response, responses={200: {"content": {"text/plain": {}}}},
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
