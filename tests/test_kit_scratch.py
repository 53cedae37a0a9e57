"""A resource declared only here — a tiny owned table created by this module — gets the
whole conformance suite (tests/test_conformance.py) by being declared with the kit; and
deliberately broken variants of its endpoints make those checks fail: the tests of the
tests.

The variants, each mounted at a path of its own over the same table:

- ``unscoped``: reads start from the unscoped base statement (forged ``ScopedSelect``);
- ``unmasked``: responses are built as if the caller held ``read_sensitive``;
- ``leaky``: an internal column the public schema does not declare reaches the response.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import Field
from sqlalchemy import String, Text, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from crm_api.authz.dependencies import optional, require
from crm_api.authz.types import Access, Action
from crm_api.config import Settings
from crm_api.db.base import Base, IdMixin, SoftDeleteMixin, TimestampMixin, VersionMixin
from crm_api.db.session import ReadConnection, WriteSession
from crm_api.kit import lifecycle
from crm_api.kit import resource as kit
from crm_api.kit.concurrency import IfMatch, RequireIfMatch
from crm_api.kit.idempotency import IdempotencyKeyHeader, idempotent
from crm_api.kit.pagination import ListQuery
from crm_api.kit.resource import OwnerScoped, Resource, Samples, ScopedSelect
from crm_api.kit.responses import json_response, with_etag
from crm_api.kit.routing import query_model
from crm_api.kit.schemas import InputModel, OutputModel
from crm_api.main import create_app
from crm_api.user import service as users
from test_conformance import (
    CHECKS,
    Subject,
    check_masking,
    check_outsider_sees_nothing,
    check_subtree_visibility,
)

NAME = "scratch_notes"


# --- the resource: table, model, schemas ----------------------------------------------------
class ScratchBase(DeclarativeBase):
    """Not the app's metadata: the table exists only while this module runs."""

    type_annotation_map = Base.type_annotation_map


class Note(IdMixin, TimestampMixin, VersionMixin, SoftDeleteMixin, ScratchBase):
    __tablename__ = NAME

    title: Mapped[str] = mapped_column(String(200))
    secret: Mapped[str | None] = mapped_column(String(64))
    #: Internal: never part of a response.
    internal: Mapped[str] = mapped_column(Text, server_default="internal")
    owner_id: Mapped[uuid.UUID]
    org_unit_id: Mapped[uuid.UUID | None]


DDL = f"""CREATE TABLE {NAME} (
    id uuid PRIMARY KEY, title varchar(200) NOT NULL, secret varchar(64),
    internal text NOT NULL DEFAULT 'internal', owner_id uuid NOT NULL, org_unit_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz, version integer NOT NULL DEFAULT 1)"""


class NoteSort(StrEnum):
    created_at = "created_at"
    title = "title"


class NoteOut(OutputModel):
    id: uuid.UUID
    title: str
    secret: str | None
    owner_id: uuid.UUID
    org_unit_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class NoteCreate(InputModel):
    title: Annotated[str, Field(min_length=1, max_length=200)]
    secret: Annotated[str, Field(max_length=64)] | None = None
    owner_id: uuid.UUID | None = None
    org_unit_id: uuid.UUID | None = None


class NoteUpdate(InputModel):
    title: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    secret: Annotated[str, Field(max_length=64)] | None = None


class NoteListQuery(ListQuery):
    deleted: bool = False
    q: Annotated[str, Field(min_length=1, max_length=100)] | None = None


def declare(path: str) -> Resource:
    return Resource(
        name=NAME,
        label="note",
        model=Note,
        schema=NoteOut,
        scoping=OwnerScoped(),
        sorts=NoteSort,
        not_found_code="note_not_found",
        sensitive=("secret",),
        grant_group="none",
        samples=Samples(
            path=path,
            create=lambda refs: {
                "title": "草稿 note",
                "secret": "S-0042-7781-XYZ",
                "owner_id": refs["owner_id"],
            },
            patch={"title": "changed"},
            wrong_type={"title": 42},
            search="草稿",
        ),
    )


# --- explicit endpoints, sharing the kit's plumbing -------------------------------------------
Read = Annotated[Access, require(NAME, Action.read)]
Create = Annotated[Access, require(NAME, Action.create)]
Update = Annotated[Access, require(NAME, Action.update)]
Delete = Annotated[Access, require(NAME, Action.delete)]
Assign = Annotated[Access | None, optional(NAME, Action.assign)]


def make_router(R: Resource, flaw: str | None = None) -> APIRouter:
    assert R.samples is not None
    router = APIRouter(prefix=R.samples.path.removeprefix("/v1"))

    def scoped(access: Access, deleted: bool = False) -> ScopedSelect:
        if flaw == "unscoped":  # the broken variant: no scope at all
            return ScopedSelect(R._trash if deleted else R._live)
        stmt = kit.scoped(R, access, deleted=deleted)
        if flaw == "leaky":  # the broken variant: an undeclared column selected
            return ScopedSelect(stmt.add_columns(R.table.c.internal))
        return stmt

    def seen_by(access: Access) -> Access:
        # the broken variant: everybody is shown sensitive values
        return replace(access, sensitive=True) if flaw == "unmasked" else access

    @router.get("")
    async def list_notes(
        access: Read,
        conn: ReadConnection,
        query: Annotated[NoteListQuery, query_model(NoteListQuery)],
    ) -> Response:
        stmt = kit.narrow(
            scoped(access, query.deleted),
            R.table.c.title.contains(query.q, autoescape=True) if query.q else None,
        )
        page = await kit.fetch_page(conn, R, seen_by(access), stmt, query.page(NoteSort))
        return json_response(page)

    @router.post("", status_code=201)
    async def create_note(
        request: Request,
        body: NoteCreate,
        access: Create,
        assign: Assign,
        session: WriteSession,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response:
        async def produce() -> Response:
            values, placement = await lifecycle.prepare_create(
                session, R, access, assign, body.model_dump(), users
            )
            assert placement is not None
            row = await lifecycle.insert(session, R, seen_by(access), values, placement)
            return with_etag(row, 201, f"{R.samples.path}/{row['id']}")  # type: ignore[union-attr]

        return await idempotent(request, session, access.principal, idempotency_key, body, produce)

    @router.get("/{note_id}")
    async def get_note(note_id: uuid.UUID, access: Read, conn: ReadConnection) -> Response:
        row = await kit.get_row(conn, R, seen_by(access), scoped(access), note_id)
        if row is None:
            raise R.not_found(note_id)
        return with_etag(row)

    @router.patch("/{note_id}")
    async def update_note(
        note_id: uuid.UUID,
        body: NoteUpdate,
        access: Update,
        assign: Assign,
        session: WriteSession,
        strict: RequireIfMatch,
        if_match: IfMatch = None,
    ) -> Response:
        locked = await lifecycle.lock_or_404(
            session, R, access, note_id, if_match=if_match, require_if_match=strict
        )
        before, changes = await lifecycle.prepare_update(
            session,
            R,
            access,
            assign,
            locked,
            body.model_dump(exclude_unset=True),
            not_nullable={"title"},
            users=users,
        )
        return with_etag(
            await lifecycle.save_changes(session, R, seen_by(access), locked, before, changes)
        )

    @router.delete("/{note_id}", status_code=204)
    async def delete_note(
        note_id: uuid.UUID,
        access: Delete,
        session: WriteSession,
        strict: RequireIfMatch,
        if_match: IfMatch = None,
    ) -> Response:
        await lifecycle.soft_delete(session, R, access, note_id, if_match, require_if_match=strict)
        return Response(status_code=204)

    @router.post("/{note_id}/restore")
    async def restore_note(note_id: uuid.UUID, access: Delete, session: WriteSession) -> Response:
        return with_etag(await lifecycle.restore(session, R, seen_by(access), note_id))

    return router


SOUND = declare("/v1/scratch_notes")
BROKEN = {flaw: declare(f"/v1/scratch_notes_{flaw}") for flaw in ("unscoped", "unmasked", "leaky")}


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def scratch_app(settings: Settings, database_url: str) -> AsyncIterator[FastAPI]:
    """An app of its own (the shared one keeps its committed OpenAPI document), with the
    scratch routers mounted and the scratch table created; both gone afterwards."""
    from sqlalchemy.ext.asyncio import create_async_engine

    eng = create_async_engine(database_url)
    async with eng.begin() as conn:
        await conn.execute(text(f"DROP TABLE IF EXISTS {NAME}"))
        await conn.execute(text(DDL))
    application = create_app(settings, database_url)
    application.include_router(make_router(SOUND), prefix="/v1")
    for flaw, resource in BROKEN.items():
        application.include_router(make_router(resource, flaw), prefix="/v1")
    try:
        async with application.router.lifespan_context(application):
            yield application
    finally:
        async with eng.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {NAME}"))
        await eng.dispose()


@pytest.fixture
async def granted(engine: AsyncEngine, scratch_app: FastAPI) -> FastAPI:
    """The built-in sales roles get the scratch resource as they get every business one."""
    rows = [("sales_rep", a, "own") for a in ("read", "create", "update", "delete")] + [
        ("sales_manager", a, "org_subtree")
        for a in ("read", "create", "update", "delete", "assign", "read_sensitive")
    ]
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {NAME}"))
        await conn.execute(
            text(
                "INSERT INTO authz_rules (id, ptype, v0, v1, v2, v3, v4, v5) VALUES "
                "(gen_random_uuid(), 'p', :role, :res, :act, :scope, '', '')"
            ),
            [{"role": r, "res": NAME, "act": a, "scope": s} for r, a, s in rows],
        )
        await conn.execute(text("UPDATE authz_state SET version = version + 1 WHERE id = 1"))
    await scratch_app.state.policy.load(engine)
    return scratch_app


# --- the scratch resource conforms ---------------------------------------------------------------
@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
async def test_a_resource_declared_in_the_tests_conforms(granted, engine, check):
    await check(Subject(granted, engine, SOUND))


# --- ... and broken variants of it do not: the tests of the tests --------------------------------
Check = Callable[[Subject], Awaitable[None]]
#: (variant, check, what the failure must be about: not any failure, e.g. a 500, counts)
FAILS: list[tuple[str, Check, str]] = [
    ("unscoped", check_outsider_sees_nothing, r"assert '[0-9a-f-]{36}' not in \{"),
    ("unscoped", check_subtree_visibility, r"assert '[0-9a-f-]{36}' not in \{"),
    ("unmasked", check_masking, r"\{'secret': 'S-0042-7781-XYZ'\} == \{'secret': '\*\*\*\*-XYZ'\}"),
    ("leaky", check_outsider_sees_nothing, r"Extra items in the left set:\s+'internal'"),
    ("leaky", check_masking, r"Extra items in the left set:\s+'internal'"),
]


@pytest.mark.parametrize(
    ("flaw", "check", "why"),
    FAILS,
    ids=[f"{f}-{c.__name__.removeprefix('check_')}" for f, c, _ in FAILS],
)
async def test_a_broken_variant_fails_the_check(granted, engine, flaw, check, why):
    with pytest.raises(AssertionError, match=why):
        await check(Subject(granted, engine, BROKEN[flaw]))


def test_a_forged_scoped_select_is_the_only_way_around_the_scope() -> None:
    """What the type says: the kit's readers take a ScopedSelect, which only the kit (or a
    visible ``ScopedSelect(...)`` cast, as the broken variant does) produces."""
    import inspect

    for fn in (kit.fetch_page, kit.get_row, kit.lock):
        annotation = inspect.signature(fn).parameters["stmt"].annotation
        assert annotation == "ScopedSelect", (fn.__name__, annotation)
