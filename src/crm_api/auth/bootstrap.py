"""The first administrator: what ``crm-api create-admin`` does, outside any request.

Idempotent by e-mail: for an existing person it only makes sure they hold ``admin`` (it
never changes their password), so the command is safe in deploy scripts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from crm_api.audit import service as audit
from crm_api.auth.passwords import hash_password
from crm_api.authz.state import bump_policy_version
from crm_api.authz.types import SYSTEM
from crm_api.models import AuthzRule, OrgUnit, User

ADMIN_ROLE = "admin"


class BootstrapError(Exception):
    """The e-mail belongs to a service account (an API client), not a person."""


@dataclass(frozen=True, slots=True)
class AdminResult:
    user_id: uuid.UUID
    created: bool
    role_added: bool
    org_unit_id: uuid.UUID | None


async def ensure_admin(url: str, email: str, password: str, name: str | None) -> AdminResult:
    """Create an active person with role ``admin`` at the root org unit (if there is one),
    or give an existing person ``admin``. The caller has checked the password policy."""
    engine = create_async_engine(url)
    try:
        maker = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        async with maker() as session, session.begin():
            existing = (
                await session.execute(
                    select(User).where(func.lower(User.email) == email.lower()).with_for_update()
                )
            ).scalar_one_or_none()
            created = existing is None
            if existing is not None:
                if existing.kind != "person":
                    raise BootstrapError(f"{email} belongs to an API client")
                user_id, org_unit_id = existing.id, existing.org_unit_id
            else:
                org_unit_id = (
                    await session.execute(
                        select(OrgUnit.id)
                        .where(OrgUnit.parent_id.is_(None), OrgUnit.active.is_(True))
                        .order_by(OrgUnit.created_at, OrgUnit.id)
                        .limit(1)
                    )
                ).scalar_one_or_none()
                user_id = uuid.uuid4()
                session.add(
                    User(
                        id=user_id,
                        email=email,
                        display_name=name or email.split("@")[0],
                        org_unit_id=org_unit_id,
                        manager_path=f"/{user_id}/",
                        kind="person",
                        password_hash=hash_password(password),
                        active=True,
                    )
                )
                await session.flush()
                audit.record(
                    session,
                    SYSTEM,
                    action="create",
                    resource_type="users",
                    resource_id=user_id,
                    changes=audit.diff(
                        None,
                        {
                            "email": email,
                            "org_unit_id": org_unit_id,
                            "kind": "person",
                            "active": True,
                        },
                    ),
                    owner_id=user_id,
                    org_unit_id=org_unit_id,
                )
            roles_before = sorted(
                (
                    await session.execute(
                        select(AuthzRule.v1).where(
                            AuthzRule.ptype == "g", AuthzRule.v0 == f"user:{user_id}"
                        )
                    )
                ).scalars()
            )
            role_added = (
                await session.execute(
                    insert(AuthzRule)
                    .values(
                        id=uuid.uuid4(),
                        ptype="g",
                        v0=f"user:{user_id}",
                        v1=ADMIN_ROLE,
                        v2="",
                        v3="",
                        v4="",
                        v5="",
                    )
                    .on_conflict_do_nothing()
                    .returning(AuthzRule.id)
                )
            ).scalar_one_or_none() is not None
            if role_added:
                audit.record(
                    session,
                    SYSTEM,
                    action="update",
                    resource_type="users",
                    resource_id=user_id,
                    changes={
                        "roles": {
                            "before": roles_before,
                            "after": sorted([*roles_before, ADMIN_ROLE]),
                        }
                    },
                    owner_id=user_id,
                    org_unit_id=org_unit_id,
                )
            if created or role_added:
                await bump_policy_version(session)
        return AdminResult(user_id, created, role_added, org_unit_id)
    finally:
        await engine.dispose()
