from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import MISSING, Field, SecretStr

from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import InputModel, Omittable, OutputModel
from crm_api.kit.types import Email, Phone, SearchTerm
from crm_api.role.schemas import RoleName


class UserKind(StrEnum):
    person = "person"
    service = "service"


class UserSort(StrEnum):
    created_at = "created_at"
    display_name = "display_name"
    email = "email"


DisplayName = Annotated[str, Field(min_length=1, max_length=200, examples=["张伟 Zhang Wei"])]
Roles = Annotated[
    list[RoleName],
    Field(
        max_length=20,
        description="Role names (see /v1/roles). Changing them needs `users:assign`.",
        examples=[["sales_rep"]],
    ),
]
Password = Annotated[
    SecretStr,
    Field(
        min_length=1,
        max_length=256,
        description="At least 10 characters, with a letter and "
        "a digit, not containing the e-mail's name; stored as an argon2id hash.",
    ),
]


class UserCreate(InputModel):
    email: Email
    display_name: DisplayName
    phone: Phone | None = None
    org_unit_id: uuid.UUID | None = Field(default=None, description="An active org unit.")
    manager_id: uuid.UUID | None = Field(
        default=None, description="Whom the user reports to (an active user)."
    )
    roles: Roles = Field(default_factory=list)
    password: Password | None = Field(
        default=None, description="Omit for an account that cannot log in with a password yet."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "email": "zhang.wei@example.cn",
                    "display_name": "张伟 Zhang Wei",
                    "org_unit_id": "1b9e0f4c-22aa-4d0e-b7c1-5e2f3a4b6c7d",
                    "roles": ["sales_rep"],
                    "password": "correct-horse-42",
                }
            ]
        }
    }


class UserUpdate(InputModel):
    """Only the fields sent are changed. A new password (or org unit, manager or roles) takes
    effect at once; a new password also ends every session of the user."""

    email: Omittable[Email] = MISSING
    display_name: Omittable[DisplayName] = MISSING
    phone: Phone | None = None
    org_unit_id: uuid.UUID | None = None
    manager_id: uuid.UUID | None = None
    roles: Omittable[Roles] = MISSING
    password: Omittable[Password] = MISSING


#: Fields that may not be set to null by PATCH.
NOT_NULLABLE = frozenset({"email", "display_name", "roles", "password"})


class User(OutputModel):
    id: uuid.UUID
    email: str
    display_name: str
    phone: str | None
    kind: UserKind = Field(description="`service`: the account behind an API client.")
    org_unit_id: uuid.UUID | None
    manager_id: uuid.UUID | None
    roles: list[str]
    active: bool
    created_at: datetime
    updated_at: datetime
    version: int


class UserListQuery(ListQuery):
    sort: str = sort_field(UserSort, "-created_at")
    q: SearchTerm | None = Field(
        default=None,
        description="Substring of the e-mail or display name.",
    )
    org_unit_id: list[uuid.UUID] | None = Field(default=None, max_length=50)
    manager_id: uuid.UUID | None = Field(default=None, description="Direct reports of this user.")
    role: RoleName | None = Field(default=None, description="Users holding this role.")
    active: bool | None = Field(default=None, description="Omit for both.")
    kind: UserKind = Field(
        default=UserKind.person,
        description="People by default; `service` lists the accounts behind API clients.",
    )
