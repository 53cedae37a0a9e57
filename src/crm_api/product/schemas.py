from __future__ import annotations

import math
import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import MISSING, AfterValidator, Field, StrictBool, StrictInt

from crm_api.kit.money import Amount, Currency, Rate
from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import InputModel, Omittable, OutputModel, holds_nul
from crm_api.kit.types import SearchTerm, UtcDatetime


class ProductSort(StrEnum):
    created_at = "created_at"
    updated_at = "updated_at"
    name = "name"
    sku = "sku"
    list_price = "list_price"


#: Limits of ``parameters``: what a product's data sheet needs, not a document store.
PARAMETERS_MAX_KEYS = 50
PARAMETERS_MAX_BYTES = 8192

Sku = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[^\s\x00-\x1f\x7f]+$",
        description="Stock-keeping unit: no spaces or control characters; unique among live "
        "products, ignoring letter case.",
        examples=["HP-LJ-M404DN"],
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=200, examples=["惠普 LaserJet Pro M404dn"])]
Str100 = Annotated[str, Field(min_length=1, max_length=100)]
Unit = Annotated[str, Field(min_length=1, max_length=20, examples=["台"])]
Description = Annotated[str, Field(max_length=10_000)]

ParameterName = Annotated[str, Field(min_length=1, max_length=64)]
ParameterText = Annotated[str, Field(max_length=500)]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


ParameterNumber = Annotated[float, AfterValidator(_finite)]
#: Strict types first: ``true`` stays a boolean and ``1`` an integer (no coercion).
ParameterScalar = StrictBool | StrictInt | ParameterNumber | ParameterText
ParameterValue = ParameterScalar | Annotated[list[ParameterScalar], Field(max_length=50)]


def _parameters(value: dict[str, Any]) -> dict[str, Any]:
    encoded = orjson.dumps(value)
    if len(encoded) > PARAMETERS_MAX_BYTES:
        raise ValueError(f"parameters must be at most {PARAMETERS_MAX_BYTES} bytes of JSON")
    if holds_nul(value):  # jsonb cannot hold U+0000
        raise ValueError("parameters may not hold NUL (U+0000) characters")
    return value


Parameters = Annotated[
    dict[ParameterName, ParameterValue],
    Field(
        max_length=PARAMETERS_MAX_KEYS,
        description=f"Technical parameters: name → string (≤500), number, boolean, or a list "
        f"(≤50) of those; at most {PARAMETERS_MAX_KEYS} names and "
        f"{PARAMETERS_MAX_BYTES} bytes of JSON.",
        examples=[{"打印速度(ppm)": 38, "双面打印": True, "接口": ["USB", "Ethernet"]}],
    ),
    AfterValidator(_parameters),
]

_CREATE_EXAMPLE: dict[str, Any] = {
    "sku": "HP-LJ-M404DN",
    "name": "惠普 LaserJet Pro M404dn 黑白激光打印机",
    "brand": "HP",
    "series": "LaserJet Pro",
    "category": "打印机",
    "unit": "台",
    "list_price": "2599.00",
    "currency": "CNY",
    "tax_rate": "0.13",
    "parameters": {"打印速度(ppm)": 38, "双面打印": True},
}


class ProductCreate(InputModel):
    sku: Sku
    name: Name
    brand: Str100 | None = Field(default=None, examples=["HP"])
    series: Str100 | None = Field(
        default=None, description="Product line within the brand.", examples=["LaserJet Pro"]
    )
    category: Str100 | None = Field(default=None, examples=["打印机"])
    unit: Unit | None = None
    list_price: Amount
    currency: Currency | None = Field(
        default=None,
        description="ISO 4217; defaults to the system setting `default_currency`.",
    )
    tax_rate: Rate = Decimal("0")
    parameters: Parameters = Field(default_factory=dict)
    description: Description | None = None
    active: StrictBool = True

    model_config = {"json_schema_extra": {"examples": [_CREATE_EXAMPLE]}}


class ProductUpdate(InputModel):
    """Only the fields sent change; ``null`` clears an optional field (brand, series,
    category, unit, description); the others may be omitted but not cleared."""

    sku: Omittable[Sku] = MISSING
    name: Omittable[Name] = MISSING
    brand: Str100 | None = None
    series: Str100 | None = None
    category: Str100 | None = None
    unit: Unit | None = None
    list_price: Omittable[Amount] = MISSING
    currency: Omittable[Currency] = MISSING
    tax_rate: Omittable[Rate] = MISSING
    parameters: Omittable[Parameters] = MISSING
    description: Description | None = None
    active: Omittable[StrictBool] = MISSING

    model_config = {"json_schema_extra": {"examples": [{"list_price": "2399.00", "active": False}]}}


#: Fields that may not be set to null by PATCH.
NOT_NULLABLE = frozenset(
    {"sku", "name", "list_price", "currency", "tax_rate", "parameters", "active"}
)


class Product(OutputModel):
    id: uuid.UUID
    sku: str
    name: str
    brand: str | None
    series: str | None
    category: str | None
    unit: str | None
    list_price: Decimal = Field(description="Per unit, before tax; a decimal string.")
    currency: str
    tax_rate: Decimal = Field(description="0 … 1 (0.13 is 13 %); a decimal string.")
    parameters: dict[str, Any]
    description: str | None
    active: bool = Field(description="Inactive products stay readable but cannot be ordered.")
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int

    model_config = {
        "from_attributes": True,
        "json_schema_extra": {
            "examples": [
                {
                    "id": "3f2b8c1e-7d4a-4e0b-9a51-6c2d8e9f0a17",
                    **_CREATE_EXAMPLE,
                    "list_price": "2599.0000",
                    "tax_rate": "0.1300",
                    "description": None,
                    "active": True,
                    "created_at": "2026-12-02T09:30:00Z",
                    "updated_at": "2026-12-02T09:30:00Z",
                    "deleted_at": None,
                    "version": 1,
                }
            ]
        },
    }


class ProductListQuery(ListQuery):
    sort: str = sort_field(ProductSort, "-created_at")
    q: SearchTerm | None = Field(
        default=None,
        description="Free text over name, SKU, brand and series (substring, any case, any"
        " script: `打印机`, `laserjet`; `%` and `_` literal). Without `sort`, results come best"
        " first: the name equal to the term, then starting with it, then containing it, then a"
        " match in the SKU, brand or series; newest first within each. An explicit `sort`"
        " wins.",
        examples=["打印机"],
    )
    brand: list[Str100] | None = Field(default=None, max_length=50)
    series: list[Str100] | None = Field(default=None, max_length=50)
    category: list[Str100] | None = Field(default=None, max_length=50)
    active: bool | None = Field(default=None, description="Only active (or inactive) products.")
    currency: list[Currency] | None = Field(default=None, max_length=20)
    min_price: Amount | None = Field(default=None, description="`list_price` at least this.")
    max_price: Amount | None = Field(default=None, description="`list_price` at most this.")
    sku: Sku | None = Field(default=None, description="Exactly this SKU (any letter case).")
    created_after: UtcDatetime | None = None
    created_before: UtcDatetime | None = None
    updated_after: UtcDatetime | None = None
    updated_before: UtcDatetime | None = None
    deleted: bool = Field(
        default=False, description="List soft-deleted products (the trash) instead."
    )
