from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import MISSING, BaseModel, ConfigDict, Field

from crm_api.customer.schemas import CustomerUpsert
from crm_api.kit.money import PLAIN_DECIMAL, Amount, Currency
from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import InputModel, Omittable, OutputModel
from crm_api.kit.types import Phone, SearchTerm, UtcDatetime
from crm_api.order.states import OrderStatus

#: The most lines one order may carry (a request with more is a 422 naming ``lines``).
MAX_LINES = 100


class Channel(StrEnum):
    web = "web"
    storefront = "storefront"
    phone = "phone"
    sales = "sales"
    partner = "partner"


class OrderSort(StrEnum):
    created_at = "created_at"
    updated_at = "updated_at"
    total = "total"


Str200 = Annotated[str, Field(min_length=1, max_length=200)]
Notes = Annotated[str, Field(max_length=10_000)]
ExternalRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="Your system's id for this order; unique among the orders you posted.",
        examples=["shop-order-20261202-0042"],
    ),
]
Quantity = Annotated[
    Decimal,
    Field(
        gt=0,
        max_digits=15,
        decimal_places=3,
        description="Units of the product; greater than 0, at most 3 decimal places.",
        examples=["2"],
    ),
    PLAIN_DECIMAL,
]


class Address(BaseModel):
    """A postal address (shipping or billing)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Annotated[str, Field(max_length=200)] | None = Field(
        default=None, description="Recipient.", examples=["李娜"]
    )
    phone: Phone | None = None
    line1: Annotated[str, Field(min_length=1, max_length=300)] = Field(
        examples=["浦东新区世纪大道 100 号"]
    )
    line2: Annotated[str, Field(max_length=300)] | None = None
    city: Annotated[str, Field(max_length=100)] | None = Field(default=None, examples=["上海"])
    region: Annotated[str, Field(max_length=100)] | None = Field(default=None, examples=["上海"])
    postal_code: Annotated[str, Field(max_length=20)] | None = Field(
        default=None, examples=["200120"]
    )
    country: Annotated[str, Field(min_length=2, max_length=2, pattern="^[A-Z]{2}$")] | None = Field(
        default=None, description="ISO 3166-1 alpha-2.", examples=["CN"]
    )


class OrderLineCreate(InputModel):
    product_id: uuid.UUID = Field(description="An active product priced in the order's currency.")
    quantity: Quantity
    unit_price: Amount | None = Field(
        default=None, description="Price per unit before tax; defaults to the product's list price."
    )
    discount: Amount = Field(
        default=Decimal(0),
        description="An amount off this line (not per unit), at most the line's amount and "
        "with no more decimal places than amounts are rounded to.",
        examples=["10.00"],
    )


Lines = Annotated[
    list[OrderLineCreate],
    Field(min_length=1, max_length=MAX_LINES, description=f"1 to {MAX_LINES} lines."),
]


class OrderCreate(InputModel):
    """A new order. Totals, the number and the status are the server's: sending one is a
    422 naming the field."""

    customer_id: uuid.UUID | None = Field(
        default=None, description="A customer in your scope; or send `customer` instead."
    )
    customer: CustomerUpsert | None = Field(
        default=None,
        description="Instead of `customer_id`: the buyer by natural key (`external_ref`, "
        "else e-mail, else phone), created or updated in the same transaction as the order "
        "(`PUT /v1/customers/by-external-ref/{ref}` semantics). Retries and concurrent "
        "orders of one new buyer make one customer. Needs the customers permissions an "
        "upsert needs (`create` for a new buyer, `update` for a known one).",
    )
    channel: Channel = Channel.sales
    currency: Currency | None = Field(
        default=None,
        description="Defaults to the system's `default_currency`; every line's product "
        "must be priced in it.",
    )
    lines: Lines
    external_ref: ExternalRef | None = None
    contract_id: uuid.UUID | None = None
    campaign_id: uuid.UUID | None = None
    shipping_address: Address | None = None
    billing_address: Address | None = None
    notes: Notes | None = None
    owner_id: uuid.UUID | None = Field(
        default=None,
        description="Defaults to the customer's owner. Another user needs the `assign` permission.",
    )
    org_unit_id: uuid.UUID | None = Field(
        default=None,
        description="Defaults to the owner's org unit (the customer's, when the owner is "
        "the customer's); needs `assign` to set.",
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "customer_id": "5c3e2a1b-0d9f-4e8a-b7c6-1f2e3d4c5b6a",
                    "channel": "web",
                    "external_ref": "shop-order-20261202-0042",
                    "lines": [
                        {"product_id": "0b8f1d7e-6a55-4c1e-9f4e-3d2a1b0c9e8f", "quantity": "2"},
                        {
                            "product_id": "7d1e0c9b-8a7f-4e6d-9c5b-4a3f2e1d0c9b",
                            "quantity": "1",
                            "unit_price": "1299.00",
                            "discount": "100.00",
                        },
                    ],
                    "shipping_address": {
                        "name": "李娜",
                        "line1": "世纪大道 100 号",
                        "city": "上海",
                    },
                }
            ]
        }
    }


class OrderUpdate(InputModel):
    """Only the fields sent change. `lines` replaces every line and recomputes the totals,
    only while the order is pending (409 `order_not_editable` after)."""

    lines: Omittable[Lines] = MISSING
    shipping_address: Address | None = None
    billing_address: Address | None = None
    notes: Notes | None = None
    contract_id: uuid.UUID | None = None
    campaign_id: uuid.UUID | None = None
    owner_id: Omittable[uuid.UUID] = MISSING
    org_unit_id: uuid.UUID | None = None

    model_config = {"json_schema_extra": {"examples": [{"notes": "请周末送货"}]}}


NOT_NULLABLE = frozenset({"lines", "owner_id"})


class OrderLine(OutputModel):
    id: uuid.UUID
    position: int
    product_id: uuid.UUID
    sku: str = Field(description="The product's SKU when the line was written.")
    name: str = Field(description="The product's name when the line was written.")
    quantity: Decimal
    unit_price: Decimal
    discount: Decimal
    tax_rate: Decimal = Field(description="The product's tax rate when the line was written.")
    subtotal: Decimal = Field(description="quantity × unit_price, rounded.")  # noqa: RUF001
    tax: Decimal = Field(description="(subtotal − discount) × tax_rate, rounded.")  # noqa: RUF001
    total: Decimal = Field(description="subtotal − discount + tax.")  # noqa: RUF001


class Order(OutputModel):
    id: uuid.UUID
    number: str = Field(examples=["SO-00000042"])
    customer_id: uuid.UUID
    contract_id: uuid.UUID | None
    campaign_id: uuid.UUID | None
    channel: Channel
    status: OrderStatus
    external_ref: str | None
    created_by: uuid.UUID = Field(description="The user or API client that posted the order.")
    currency: str = Field(examples=["CNY"])
    subtotal: Decimal = Field(description="Sum of the lines' subtotals.", examples=["2598.00"])
    discount: Decimal = Field(description="Sum of the lines' discounts.", examples=["100.00"])
    tax: Decimal = Field(description="Sum of the lines' taxes.", examples=["324.74"])
    total: Decimal = Field(description="subtotal − discount + tax.", examples=["2822.74"])  # noqa: RUF001
    shipping_address: Address | None
    billing_address: Address | None
    notes: str | None
    owner_id: uuid.UUID
    org_unit_id: uuid.UUID | None
    confirmed_at: datetime | None
    shipped_at: datetime | None
    delivered_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    lines: list[OrderLine]
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class CustomerOrderListQuery(ListQuery):
    """The filters of ``/customers/{id}/orders`` (the customer is the path's)."""

    sort: str = sort_field(OrderSort, "-created_at")
    q: SearchTerm | None = Field(
        default=None,
        description="Free text over the number, external_ref and the name of the order's"
        " customer, when you may read that customer (live and inside your customers scope)"
        " (substring, any case, any script; `%` and `_` literal). Without `sort`, results come"
        " best first: the number equal to the term, then starting with it, then containing"
        " it, then a match in external_ref or the customer's name; newest first within each."
        " An explicit `sort` wins.",
        examples=["SO-"],
    )
    status: list[OrderStatus] | None = None
    channel: list[Channel] | None = None
    product_id: list[uuid.UUID] | None = Field(
        default=None, max_length=50, description="Orders with a line of any of these products."
    )
    owner_id: list[uuid.UUID] | None = Field(default=None, max_length=50)
    org_unit_id: list[uuid.UUID] | None = Field(default=None, max_length=50)
    external_ref: ExternalRef | None = None
    number: Annotated[str, Field(min_length=1, max_length=40)] | None = None
    total_min: Amount | None = Field(default=None, description="total ≥ this.")
    total_max: Amount | None = Field(default=None, description="total ≤ this.")
    created_after: UtcDatetime | None = None
    created_before: UtcDatetime | None = None
    deleted: bool = Field(default=False, description="List deleted orders (the trash) instead.")


class OrderListQuery(CustomerOrderListQuery):
    customer_id: list[uuid.UUID] | None = Field(default=None, max_length=50)
