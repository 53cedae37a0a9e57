"""The last active administrator stays one (issue #7, item 4): no path takes the ``admin``
role from, or deactivates, the last active person holding it — 409 ``last_admin`` — and two
administrators demoting each other at once cannot leave none."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from conftest import problem
from crm_api.authz.state import settle
from crm_api.user.repository import ADMINS_LOCK
from factories.api_clients import create_api_client
from factories.identity import make_org_unit, make_user
from test_delegation import make_role


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def active_admins(engine) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM users u JOIN authz_rules g ON g.ptype = 'g'"
                        " AND g.v1 = 'admin' AND g.v0 = 'user:' || u.id WHERE u.active"
                    )
                )
            ).scalar_one()
        )


async def roles_of(engine, user) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT v1 FROM authz_rules WHERE ptype = 'g' AND v0 = :s ORDER BY v1"),
            {"s": f"user:{user['id']}"},
        )
        return list(rows.scalars())


@pytest.fixture
async def unit(engine):
    return await make_org_unit(engine, "Head office", kind="group")


async def test_last_admin_cannot_drop_their_own_admin_role(client_for, engine, unit):
    """The issue's case: ``PATCH /v1/users/<self> {"roles": ["executive"]}``."""
    admin = await make_user(engine, roles=("admin",), org_unit=unit)
    as_admin = await client_for(admin)
    body = problem(
        await as_admin.patch(f"/v1/users/{admin['id']}", json={"roles": ["executive"]}),
        409,
        "last_admin",
    )
    assert body["user_id"] == str(admin["id"])
    assert await roles_of(engine, admin) == ["admin"]
    # other changes to the last admin, keeping the role, are fine
    kept = await as_admin.patch(f"/v1/users/{admin['id']}", json={"roles": ["admin", "executive"]})
    assert kept.status_code == 200, kept.text
    # with a second active administrator, stepping down is allowed
    await make_user(engine, roles=("admin",), org_unit=unit)
    stepped = await as_admin.patch(f"/v1/users/{admin['id']}", json={"roles": ["executive"]})
    assert stepped.status_code == 200, stepped.text
    assert await active_admins(engine) == 1


async def test_last_admin_cannot_be_deactivated(client_for, engine, unit):
    await make_user(engine, roles=("admin",), org_unit=unit)  # set aside below
    admin = await make_user(engine, roles=("admin",), org_unit=unit)
    as_admin = await client_for(admin)
    async with engine.begin() as conn:  # an inactive administrator does not count
        await conn.execute(
            text("UPDATE users SET active = false WHERE id <> :id"), {"id": admin["id"]}
        )
    await make_role(engine, "hr", ("users", "read", "all"), ("users", "update", "all"))
    hr = await make_user(engine, roles=("hr",), org_unit=unit)
    as_hr = await client_for(hr)
    problem(await as_hr.post(f"/v1/users/{admin['id']}/deactivate"), 409, "last_admin")
    problem(
        await as_admin.post(f"/v1/users/{admin['id']}/deactivate"), 409, "cannot_deactivate_self"
    )
    assert await active_admins(engine) == 1
    # an API client holding admin is no administrator a person can sign in as
    await create_api_client(as_admin, name="ops bot", roles=["admin"])
    problem(await as_hr.post(f"/v1/users/{admin['id']}/deactivate"), 409, "last_admin")
    # a second active administrator: now it may go (at an administrator's hand: hr may not
    # switch off someone holding more than it could give, test_delegation_targets.py)
    second = await make_user(engine, roles=("admin",), org_unit=unit)
    problem(await as_hr.post(f"/v1/users/{admin['id']}/deactivate"), 403, "grant_not_allowed")
    done = await (await client_for(second)).post(f"/v1/users/{admin['id']}/deactivate")
    assert done.status_code == 200, done.text
    assert await active_admins(engine) == 1
    # the admin role of an inactive user can be taken (it is not an active holder)
    taken = await (await client_for(second)).patch(
        f"/v1/users/{admin['id']}", json={"roles": ["executive"]}
    )
    assert taken.status_code == 200, taken.text


async def test_admin_role_keeps_its_grant_and_cannot_be_deleted(client_for, engine, unit):
    admin = await make_user(engine, roles=("admin",), org_unit=unit)
    as_admin = await client_for(admin)
    roles = (await as_admin.get("/v1/roles", params={"limit": 200})).json()["data"]
    role = next(r for r in roles if r["name"] == "admin")
    grants = (await as_admin.get(f"/v1/roles/{role['id']}/grants")).json()["data"]
    full = next(g for g in grants if (g["resource"], g["action"], g["scope"]) == ("*", "*", "all"))
    problem(
        await as_admin.delete(f"/v1/roles/{role['id']}/grants/{full['id']}"), 409, "grant_protected"
    )
    problem(await as_admin.delete(f"/v1/roles/{role['id']}"), 409)


async def test_two_admins_demoting_each_other_at_once_leave_one(client_for, engine, unit):
    """Both requests are held at the last-admin lock (each has already locked its target
    row and read its roles), then released together: one wins, the other sees the result."""
    first = await make_user(engine, roles=("admin",), org_unit=unit)
    second = await make_user(engine, roles=("admin",), org_unit=unit)
    as_first, as_second = await client_for(first), await client_for(second)
    key = ADMINS_LOCK
    classid, objid = key >> 32, key & 0xFFFFFFFF
    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        await holder.commit()
        requests = [
            asyncio.create_task(
                as_first.patch(f"/v1/users/{second['id']}", json={"roles": ["executive"]})
            ),
            asyncio.create_task(
                as_second.patch(f"/v1/users/{first['id']}", json={"roles": ["executive"]})
            ),
        ]
        waiting = 0
        for _ in range(1200):  # up to 60 s on a busy machine; normally a few ms
            async with engine.connect() as conn:
                waiting = int(
                    (
                        await conn.execute(
                            text(
                                "SELECT count(*) FROM pg_locks"
                                " WHERE locktype = 'advisory' AND NOT granted"
                                " AND database = (SELECT oid FROM pg_database"
                                "                 WHERE datname = current_database())"
                                " AND classid = :c AND objid = :o"
                            ),
                            {"c": classid, "o": objid},
                        )
                    ).scalar_one()
                )
            if waiting == 2 or any(t.done() for t in requests):
                break
            await asyncio.sleep(0.05)
        await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        await holder.commit()
        responses = await asyncio.gather(*requests)
    assert waiting == 2, [r.text for r in responses if r.status_code != 200]
    assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
    problem(next(r for r in responses if r.status_code == 409), 409, "last_admin")
    assert await active_admins(engine) == 1
