"""Personal access tokens: what a caller sends and gets back."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, Strict, model_validator

from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import InputModel, OutputModel
from crm_api.kit.types import UtcDatetime


class TokenPermission(InputModel):
    """One ``(resource, action)`` a personal access token may use. ``*`` as the action
    means every action on that resource, so, like any other permission, the user must hold
    it: a role granting ``*`` there (admin's ``*`` on everything). Whoever holds only some
    actions lists them."""

    resource: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", examples=["customers"])
    action: str = Field(pattern=r"^(\*|[a-z][a-z0-9_]{0,63})$", examples=["read"])


class PersonalAccessTokenCreate(InputModel):
    name: str = Field(min_length=1, max_length=200, examples=["nightly export script"])
    permissions: list[TokenPermission] = Field(
        min_length=1,
        max_length=100,
        description="Each must be granted to you now (else 422); the token can do no more, "
        "and loses what your roles lose.",
    )
    expires_at: UtcDatetime | None = Field(
        default=None, description="When the token stops working (at most 10 years ahead)."
    )
    expires_in_days: Annotated[int, Strict()] | None = Field(
        default=None, ge=1, le=3650, description="Alternative to `expires_at`."
    )

    @model_validator(mode="after")
    def _one_expiry(self) -> PersonalAccessTokenCreate:
        if self.expires_at is not None and self.expires_in_days is not None:
            raise ValueError("give expires_at or expires_in_days, not both")
        return self

    model_config = {
        "json_schema_extra": {
            # _one_expiry, as a schema: not both given as non-null values.
            "not": {
                "required": ["expires_at", "expires_in_days"],
                "properties": {
                    "expires_at": {"not": {"type": "null"}},
                    "expires_in_days": {"not": {"type": "null"}},
                },
            },
            "examples": [
                {
                    "name": "nightly export",
                    "permissions": [{"resource": "customers", "action": "read"}],
                    "expires_in_days": 90,
                }
            ],
        }
    }


class TokenPermissionOut(OutputModel):
    resource: str
    action: str


class PersonalAccessToken(OutputModel):
    id: uuid.UUID
    name: str
    permissions: list[TokenPermissionOut]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(
        description="Recorded in batches, so it may lag real use by a few seconds."
    )
    revoked_at: datetime | None


class PersonalAccessTokenCreated(PersonalAccessToken):
    token: str = Field(description="Shown once, never again: store it now.")


class PersonalAccessTokenSort(StrEnum):
    created_at = "created_at"
    name = "name"


class PersonalAccessTokenListQuery(ListQuery):
    sort: str = sort_field(PersonalAccessTokenSort, "-created_at")
    include_revoked: bool = Field(default=False, description="Also list revoked tokens.")
