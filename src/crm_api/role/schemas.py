from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from crm_api.authz.types import ScopeKind
from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import InputModel, OutputModel
from crm_api.kit.types import SearchTerm

RoleName = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_]{1,63}$",
        min_length=2,
        max_length=64,
        description="Lower-case letters, digits and `_`, starting with a letter.",
        examples=["key_account_manager"],
    ),
]
Description = Annotated[str, Field(max_length=2000, examples=["Looks after the top 50 accounts."])]
Token = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^(\*|[a-z][a-z0-9_]*)$")]


class RoleSort(StrEnum):
    name = "name"
    created_at = "created_at"


class GrantSort(StrEnum):
    created_at = "created_at"
    resource = "resource"
    action = "action"


class RoleCreate(InputModel):
    name: RoleName
    description: Description | None = None


class RoleUpdate(InputModel):
    description: Description | None = None


class Role(OutputModel):
    id: uuid.UUID
    name: str
    description: str | None
    builtin: bool = Field(description="Shipped with the product; cannot be deleted.")
    created_at: datetime
    updated_at: datetime
    version: int


class RoleListQuery(ListQuery):
    sort: str = sort_field(RoleSort, "name")
    builtin: bool | None = None
    q: SearchTerm | None = Field(default=None, description="Substring of name or description.")


class GrantCreate(InputModel):
    resource: Token = Field(description="A resource name (`customers`, …) or `*`.")
    action: Token = Field(description="An action (`read`, `assign`, …) or `*`.")
    scope: ScopeKind
    org_unit_ids: list[uuid.UUID] | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The org units of a `custom` scope (required for it, refused otherwise).",
    )

    @model_validator(mode="after")
    def _units_only_for_custom(self) -> GrantCreate:
        if self.scope is ScopeKind.custom and not self.org_unit_ids:
            raise ValueError("org_unit_ids is required for scope 'custom'")
        if self.scope is not ScopeKind.custom and self.org_unit_ids is not None:
            raise ValueError("org_unit_ids is only allowed with scope 'custom'")
        return self

    model_config = {
        "json_schema_extra": {
            "examples": [{"resource": "customers", "action": "export", "scope": "org_subtree"}]
        }
    }


class Grant(OutputModel):
    id: uuid.UUID
    role: str
    resource: str
    action: str
    scope: ScopeKind
    org_unit_ids: list[uuid.UUID]
    created_at: datetime


class GrantListQuery(ListQuery):
    sort: str = sort_field(GrantSort, "created_at")
    resource: str | None = Field(default=None, max_length=100)
