from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from crm_api.authz.types import ScopeKind
from crm_api.kit.schemas import OutputModel

ResourceName = Field(
    min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_]*$", examples=["customers"]
)


class ExplainQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: uuid.UUID = Field(description="Whose access to explain.")
    resource: str = ResourceName
    action: str = Field(
        default="read",
        min_length=1,
        max_length=100,
        pattern=r"^[a-z][a-z0-9_]*$",
        examples=["update"],
    )
    record_id: uuid.UUID | None = Field(
        default=None,
        description="Also check this record (customers, contacts, users, org_units, audit_events).",
    )


class VisibilityQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: uuid.UUID
    resource: str = ResourceName
    action: str = Field(default="read", min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_]*$")


class ScopeOut(OutputModel):
    kinds: list[ScopeKind] = Field(description="Every scope kind held (their union applies).")
    widest: ScopeKind
    org_unit_ids: list[uuid.UUID] = Field(description="The units of `custom` grants.")
    description: str


class Via(OutputModel):
    role: str
    grant_id: uuid.UUID
    resource: str
    action: str
    scope: ScopeKind
    org_unit_ids: list[uuid.UUID]


class RecordCheck(OutputModel):
    id: uuid.UUID
    visible: bool
    reason: str
    matched_scopes: list[ScopeKind] = Field(
        description="The held scope kinds that cover the record."
    )


class Explanation(OutputModel):
    user_id: uuid.UUID
    user_active: bool = Field(description="An inactive user can do nothing, whatever the grants.")
    roles: list[str]
    resource: str
    action: str
    allowed: bool
    scope: ScopeOut | None
    via: list[Via] = Field(description="The grants that give the permission.")
    record: RecordCheck | None = None


class Visibility(OutputModel):
    user_id: uuid.UUID
    resource: str
    action: str
    allowed: bool
    scope: ScopeOut | None
    predicate: str | None = Field(
        description="The SQL WHERE clause the user's queries get, values inlined."
    )
    visible_count: int = Field(description="How many records it covers now.")
