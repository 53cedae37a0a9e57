"""API clients: input and output models.

The secret appears in exactly two responses (create and rotate-secret) and nowhere else.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import MISSING, Field, Strict

from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import InputModel, Omittable, OutputModel
from crm_api.kit.types import SearchTerm

ClientName = Annotated[
    str, Field(min_length=1, max_length=200, examples=["Storefront (shop.example.com)"])
]
RoleName = Annotated[str, Field(min_length=1, max_length=64, examples=["partner"])]
RoleList = Annotated[
    list[RoleName],
    Field(
        min_length=1,
        max_length=20,
        description="Names of existing roles (see the roles API); the client's permissions.",
        examples=[["partner"]],
    ),
]

#: At most a week: a grace period is for rolling a secret out, not for keeping two.
MAX_GRACE_S = 7 * 86_400


class ApiClientCreate(InputModel):
    name: ClientName
    roles: RoleList
    org_unit_id: uuid.UUID | None = Field(
        default=None,
        description="The org unit the client's records belong to (org-scoped grants use it).",
    )

    model_config = {
        "json_schema_extra": {"examples": [{"name": "Storefront", "roles": ["partner"]}]}
    }


class ApiClientUpdate(InputModel):
    """Only the fields sent change. ``roles`` replaces the whole list; ``active: false``
    stops every token the client holds, ``true`` lets it ask for new ones."""

    name: Omittable[ClientName] = MISSING
    roles: Omittable[RoleList] = MISSING
    active: Omittable[Annotated[bool, Strict()]] = MISSING

    model_config = {"json_schema_extra": {"examples": [{"roles": ["partner", "marketer"]}]}}


class RotateSecret(InputModel):
    grace_period_s: Annotated[int, Strict()] = Field(
        default=0,
        ge=0,
        le=MAX_GRACE_S,
        description="Seconds the previous secret keeps working (0: it stops at once).",
        examples=[3600],
    )


class ApiClient(OutputModel):
    id: uuid.UUID
    client_id: str = Field(examples=["cli_3f9c0a6d1b2e4f5a6b7c8d9e"])
    name: str
    user_id: uuid.UUID = Field(
        description="The client's service account: owner of the records it creates and "
        "actor of its audit events."
    )
    roles: list[str]
    org_unit_id: uuid.UUID | None
    active: bool
    last_used_at: datetime | None = Field(description="Last successful token request.")
    previous_secret_expires_at: datetime | None = Field(
        description="While set and in the future, the secret replaced by the last rotation "
        "still works."
    )
    created_at: datetime
    updated_at: datetime
    version: int


class ApiClientWithSecret(ApiClient):
    client_secret: str = Field(
        description="Shown once, never again: store it now. Only a hash is kept."
    )


class ApiClientSort(StrEnum):
    created_at = "created_at"
    name = "name"


class ApiClientListQuery(ListQuery):
    sort: str = sort_field(ApiClientSort, "-created_at")
    q: SearchTerm | None = Field(
        default=None,
        description="Substring of the name or the client_id.",
    )
    active: bool | None = Field(default=None, description="Only active (or inactive) clients.")
