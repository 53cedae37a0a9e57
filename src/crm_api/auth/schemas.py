from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field

from crm_api.kit.schemas import InputModel, OutputModel


class TokenRequest(InputModel):
    """OAuth2 token request (RFC 6749), as form fields or JSON."""

    grant_type: Literal["password", "client_credentials", "refresh_token"]
    username: str | None = Field(default=None, max_length=320, examples=["rep@demo.crm"])
    password: str | None = Field(default=None, max_length=256)
    client_id: str | None = Field(default=None, max_length=64)
    client_secret: str | None = Field(default=None, max_length=256)
    refresh_token: str | None = Field(default=None, max_length=256)
    scope: str | None = Field(default=None, max_length=1000, description="Ignored.")


class TokenResponse(OutputModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str | None = Field(
        default=None, description="Single use; each refresh returns a new one."
    )


class RefreshRequest(InputModel):
    refresh_token: str = Field(min_length=1, max_length=256)


class Grant(OutputModel):
    resource: str
    action: str
    scope: str
    org_unit_ids: list[uuid.UUID] = Field(default_factory=list)
    role: str


class Me(OutputModel):
    id: uuid.UUID
    kind: str
    email: str | None
    display_name: str
    org_unit_id: uuid.UUID | None
    manager_id: uuid.UUID | None
    roles: list[str]
    permissions: list[Grant] = Field(
        description="Every grant held, through which role; the UI can shape itself from it."
    )
    token_permissions: list[list[str]] | None = Field(
        default=None, description="For a personal access token: the subset it may use."
    )
