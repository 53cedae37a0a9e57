"""Contacts: the people at a customer. Request and response models."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import MISSING, Field, Strict

from crm_api.authz.masking import AllowMasked
from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import InputModel, Omittable, OutputModel
from crm_api.kit.types import Email, Phone, SearchTerm, UtcDatetime


class ContactSort(StrEnum):
    created_at = "created_at"
    updated_at = "updated_at"
    name = "name"


ContactName = Annotated[str, Field(min_length=1, max_length=200, examples=["王芳"])]
Str200 = Annotated[str, Field(max_length=200)]
Notes = Annotated[str, Field(max_length=10_000)]
IsPrimary = Annotated[
    bool,
    Strict(),  # JSON true/false only: "yes" or 1 is a 422
    Field(
        description="The customer's main contact. At most one live contact per customer is "
        "primary: making this one primary demotes the previous one.",
    ),
]
Mobile = Annotated[
    Phone,
    Field(description="Personal mobile phone. Sensitive: masked without read_sensitive."),
    AllowMasked,  # a masked value sent back means "unchanged" (authz/masking.py)
]


class CustomerContactCreate(InputModel):
    """A contact created under ``/v1/customers/{customer_id}/contacts`` (the customer comes
    from the path)."""

    name: ContactName
    title: Str200 | None = Field(default=None, examples=["采购经理"])
    department: Str200 | None = Field(default=None, examples=["采购部"])
    phone: Phone | None = Field(default=None, description="Work phone.")
    mobile: Mobile | None = None
    email: Email | None = None
    is_primary: IsPrimary = False
    notes: Notes | None = None

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "王芳",
                    "title": "采购经理",
                    "phone": "+86 21 5555 0102",
                    "mobile": "+86 138 0013 8000",
                    "email": "wang.fang@mingyuan.example.cn",
                    "is_primary": True,
                }
            ]
        }
    }


class ContactCreate(CustomerContactCreate):
    customer_id: uuid.UUID = Field(
        description="The customer this person works for; it must be visible to you."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "customer_id": "5c3e2a1b-0d9f-4e8a-b7c6-1f2e3d4c5b6a",
                    "name": "王芳",
                    "title": "采购经理",
                    "email": "wang.fang@mingyuan.example.cn",
                    "is_primary": True,
                }
            ]
        }
    }


class ContactUpdate(InputModel):
    """Only the fields sent are changed; ``null`` clears an optional field. A contact
    cannot move to another customer (delete it and create it there)."""

    name: Omittable[ContactName] = MISSING
    title: Str200 | None = None
    department: Str200 | None = None
    phone: Phone | None = None
    mobile: Mobile | None = None
    email: Email | None = None
    is_primary: Omittable[IsPrimary] = MISSING
    notes: Notes | None = None

    model_config = {"json_schema_extra": {"examples": [{"title": "采购总监", "is_primary": True}]}}


#: Fields that may not be set to null by PATCH.
NOT_NULLABLE = frozenset({"name", "is_primary"})


class Contact(OutputModel):
    id: uuid.UUID
    customer_id: uuid.UUID
    name: str
    title: str | None
    department: str | None
    phone: str | None
    mobile: str | None = Field(description="Masked (`****8000`) without read_sensitive.")
    email: str | None
    is_primary: bool
    notes: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class CustomerContactListQuery(ListQuery):
    """Filters of a customer's own contact list (the customer comes from the path)."""

    sort: str = sort_field(ContactSort, "-created_at")
    q: SearchTerm | None = Field(
        default=None,
        description="Free text over name, e-mail and work phone (substring, any script, any"
        " case; `%` and `_` literal). Without `sort`, results come best first: the name"
        " equal to the term, then starting with it, then containing it, then a match in"
        " another field; newest first within each. An explicit `sort` wins.",
        examples=["王芳"],
    )
    email: Email | None = Field(
        default=None,
        description="Exact e-mail address, normalised as on write (so the domain part "
        "matches in any case).",
    )
    is_primary: bool | None = None
    created_after: UtcDatetime | None = None
    created_before: UtcDatetime | None = None
    updated_after: UtcDatetime | None = None
    updated_before: UtcDatetime | None = None
    deleted: bool = Field(
        default=False, description="List soft-deleted contacts (the trash) instead."
    )


class ContactListQuery(CustomerContactListQuery):
    customer_id: list[uuid.UUID] | None = Field(
        default=None, max_length=50, description="Contacts of any of these customers."
    )
