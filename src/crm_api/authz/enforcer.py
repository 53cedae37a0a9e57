"""The Casbin policy engine, loaded from ``authz_rules`` and kept fresh by polling
``authz_state.version`` (a background task per worker, never per request).

Decisions are memoized per (subject, resource, action) and dropped whenever the policy
version moves, so a request costs a dict lookup; Casbin itself answers each question once.

The same poll carries ``authz_state.sessions_version`` for the revoked-session set
(``auth/sessions.py``) and ``system_settings.version`` for the system settings
(``system_settings/store.py``): one statement per tick for all three; a moved session or
settings version wakes its listeners without reloading the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import casbin
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_api.authz.scope import merge
from crm_api.authz.types import SCOPE_RANK, Principal, PrincipalKind, Scope, ScopeKind
from crm_api.errors import RETRY_AFTER_S, ServiceUnavailable

logger = logging.getLogger("crm_api.authz")

_SCOPES_WIDEST_FIRST = sorted(ScopeKind, key=SCOPE_RANK.__getitem__, reverse=True)


def subject_of(principal: Principal) -> str:
    if principal.kind is PrincipalKind.api_client:
        return f"client:{principal.id}"
    return f"user:{principal.id}"


def load_model() -> casbin.Model:
    model = casbin.Model()
    model.load_model_from_text(
        resources.files("crm_api.authz").joinpath("model.conf").read_text(encoding="utf-8")
    )
    return model


class PolicyEngine:
    def __init__(self) -> None:
        self.enforcer = casbin.Enforcer(load_model())
        self.enforcer.enable_auto_save(False)
        self.version: int = -1
        self._cache: dict[tuple[str, str, str], Scope | None] = {}
        self._task: asyncio.Task[None] | None = None
        self.listeners: list[Any] = []
        #: How many times :meth:`load` completed (see :meth:`refresh_if_changed`).
        self._loads = 0
        #: ``authz_state.sessions_version`` last seen; -1 until the first poll.
        self.sessions_version: int = -1
        #: Awaited with the engine when ``sessions_version`` moves (a session was revoked).
        self.session_listeners: list[Callable[[AsyncEngine], Awaitable[None]]] = []
        #: ``system_settings.version`` last seen; -1 until the first poll.
        self.settings_version: int = -1
        #: Awaited with the engine when ``settings_version`` moves (an admin changed them).
        self.settings_listeners: list[Callable[[AsyncEngine], Awaitable[None]]] = []

    # --- loading -------------------------------------------------------------------
    async def load(self, engine: AsyncEngine) -> None:
        from crm_api.models.authz_rule import AuthzRule, AuthzState

        async with engine.connect() as conn:
            version = (await conn.execute(select(AuthzState.version))).scalar_one_or_none()
            rows = (
                await conn.execute(
                    select(
                        AuthzRule.ptype,
                        AuthzRule.v0,
                        AuthzRule.v1,
                        AuthzRule.v2,
                        AuthzRule.v3,
                        AuthzRule.v4,
                    )
                )
            ).all()
        enforcer = casbin.Enforcer(load_model())
        enforcer.enable_auto_save(False)
        p_rules = [[r.v0, r.v1, r.v2, r.v3, r.v4] for r in rows if r.ptype == "p"]
        g_rules = [[r.v0, r.v1] for r in rows if r.ptype == "g"]
        if p_rules:
            enforcer.add_policies(p_rules)
        if g_rules:
            enforcer.add_grouping_policies(g_rules)
        self.enforcer = enforcer
        self._cache = {}
        self.version = version if version is not None else 0
        self._loads += 1
        for listener in self.listeners:
            listener()

    async def current_versions(self, engine: AsyncEngine) -> tuple[int, int, int]:
        """``(policy version, sessions version, settings version)`` in one statement (0 for
        a row that is missing)."""
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT a.version, a.sessions_version,"
                        " coalesce((SELECT s.version FROM system_settings s WHERE s.id = 1), 0)"
                        " FROM (SELECT 1) AS one"
                        " LEFT JOIN authz_state a ON a.id = 1"
                    )
                )
            ).one()
        return int(row[0] or 0), int(row[1] or 0), int(row[2])

    async def current_version(self, engine: AsyncEngine) -> int:
        return (await self.current_versions(engine))[0]

    async def refresh_if_changed(self, engine: AsyncEngine) -> bool:
        # A load that completes while this poll's read is in flight (the worker that made
        # the change reloads at once) is at least as new as what the poll read: comparing
        # the poll's older version with it would reload again, for nothing, and empty the
        # principal cache with it.
        loads_before = self._loads
        version, sessions_version, settings_version = await self.current_versions(engine)
        if sessions_version != self.sessions_version:
            for listener in self.session_listeners:
                await listener(engine)
            self.sessions_version = sessions_version
        if settings_version != self.settings_version:
            for listener in self.settings_listeners:
                await listener(engine)
            self.settings_version = settings_version
        if version != self.version and self._loads == loads_before:
            await self.load(engine)
            return True
        return False

    def start_polling(self, engine: AsyncEngine, interval_s: float) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.refresh_if_changed(engine)
                except Exception:  # keep serving with the last good policy
                    logger.warning("policy refresh failed", exc_info=True)

        self._task = asyncio.create_task(loop(), name="authz-policy-poll")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- decisions -------------------------------------------------------------------
    def scope_for(self, principal: Principal, resource: str, action: str) -> Scope | None:
        """The widest scope ``principal`` holds for ``action`` on ``resource``; ``None``
        when no role grants it (→ 403)."""
        if principal.kind is PrincipalKind.system:
            return Scope(frozenset({ScopeKind.all}))
        if (
            principal.token_permissions is not None
            and (resource, action) not in principal.token_permissions
            and (resource, "*") not in principal.token_permissions
        ):
            return None
        subject = subject_of(principal)
        key = (subject, resource, action)
        try:
            return self._cache[key]
        except KeyError:
            pass
        scope = self._decide(subject, resource, action)
        self._cache[key] = scope
        return scope

    def _decide(self, subject: str, resource: str, action: str) -> Scope | None:
        if self._loads == 0:
            # Never loaded (a worker started without its database): an empty enforcer
            # would deny everything as 403, as if the role lacked the grant. Default deny
            # holds either way; the honest answer is that the policy is not available.
            raise ServiceUnavailable(
                "The access policy is not loaded yet; retry.",
                code="database_unavailable",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        granted: list[tuple[ScopeKind, list[uuid.UUID]]] = []
        for kind in _SCOPES_WIDEST_FIRST:
            if self.enforcer.enforce(subject, resource, action, kind.value):
                if kind is ScopeKind.all:
                    return Scope(frozenset({ScopeKind.all}))
                granted.append(
                    (
                        kind,
                        self._custom_units(subject, resource, action)
                        if kind is ScopeKind.custom
                        else [],
                    )
                )
        return merge(granted)

    def _custom_units(self, subject: str, resource: str, action: str) -> list[uuid.UUID]:
        roles = set(self.enforcer.get_implicit_roles_for_user(subject)) | {subject}
        units: list[uuid.UUID] = []
        for sub, obj, act, scope, raw in self.enforcer.get_policy():
            if (
                sub in roles
                and obj in (resource, "*")
                and act in (action, "*")
                and scope == ScopeKind.custom.value
            ):
                for part in raw.split("|"):
                    with contextlib.suppress(ValueError):
                        units.append(uuid.UUID(part))
        return units

    def roles_of(self, principal: Principal) -> list[str]:
        if principal.kind is PrincipalKind.system:
            return ["admin"]
        return sorted(r for r in self.enforcer.get_implicit_roles_for_user(subject_of(principal)))
