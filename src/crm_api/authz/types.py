"""The vocabulary of access control: principals, scopes and the granted access of a request."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum


class ScopeKind(StrEnum):
    """Which records a grant covers, narrowest first. ``created_by_self`` (the records the
    principal created, wherever they are now placed: a storefront's orders and customers)
    is not comparable with the others; it ranks lowest."""

    created_by_self = "created_by_self"
    own = "own"
    subordinates = "subordinates"
    org_unit = "org_unit"
    custom = "custom"
    org_subtree = "org_subtree"
    all = "all"


#: Widening order used to pick a user's widest scope across roles. ``custom`` is not
#: comparable with the org scopes; several custom grants are merged, and a custom grant
#: beside an org-scope grant is combined with it (see :func:`crm_api.authz.scope.merge`).
SCOPE_RANK = {
    ScopeKind.created_by_self: 0,
    ScopeKind.own: 1,
    ScopeKind.subordinates: 2,
    ScopeKind.org_unit: 3,
    ScopeKind.custom: 4,
    ScopeKind.org_subtree: 5,
    ScopeKind.all: 6,
}


class Action(StrEnum):
    read = "read"
    create = "create"
    update = "update"
    delete = "delete"
    export = "export"
    assign = "assign"
    read_sensitive = "read_sensitive"
    purge = "purge"
    manage = "manage"


class PrincipalKind(StrEnum):
    user = "user"
    api_client = "api_client"
    system = "system"


@dataclass(frozen=True, slots=True)
class Scope:
    """The records one request may touch. ``kinds`` holds every granted scope kind (a user
    with several roles gets their union); ``unit_ids`` the org units of ``custom`` grants."""

    kinds: frozenset[ScopeKind]
    unit_ids: frozenset[uuid.UUID] = field(default_factory=frozenset)

    @property
    def is_all(self) -> bool:
        return ScopeKind.all in self.kinds

    @property
    def widest(self) -> ScopeKind:
        return max(self.kinds, key=SCOPE_RANK.__getitem__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. Built from a verified token plus cached user data: no database
    round trip per request."""

    kind: PrincipalKind
    id: uuid.UUID
    name: str
    roles: frozenset[str]
    org_unit_id: uuid.UUID | None = None
    #: Materialized path of ``org_unit_id`` (``/root/…/unit/``).
    org_path: str | None = None
    #: The user's own manager path (``/top/…/self/``); subordinates' paths extend it.
    manager_path: str | None = None
    #: For personal access tokens: the subset of the user's grants the token may use,
    #: as ``{(resource, action)}``; ``None`` means the user's full permissions.
    token_permissions: frozenset[tuple[str, str]] | None = None
    token_id: str | None = None

    @property
    def audit_key(self) -> str:
        return f"{self.kind.value}:{self.id}"


SYSTEM_PRINCIPAL_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")

SYSTEM = Principal(
    kind=PrincipalKind.system,
    id=SYSTEM_PRINCIPAL_ID,
    name="system",
    roles=frozenset({"admin"}),
)


@dataclass(frozen=True, slots=True)
class Access:
    """What the permission dependency hands to a handler: the caller, and the scope they
    hold for this resource and action. Services and repositories take it as a whole, so an
    unscoped query cannot be written by accident."""

    principal: Principal
    resource: str
    action: str
    scope: Scope
    #: Whether the caller may see the resource's sensitive fields unmasked on *every*
    #: record ``scope`` reaches (its ``read_sensitive`` scope contains ``scope``).
    sensitive: bool = False
    #: The caller's ``read_sensitive`` scope on the resource (``None``: not granted): where
    #: sensitive fields may be shown when ``sensitive`` is false, decided per record.
    sensitive_scope: Scope | None = None
