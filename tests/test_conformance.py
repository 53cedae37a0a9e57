"""Conformance tests generated from the resource registry (crm_api/resources.py): every
registered resource gets every check below the moment it is registered.

The checks are plain functions of a :class:`Subject` (an app and a declared resource), so
tests/test_kit_scratch.py runs them on a resource declared only in the test suite and on
deliberately broken variants of it, and asserts that they fail there (the tests of the
tests).

Who is who: ``sales_rep`` holds create/read/update/delete over ``own`` on every business
resource, ``sales_manager`` the same plus ``read_sensitive`` over ``org_subtree``; the
administrator writes the records (owned by a rep) through the API.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import count_rows, problem, token_for
from crm_api.kit.filtering import mask
from crm_api.kit.resource import ParentScoped, Resource, Samples, Unscoped
from crm_api.resources import REGISTRY
from factories.identity import make_org_unit, make_user

JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Subject:
    """What a check runs against: the app serving the resource, and its declaration."""

    app: FastAPI
    engine: AsyncEngine
    resource: Resource

    @property
    def samples(self) -> Samples:
        assert self.resource.samples is not None, f"{self.resource.name} declares no samples"
        return self.resource.samples

    @property
    def path(self) -> str:
        return self.samples.path

    def url(self, record: dict[str, Any], suffix: str = "") -> str:
        return f"{self.path}/{record['id']}{suffix}"


@asynccontextmanager
async def as_user(subject: Subject, user: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    await subject.app.state.policy.load(subject.engine)
    transport = httpx.ASGITransport(app=subject.app, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {token_for(subject.app, user)}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as c:
        yield c


@dataclass
class World:
    """An org tree with an administrator, two reps in sibling teams, a manager above the
    first and one in another branch."""

    admin: dict[str, Any]
    owner: dict[str, Any]
    outsider: dict[str, Any]
    manager: dict[str, Any]
    other_manager: dict[str, Any]


async def make_world(engine: AsyncEngine) -> World:
    root = await make_org_unit(engine, "Root", kind="group")
    branch = await make_org_unit(engine, "Branch", parent=root, kind="branch")
    team = await make_org_unit(engine, "Team", parent=branch)
    sibling = await make_org_unit(engine, "Sibling team", parent=branch)
    elsewhere = await make_org_unit(engine, "Elsewhere", parent=root, kind="branch")
    return World(
        admin=await make_user(engine, roles=("admin",), org_unit=root),
        owner=await make_user(engine, roles=("sales_rep",), org_unit=team),
        outsider=await make_user(engine, roles=("sales_rep",), org_unit=sibling),
        manager=await make_user(engine, roles=("sales_manager",), org_unit=branch),
        other_manager=await make_user(engine, roles=("sales_manager",), org_unit=elsewhere),
    )


async def sample_refs(
    subject: Subject, admin: httpx.AsyncClient, owner: dict[str, Any]
) -> dict[str, str]:
    """What a sample body of ``subject`` refers to: its owner, a fresh unique string, and
    the records it needs made first (its parent, ``Samples.requires``), owned by
    ``owner``."""
    refs = {"owner_id": str(owner["id"]), "unique": uuid.uuid4().hex}
    scoping = subject.resource.scoping
    if isinstance(scoping, ParentScoped):
        parent, _ = await make_record(replace(subject, resource=scoping.parent), admin, owner)
        refs["parent_id"] = parent["id"]
    for ref, name in subject.samples.requires.items():
        made, _ = await make_record(replace(subject, resource=REGISTRY[name]), admin, owner)
        refs[ref] = made["id"]
    return refs


async def make_record(
    subject: Subject, admin: httpx.AsyncClient, owner: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A record owned by ``owner`` (through its parent for a child), created by the
    administrator: ``(response body, body sent)``."""
    sent = subject.samples.create(await sample_refs(subject, admin, owner))
    if subject.samples.created_by_owner:
        async with as_user(subject, owner) as own:
            response = await own.post(subject.path, json=sent)
    else:
        response = await admin.post(subject.path, json=sent)
    assert response.status_code == 201, response.text
    return response.json(), sent


def assert_whitelisted(subject: Subject, record: dict[str, Any]) -> None:
    """A record carries exactly the public schema's fields: no internal column, no flag."""
    assert set(record) == set(subject.resource.schema.model_fields), sorted(record)


async def ids_listed(client: httpx.AsyncClient, path: str, **params: Any) -> set[str]:
    response = await client.get(path, params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    return {r["id"] for r in response.json()["data"]}


# --- the checks --------------------------------------------------------------------------------
async def check_outsider_sees_nothing(subject: Subject) -> None:
    """``own`` scope: another rep reaches none of the record's operations (404, never 403 or
    the record), while its owner does (so the check cannot pass vacuously)."""
    w = await make_world(subject.engine)
    code = subject.resource.not_found_code
    async with (
        as_user(subject, w.admin) as admin,
        as_user(subject, w.owner) as owner,
        as_user(subject, w.outsider) as outsider,
    ):
        record, _ = await make_record(subject, admin, w.owner)
        url = subject.url(record)
        assert record["id"] in await ids_listed(owner, subject.path)
        owned = await owner.get(url)
        assert owned.status_code == 200, owned.text
        assert_whitelisted(subject, owned.json())
        assert record["id"] not in await ids_listed(outsider, subject.path)
        problem(await outsider.get(url), 404, code)
        if subject.samples.patch is not None:
            problem(await outsider.patch(url, json=subject.samples.patch), 404, code)
        problem(await outsider.delete(url), 404, code)
        if subject.samples.search is not None:
            q = subject.samples.search
            assert record["id"] in await ids_listed(owner, subject.path, q=q)
            assert record["id"] not in await ids_listed(outsider, subject.path, q=q)
        if not subject.resource.soft_delete:
            # no trash: the record is still there, and its owner still reaches it
            assert (await owner.get(url)).status_code == 200
            return
        # the trash, and restoring from it
        assert (await admin.delete(url)).status_code == 204
        assert record["id"] in await ids_listed(owner, subject.path, deleted="true")
        assert record["id"] not in await ids_listed(outsider, subject.path, deleted="true")
        problem(await outsider.post(subject.url(record, "/restore")), 404, code)
        restored = await owner.post(subject.url(record, "/restore"))
        assert restored.status_code == 200, restored.text
        assert_whitelisted(subject, restored.json())


async def check_subtree_visibility(subject: Subject) -> None:
    """``org_subtree``: a manager above the owner's unit sees the record; a manager of
    another branch does not."""
    w = await make_world(subject.engine)
    async with (
        as_user(subject, w.admin) as admin,
        as_user(subject, w.manager) as manager,
        as_user(subject, w.other_manager) as other,
    ):
        record, _ = await make_record(subject, admin, w.owner)
        url = subject.url(record)
        assert record["id"] in await ids_listed(manager, subject.path)
        seen = await manager.get(url)
        assert seen.status_code == 200, seen.text
        assert_whitelisted(subject, seen.json())
        assert record["id"] not in await ids_listed(other, subject.path)
        problem(await other.get(url), 404, subject.resource.not_found_code)


async def check_masking(subject: Subject) -> None:
    """Declared sensitive fields are masked for a caller without ``read_sensitive`` on every
    read and write response, and shown to one with it."""
    w = await make_world(subject.engine)
    sensitive = subject.resource.sensitive
    async with (
        as_user(subject, w.admin) as admin,
        as_user(subject, w.owner) as owner,
        as_user(subject, w.manager) as manager,
    ):
        record, sent = await make_record(subject, admin, w.owner)
        url = subject.url(record)
        clear = {f: sent[f] for f in sensitive}
        assert all(clear.values()), f"the sample of {subject.resource.name} lacks {sensitive}"
        masked = {f: mask(v) for f, v in clear.items()}
        listed = (await owner.get(subject.path, params={"limit": 200})).json()["data"]
        shown = [
            (await owner.get(url)).json(),
            next(r for r in listed if r["id"] == record["id"]),
            (await owner.patch(url, json=subject.samples.patch)).json(),
        ]
        for body in shown:
            assert_whitelisted(subject, body)
            assert {f: body[f] for f in sensitive} == masked, body
        seen = (await manager.get(url)).json()
        assert {f: seen[f] for f in sensitive} == clear, seen
        # and the masks were not written back
        assert {f: (await admin.get(url)).json()[f] for f in sensitive} == clear


async def check_pagination_over_ties(subject: Subject) -> None:
    """Every declared sort, both directions, walked two at a time over records whose sort
    values are all equal: each record exactly once (the id tie-break). A sort column a
    unique index keeps from tying (products' SKU) is walked over its distinct values."""
    w = await make_world(subject.engine)
    table = subject.resource.table.name
    async with as_user(subject, w.admin) as admin, as_user(subject, w.owner) as owner:
        ids = [(await make_record(subject, admin, w.owner))[0]["id"] for _ in range(5)]
        columns = list(subject.resource.sort_columns)
        for column in columns:
            try:
                async with subject.engine.begin() as conn:
                    await conn.execute(
                        text(
                            f"UPDATE {table} SET {column} = "
                            f"(SELECT {column} FROM {table} WHERE id = :first) WHERE id = ANY(:ids)"
                        ),
                        {"first": uuid.UUID(ids[0]), "ids": [uuid.UUID(i) for i in ids]},
                    )
            except IntegrityError as exc:
                assert getattr(exc.orig, "sqlstate", None) == "23505", exc  # unique_violation
        for key in columns:
            for sort in (key, f"-{key}"):
                seen: list[str] = []
                cursor: str | None = None
                for _ in range(10):
                    params: dict[str, Any] = {"limit": 2, "sort": sort}
                    if cursor:
                        params["cursor"] = cursor
                    page = (await owner.get(subject.path, params=params)).json()
                    seen += [r["id"] for r in page["data"]]
                    cursor = page["next_cursor"]
                    if not page["has_more"]:
                        break
                assert sorted(seen) == sorted(ids), (sort, seen)


async def check_if_match(subject: Subject) -> None:
    """A stale ``If-Match`` is a 412 on PATCH and DELETE and changes nothing; the current
    ETag is accepted and moves."""
    w = await make_world(subject.engine)
    async with as_user(subject, w.admin) as admin:
        record, _ = await make_record(subject, admin, w.owner)
        url = subject.url(record)
        got = await admin.get(url)
        etag = got.headers["etag"]
        stale = {"If-Match": '"999"'}
        problem(
            await admin.patch(url, json=subject.samples.patch, headers=stale),
            412,
            "version_mismatch",
        )
        if subject.samples.deletes:
            problem(await admin.delete(url, headers=stale), 412, "version_mismatch")
        assert (await admin.get(url)).json() == got.json()
        fresh = await admin.patch(url, json=subject.samples.patch, headers={"If-Match": etag})
        assert fresh.status_code == 200, fresh.text
        assert fresh.headers["etag"] != etag


async def check_if_match_required(subject: Subject) -> None:
    """With ``require_if_match`` in the settings the app was created with, a PATCH or DELETE
    without ``If-Match`` is a 428 and changes nothing; with it, it goes through."""
    w = await make_world(subject.engine)
    settings = subject.app.state.settings
    async with as_user(subject, w.admin) as admin:
        record, _ = await make_record(subject, admin, w.owner)
        url = subject.url(record)
        got = await admin.get(url)
        subject.app.state.settings = settings.model_copy(update={"require_if_match": True})
        try:
            problem(await admin.patch(url, json=subject.samples.patch), 428, "if_match_required")
            if subject.samples.deletes:
                problem(await admin.delete(url), 428, "if_match_required")
            assert (await admin.get(url)).json() == got.json()
            etag = {"If-Match": got.headers["etag"]}
            changed = await admin.patch(url, json=subject.samples.patch, headers=etag)
            assert changed.status_code == 200, changed.text
        finally:
            subject.app.state.settings = settings


async def check_idempotent_create(subject: Subject) -> None:
    """The same ``Idempotency-Key`` and body replays the first response (one record); the
    same key with another body is a 422 and writes nothing."""
    w = await make_world(subject.engine)
    table = subject.resource.table.name
    async with as_user(subject, w.admin) as admin:
        body = subject.samples.create(await sample_refs(subject, admin, w.owner))
        before = await count_rows(subject.engine, table)
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = await admin.post(subject.path, json=body, headers=key)
        assert first.status_code == 201, first.text
        again = await admin.post(subject.path, json=body, headers=key)
        assert again.status_code == 201 and again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == first.headers["location"]
        assert await count_rows(subject.engine, table) == before + 1
        other = {**body, **subject.samples.patch}
        problem(
            await admin.post(subject.path, json=other, headers=key), 422, "idempotency_key_reused"
        )
        assert await count_rows(subject.engine, table) == before + 1


async def check_bad_input(subject: Subject) -> None:
    """Unknown fields, wrong types, an oversized body, a bad cursor, sort or limit: a problem
    response, and nothing written."""
    w = await make_world(subject.engine)
    table = subject.resource.table.name
    tables = (table, "audit_events", "idempotency_keys")
    limit = subject.app.state.settings.max_body_bytes
    # the one who writes such records: the administrator, or the owner of their own
    writer = w.owner if subject.samples.created_by_owner else w.admin
    async with as_user(subject, writer) as admin:
        record, sent = await make_record(subject, admin, w.owner)
        url = subject.url(record)
        counts = [await count_rows(subject.engine, t) for t in tables]
        row = (await admin.get(url)).json()
        key = {"Idempotency-Key": uuid.uuid4().hex}
        wrong = subject.samples.wrong_type
        problem(
            await admin.post(subject.path, json={**sent, "bogus": 1}, headers=key),
            422,
            "validation_error",
        )
        problem(
            await admin.post(subject.path, json={**sent, **wrong}, headers=key),
            422,
            "validation_error",
        )
        problem(
            await admin.post(subject.path, json={**sent, "id": str(uuid.uuid4())}),
            422,
            "validation_error",
        )
        huge = orjson.dumps({**sent, "bogus": "x" * (limit + 10)})
        problem(
            await admin.post(subject.path, content=huge, headers=JSON), 413, "payload_too_large"
        )
        if subject.samples.patch is not None:
            problem(await admin.patch(url, json={"bogus": 1}), 422, "validation_error")
            problem(await admin.patch(url, json=wrong), 422, "validation_error")
            problem(await admin.patch(url, content=huge, headers=JSON), 413, "payload_too_large")
            problem(await admin.patch(url, content=b"{", headers=JSON), 400, "malformed_json")
        else:
            problem(
                await admin.post(subject.path, content=b"{", headers=JSON), 400, "malformed_json"
            )
        problem(
            await admin.get(subject.path, params={"cursor": "not-a-cursor!!"}),
            400,
            "invalid_cursor",
        )
        problem(await admin.get(subject.path, params={"sort": "colour"}), 422, "invalid_sort")
        for bad_limit in ("0", "201", "abc"):
            problem(
                await admin.get(subject.path, params={"limit": bad_limit}), 422, "validation_error"
            )
        problem(await admin.get(subject.path, params={"bogus": "1"}), 422, "validation_error")
        assert [await count_rows(subject.engine, t) for t in tables] == counts
        assert (await admin.get(url)).json() == row


async def check_every_write_is_audited(subject: Subject) -> None:
    """Create, update, delete and restore each leave one audit event of the resource, and
    no sensitive value appears in clear in the trail."""
    w = await make_world(subject.engine)
    async with as_user(subject, w.admin) as admin:
        record, sent = await make_record(subject, admin, w.owner)
        url = subject.url(record)
        assert (await admin.patch(url, json=subject.samples.patch)).status_code == 200
        assert (await admin.delete(url)).status_code == 204
        assert (await admin.post(subject.url(record, "/restore"))).status_code == 200
        async with subject.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT action, changes::text AS changes FROM audit_events "
                        "WHERE resource_type = :name AND resource_id = :id"
                    ),
                    {"name": subject.resource.name, "id": uuid.UUID(record["id"])},
                )
            ).all()
    assert sorted(r.action for r in rows) == ["create", "delete", "restore", "update"], rows
    for field in subject.resource.sensitive:
        assert all(sent[field] not in r.changes for r in rows), (field, rows)


def _holds(role: str, resource: str, action: str) -> bool:
    from crm_api.authz.defaults import DEFAULT_GRANTS

    return any(
        res in (resource, "*") and act in (action, "*") for res, act, _ in DEFAULT_GRANTS[role]
    )


async def check_reference_data(subject: Subject) -> None:
    """Reference data (``Unscoped``): every built-in role whose default grants hold ``read``
    sees every record, live and in the trash, whoever wrote it; a role without it gets 403
    (never the record); a role without ``update``/``delete`` cannot change one (403, and
    nothing changes)."""
    from crm_api.authz.defaults import BUILTIN_ROLES

    w = await make_world(subject.engine)
    name = subject.resource.name
    team = await make_org_unit(subject.engine, "Reference team")
    users = {r: await make_user(subject.engine, roles=(r,), org_unit=team) for r in BUILTIN_ROLES}
    readers = [r for r in BUILTIN_ROLES if _holds(r, name, "read")]
    assert readers and len(readers) < len(BUILTIN_ROLES), "the check must see both cases"
    async with as_user(subject, w.admin) as admin:
        record, _ = await make_record(subject, admin, w.owner)
        url = subject.url(record)
        shown = (await admin.get(url)).json()
        for role, user in users.items():
            async with as_user(subject, user) as client:
                if role in readers:
                    assert record["id"] in await ids_listed(client, subject.path), role
                    got = await client.get(url)
                    assert got.status_code == 200, (role, got.text)
                    assert_whitelisted(subject, got.json())
                else:
                    problem(await client.get(subject.path), 403)
                    problem(await client.get(url), 403)
                if not _holds(role, name, "update"):
                    problem(await client.patch(url, json=subject.samples.patch), 403)
                if subject.samples.deletes and not _holds(role, name, "delete"):
                    problem(await client.delete(url), 403)
        assert (await admin.get(url)).json() == shown, "a refused write changed the record"
        if not (subject.samples.deletes and subject.resource.soft_delete):
            return
        assert (await admin.delete(url)).status_code == 204
        for role in readers:
            async with as_user(subject, users[role]) as client:
                assert record["id"] in await ids_listed(client, subject.path, deleted="true")
                problem(await client.get(url), 404, subject.resource.not_found_code)
                if not _holds(role, name, "delete"):
                    problem(await client.post(subject.url(record, "/restore")), 403)
        assert (await admin.post(subject.url(record, "/restore"))).status_code == 200


#: The checks of owned (or parent-scoped) records: tests/test_kit_scratch.py runs them all on
#: its owned scratch resource.
CHECKS = [
    check_outsider_sees_nothing,
    check_subtree_visibility,
    check_masking,
    check_pagination_over_ties,
    check_if_match,
    check_if_match_required,
    check_idempotent_create,
    check_bad_input,
    check_every_write_is_audited,
]


#: Checks that only make sense for one kind of scoping: whatever a resource declares, they
#: run on the resources of that kind only.
ONLY_FOR: dict[Any, type] = {check_reference_data: Unscoped}
ALL_CHECKS = [check_reference_data, *CHECKS]


# --- generated over the registry -----------------------------------------------------------
def _applies(resource: Resource, check: Any) -> bool:
    only = ONLY_FOR.get(check)
    if only is not None and not isinstance(resource.scoping, only):
        return False
    declared = resource.samples.checks if resource.samples is not None else None
    return declared is None or check.__name__.removeprefix("check_") in declared


APPLICABLE = [
    pytest.param(name, check, id=f"{name}-{check.__name__.removeprefix('check_')}")
    for name, resource in REGISTRY.items()
    for check in ALL_CHECKS
    if _applies(resource, check)
]


@pytest.mark.parametrize(("name", "check"), APPLICABLE)
async def test_registered_resource_conforms(app, engine, name, check):
    await check(Subject(app, engine, REGISTRY[name]))


def test_declared_checks_exist():
    """A resource declaring which checks apply names real ones (a typo would skip one)."""
    names = {c.__name__.removeprefix("check_") for c in ALL_CHECKS}
    for resource in REGISTRY.values():
        declared = resource.samples.checks if resource.samples is not None else None
        assert declared is None or declared <= names, (resource.name, declared - names)


def test_every_registered_resource_declares_samples():
    for resource in REGISTRY.values():
        assert resource.samples is not None, resource.name


def test_only_the_kit_makes_a_scoped_select():
    """``ScopedSelect`` is a ``NewType``: mypy refuses a plain ``Select`` where the kit's
    readers want one, but a cast would pass. No source file but the kit's own casts."""
    from pathlib import Path

    import crm_api

    root = Path(crm_api.__file__).parent
    allowed = {root / "kit" / "resource.py"}
    casting = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p not in allowed and "ScopedSelect(" in p.read_text(encoding="utf-8")
    ]
    assert casting == []


_UNSCOPED_READ = """
from typing import Any

from sqlalchemy import select

from crm_api.authz.types import Access
from crm_api.kit import resource as kit
from crm_api.kit.pagination import PageParams
from crm_api.models.customer import Customer
from crm_api.resources import CUSTOMERS


async def unscoped(conn: kit.Executor, access: Access, params: PageParams) -> Any:
    return await kit.fetch_page(conn, CUSTOMERS, access, select(Customer.id), params)


async def scoped(conn: kit.Executor, access: Access, params: PageParams) -> Any:
    stmt = kit.narrow(kit.scoped(CUSTOMERS, access), Customer.name == "x")
    return await kit.fetch_page(conn, CUSTOMERS, access, stmt, params)
"""


def test_an_unscoped_read_does_not_type_check(tmp_path):
    """mypy (strict, the project's configuration) refuses a plain ``Select`` where the kit's
    readers want a ``ScopedSelect``, and accepts the kit's scoped, narrowed statement."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    snippet = tmp_path / "reads.py"
    snippet.write_text(_UNSCOPED_READ, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(root / "pyproject.toml"),
            str(snippet),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout
    assert 'incompatible type "Select[UUID]"; expected "ScopedSelect"' in errors[0], errors
    assert "reads.py:14:" in errors[0], errors  # the unscoped function, not the scoped one
