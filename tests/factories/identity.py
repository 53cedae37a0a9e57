"""Org units and users, inserted directly (these tests are about other things)."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def make_org_unit(
    engine: AsyncEngine, name: str = "Unit", parent: dict | None = None, kind: str = "team"
) -> dict:
    unit_id = uuid.uuid4()
    path = (parent["path"] if parent else "/") + f"{unit_id}/"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO org_units (id, name, kind, parent_id, path, depth, active, version) "
                "VALUES (:id, :name, :kind, :parent, :path, :depth, true, 1)"
            ),
            {
                "id": unit_id,
                "name": name,
                "kind": kind,
                "parent": parent["id"] if parent else None,
                "path": path,
                "depth": path.count("/") - 2,
            },
        )
    return {"id": unit_id, "name": name, "path": path}


async def make_user(
    engine: AsyncEngine,
    *,
    roles: tuple[str, ...] = ("sales_rep",),
    org_unit: dict | None = None,
    manager: dict | None = None,
    email: str | None = None,
    password_hash: str | None = None,
) -> dict:
    user_id = uuid.uuid4()
    manager_path = (manager["manager_path"] if manager else "/") + f"{user_id}/"
    email = email or f"user-{user_id.hex[:8]}@example.com"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (id, email, display_name, org_unit_id, manager_id, manager_path,"
                " password_hash, active, version) VALUES (:id, :email, :name, :unit, :manager,"
                " :mpath, :pw, true, 1)"
            ),
            {
                "id": user_id,
                "email": email,
                "name": email.split("@")[0],
                "unit": org_unit["id"] if org_unit else None,
                "manager": manager["id"] if manager else None,
                "mpath": manager_path,
                "pw": password_hash,
            },
        )
        for role in roles:
            await conn.execute(
                text(
                    "INSERT INTO authz_rules (id, ptype, v0, v1, v2, v3, v4, v5)"
                    " VALUES (gen_random_uuid(), 'g', :sub, :role, '', '', '', '')"
                ),
                {"sub": f"user:{user_id}", "role": role},
            )
        await conn.execute(text("UPDATE authz_state SET version = version + 1 WHERE id = 1"))
    return {
        "id": user_id,
        "email": email,
        "manager_path": manager_path,
        "org_unit_id": org_unit["id"] if org_unit else None,
        "roles": roles,
    }
