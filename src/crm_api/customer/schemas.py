from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import MISSING, Field, Strict, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import InputModel, NoNul, Omittable, OutputModel
from crm_api.kit.types import (
    CustomFields,
    Email,
    Phone,
    SearchTerm,
    Tag,
    Tags,
    UtcDatetime,
    Website,
)


class CustomerType(StrEnum):
    company = "company"
    individual = "individual"


class LifecycleStage(StrEnum):
    lead = "lead"
    prospect = "prospect"
    customer = "customer"
    churned = "churned"


class Grade(StrEnum):
    A = "A"
    B = "B"
    C = "C"
    D = "D"


class OwnershipType(StrEnum):
    state_owned = "state_owned"
    private = "private"
    foreign = "foreign"
    joint_venture = "joint_venture"
    collective = "collective"
    individual = "individual"
    other = "other"


class CompanySize(StrEnum):
    s1_10 = "1-10"
    s11_50 = "11-50"
    s51_200 = "51-200"
    s201_1000 = "201-1000"
    s1001_5000 = "1001-5000"
    s5000_plus = "5000+"


class Source(StrEnum):
    web = "web"
    referral = "referral"
    partner = "partner"
    event = "event"
    campaign = "campaign"
    cold_call = "cold_call"
    storefront = "storefront"
    import_ = "import"
    other = "other"


class CustomerSort(StrEnum):
    created_at = "created_at"
    updated_at = "updated_at"
    name = "name"


Name = Annotated[str, Field(min_length=1, max_length=200, examples=["上海明远贸易有限公司"])]
CreditLevel = Annotated[
    int, Strict(), Field(ge=1, le=5, description="1 (lowest) … 5 (highest).", examples=[4])
]
Str100 = Annotated[str, Field(max_length=100)]
Str200 = Annotated[str, Field(max_length=200)]
Str64 = Annotated[str, Field(min_length=1, max_length=64)]
Notes = Annotated[str, Field(max_length=10_000)]
ExternalRef = Annotated[
    str,
    # stripped here too, not only by InputModel: the upsert's path parameter is the same
    # key as a body's (``ws1 `` in a URL is ``ws1``; a blank ref is a 422)
    StringConstraints(strip_whitespace=True),
    Field(
        min_length=1,
        max_length=200,
        description="Your system's id for this customer; unique.",
        examples=["shop-cust-10042"],
    ),
    NoNul,
]


class CustomerCreate(InputModel):
    name: Name
    type: CustomerType = CustomerType.company
    lifecycle_stage: LifecycleStage = LifecycleStage.lead
    grade: Grade | None = None
    credit_level: CreditLevel | None = None
    industry: Str100 | None = Field(default=None, examples=["制造业"])
    region: Str100 | None = Field(default=None, examples=["华东"])
    address: Annotated[str, Field(max_length=500)] | None = None
    phone: Phone | None = Field(
        default=None,
        description="Unique among live customers by its digits (a natural key of upserts).",
    )
    email: Email | None = Field(
        default=None,
        description="Unique among live customers, in any case (a natural key of upserts).",
    )
    website: Website | None = None
    bank_name: Str200 | None = None
    bank_account: Str64 | None = Field(default=None, description="Sensitive.")
    tax_number: Str64 | None = Field(
        default=None, description="Sensitive. Unique among live customers."
    )
    ownership_type: OwnershipType | None = None
    size: CompanySize | None = None
    source: Source | None = None
    tags: Tags = Field(default_factory=list)
    custom_fields: CustomFields = Field(default_factory=dict)
    owner_id: uuid.UUID | None = Field(
        default=None,
        description="Defaults to the caller. Another user needs the `assign` permission.",
    )
    org_unit_id: uuid.UUID | None = Field(
        default=None, description="Defaults to the owner's org unit; needs `assign` to set."
    )
    external_ref: ExternalRef | None = None
    notes: Notes | None = None

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "上海明远贸易有限公司",
                    "type": "company",
                    "lifecycle_stage": "prospect",
                    "grade": "B",
                    "industry": "制造业",
                    "region": "华东",
                    "phone": "+86 21 5555 0101",
                    "email": "info@mingyuan.example.cn",
                    "tags": ["vip"],
                    "external_ref": "shop-cust-10042",
                }
            ]
        }
    }


class CustomerUpdate(InputModel):
    """Only the fields sent are changed; ``null`` clears an optional field. The fields
    without ``null`` in their schema (name, type, lifecycle_stage, tags, custom_fields,
    owner_id) may be omitted but not cleared."""

    name: Omittable[Name] = MISSING
    type: Omittable[CustomerType] = MISSING
    lifecycle_stage: Omittable[LifecycleStage] = MISSING
    grade: Grade | None = None
    credit_level: CreditLevel | None = None
    industry: Str100 | None = None
    region: Str100 | None = None
    address: Annotated[str, Field(max_length=500)] | None = None
    phone: Phone | None = None
    email: Email | None = None
    website: Website | None = None
    bank_name: Str200 | None = None
    bank_account: Str64 | None = None
    tax_number: Str64 | None = None
    ownership_type: OwnershipType | None = None
    size: CompanySize | None = None
    source: Source | None = None
    tags: Omittable[Tags] = MISSING
    custom_fields: Omittable[CustomFields] = MISSING
    owner_id: Omittable[uuid.UUID] = MISSING
    org_unit_id: uuid.UUID | None = None
    external_ref: ExternalRef | None = None
    notes: Notes | None = None

    model_config = {
        "json_schema_extra": {"examples": [{"lifecycle_stage": "customer", "grade": "A"}]}
    }


#: Fields that may not be set to null by PATCH.
NOT_NULLABLE = frozenset({"name", "type", "lifecycle_stage", "tags", "custom_fields", "owner_id"})


class Customer(OutputModel):
    id: uuid.UUID
    name: str
    type: CustomerType
    lifecycle_stage: LifecycleStage
    grade: Grade | None
    credit_level: int | None
    industry: str | None
    region: str | None
    address: str | None
    phone: str | None
    email: str | None
    website: str | None
    bank_name: str | None
    bank_account: str | None = Field(description="Masked (`****1234`) without read_sensitive.")
    tax_number: str | None = Field(description="Masked without read_sensitive.")
    ownership_type: OwnershipType | None
    size: CompanySize | None
    source: Source | None
    tags: list[str]
    custom_fields: dict[str, Any]
    owner_id: uuid.UUID
    org_unit_id: uuid.UUID | None
    external_ref: str | None
    notes: str | None
    created_by: uuid.UUID | None = Field(
        description="Who created the customer: a user, or an API client's service account "
        "(null for customers created before this was recorded). What the `created_by_self` "
        "data scope is judged on."
    )
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class CustomerListQuery(ListQuery):
    sort: str = sort_field(CustomerSort, "-created_at")
    q: SearchTerm | None = Field(
        default=None,
        description="Free text over name, phone, e-mail and contact names (substring, any"
        " script, any case; `%` and `_` literal). Without `sort`, results come best first:"
        " the name equal to the term, then starting with it, then containing it, then a"
        " match in another field or a contact's name; newest first within each. An"
        " explicit `sort` wins.",
        examples=["华信"],
    )
    type: list[CustomerType] | None = None
    lifecycle_stage: list[LifecycleStage] | None = None
    grade: list[Grade] | None = None
    region: list[Str100] | None = Field(default=None, max_length=50)
    industry: list[Str100] | None = Field(default=None, max_length=50)
    source: list[Source] | None = None
    owner_id: list[uuid.UUID] | None = Field(default=None, max_length=50)
    org_unit_id: list[uuid.UUID] | None = Field(default=None, max_length=50)
    tag: list[Tag] | None = Field(
        default=None, max_length=20, description="Customers carrying all of these tags."
    )
    external_ref: ExternalRef | None = None
    created_after: UtcDatetime | None = None
    created_before: UtcDatetime | None = None
    updated_after: UtcDatetime | None = None
    updated_before: UtcDatetime | None = None
    deleted: bool = Field(
        default=False, description="List soft-deleted customers (the trash) instead."
    )


class CustomerTransfer(InputModel):
    """Hand one user's customers to another (a rep leaves, a territory changes hands)."""

    from_user_id: uuid.UUID = Field(description="The current owner (may be deactivated).")
    to_user_id: uuid.UUID = Field(
        description="The new owner: an active user inside your `assign` scope."
    )
    customer_ids: list[uuid.UUID] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Only these of `from_user_id`'s customers; omit for all of them.",
    )
    include_contacts: Annotated[bool, Strict()] = Field(
        default=True,
        description="Contacts have no owner of their own: they are visible through their "
        "customer, so they always follow it. With true the response also counts them.",
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "from_user_id": "0b8f1d7e-6a55-4c1e-9f4e-3d2a1b0c9e8f",
                    "to_user_id": "5c3e2a1b-0d9f-4e8a-b7c6-1f2e3d4c5b6a",
                }
            ]
        }
    }


class CustomerTransferOne(InputModel):
    to_user_id: uuid.UUID = Field(
        description="The new owner: an active user inside your `assign` scope."
    )


class TransferResult(OutputModel):
    transferred: int = Field(description="Customers that changed hands.")
    contacts: int | None = Field(
        description="Live contacts that followed their customers (with `include_contacts`)."
    )


# --- upsert by natural key --------------------------------------------------------------------
class CustomerUpsertFields(InputModel):
    """A customer's fields as an upsert sets them: on create, what is left out takes the
    defaults of `POST /v1/customers`; on update, only the fields sent change (what is left
    out is kept, `null` clears an optional field)."""

    name: Name
    type: Omittable[CustomerType] = MISSING
    lifecycle_stage: Omittable[LifecycleStage] = MISSING
    grade: Grade | None = None
    credit_level: CreditLevel | None = None
    industry: Str100 | None = None
    region: Str100 | None = None
    address: Annotated[str, Field(max_length=500)] | None = None
    phone: Phone | None = Field(
        default=None,
        description="Unique among live customers by its digits (a natural key of upserts).",
    )
    email: Email | None = Field(
        default=None,
        description="Unique among live customers, in any case (a natural key of upserts).",
    )
    website: Website | None = None
    bank_name: Str200 | None = None
    bank_account: Str64 | None = Field(default=None, description="Sensitive.")
    tax_number: Str64 | None = Field(
        default=None, description="Sensitive. Unique among live customers."
    )
    ownership_type: OwnershipType | None = None
    size: CompanySize | None = None
    source: Source | None = None
    tags: Omittable[Tags] = MISSING
    custom_fields: Omittable[CustomFields] = MISSING
    owner_id: Omittable[uuid.UUID] = Field(
        default=MISSING,
        description="Defaults to the caller on create. Another user needs `assign`.",
    )
    org_unit_id: uuid.UUID | None = Field(
        default=None, description="Defaults to the owner's org unit; needs `assign` to set."
    )
    notes: Notes | None = None


class CustomerUpsert(CustomerUpsertFields):
    """A customer identified by its natural keys: `external_ref`, the e-mail (trimmed, any
    case), the phone (its digits: `+86 138-0013-8000` and `0086 13800138000` are one
    key), tried in that order. The first a customer holds finds it (however it was
    written) and it is updated with the fields sent; none is held: one is created.
    Retries and concurrent requests for one new key create exactly one customer. Found by
    e-mail or phone with another `external_ref`: 409 `customer_duplicate`."""

    external_ref: ExternalRef | None = None

    @model_validator(mode="after")
    def _has_a_key(self) -> CustomerUpsert:
        if self.external_ref is None and self.email is None and self.phone is None:
            raise PydanticCustomError(
                "natural_key_missing", "send external_ref, email or phone to identify the customer"
            )
        return self

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "email": "li.wei@example.cn",
                    "name": "李伟 Li Wei",
                    "type": "individual",
                    "phone": "+86 138 0013 8000",
                    "address": "上海市浦东新区世纪大道 100 号",
                    "source": "storefront",
                }
            ]
        }
    }


class CustomerPut(CustomerUpsertFields):
    """`PUT /v1/customers/by-external-ref/{ref}`: the customer whose `external_ref` is in
    the path, created (201) or updated with the fields sent (200)."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "上海明远贸易有限公司",
                    "type": "company",
                    "email": "info@mingyuan.example.cn",
                    "phone": "+86 21 5555 0101",
                    "region": "华东",
                    "tags": ["erp"],
                }
            ]
        }
    }


#: Fields an upsert may not set to null.
UPSERT_NOT_NULLABLE = frozenset({"type", "lifecycle_stage", "tags", "custom_fields", "owner_id"})
