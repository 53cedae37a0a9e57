"""System parameters: each with a type, a range and a default (DESIGN.md §1 "system
management"). Later issues add their settings here, never in environment variables."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import MISSING, BaseModel, ConfigDict, Field, Strict

from crm_api.kit.money import Currency, Rate
from crm_api.kit.schemas import InputModel, Omittable

NumberPrefix = Annotated[
    str,
    Field(
        min_length=1,
        max_length=16,
        pattern=r"^[A-Za-z0-9_./-]+$",
        description="1 to 16 characters of A-Z, a-z, 0-9 and `_ . / -`: what a number shows "
        "before its digits (`SO-00000042`). Never empty, so every kind of number is told "
        "apart by its prefix; no spaces, quotes or other characters that need escaping in "
        "a URL, a CSV cell or a file name.",
        examples=["SO-"],
    ),
]
Hours = Annotated[int, Strict(), Field(ge=1, le=8760, description="Hours (1 … 8760).")]
Days = Annotated[int, Strict(), Field(ge=0, le=365, description="Days (0 … 365).")]

Category = Annotated[str, Field(min_length=1, max_length=100)]
DecimalPlaces = Annotated[
    int,
    Strict(),
    Field(ge=0, le=4, description="Decimal places money amounts are rounded to (0 … 4)."),
]
ClaimLimit = Annotated[
    int,
    Strict(),
    Field(
        ge=0,
        le=100_000,
        description="Customers one person may hold claimed from the customer pool at once.",
    ),
]
ReturnDays = Annotated[
    int,
    Strict(),
    Field(
        ge=1,
        le=3650,
        description="Days without a follow-up after which a claimed customer returns to the "
        "pool (1 … 3650).",
    ),
]


class SlaHours(BaseModel):
    """Hours within which a service ticket of each priority must be resolved. Sent whole
    (every priority) when changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urgent: Hours
    high: Hours
    normal: Hours
    low: Hours


class CommissionRates(BaseModel):
    """Commission on a sale's amount: ``by_product_category`` overrides ``default`` for the
    products of that category. Sent whole when changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Rate
    by_product_category: dict[Category, Rate] = Field(
        default_factory=dict, max_length=200, examples=[{"打印机": "0.05"}]
    )


class SystemSettings(BaseModel):
    """Every system setting at its current value (the process's cached snapshot: see
    :data:`crm_api.system_settings.CurrentSystemSettings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount_decimal_places: DecimalPlaces = 2
    default_currency: Currency = Field(
        default="CNY", description="Currency of a product or order that names none."
    )
    order_number_prefix: NumberPrefix = "SO-"
    contract_number_prefix: NumberPrefix = "CT-"
    ticket_number_prefix: NumberPrefix = "TK-"
    contract_expiry_reminder_days: Days = Field(
        default=30, description="Remind this many days before a contract expires."
    )
    receivable_due_reminder_days: Days = Field(
        default=7, description="Remind this many days before a receivable falls due."
    )
    sla_hours: SlaHours = Field(
        default_factory=lambda: SlaHours(urgent=4, high=8, normal=24, low=72),
        description="Service-ticket resolution targets by priority.",
    )
    commission_rates: CommissionRates = Field(
        default_factory=lambda: CommissionRates(default=Decimal("0.03"))
    )
    customer_pool_claim_limit: ClaimLimit = 50
    customer_pool_return_days: ReturnDays = 30


class SystemSettingsOut(SystemSettings):
    """The settings as ``GET /v1/settings`` answers them, with the ``version`` the ETag
    carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(
        description='Bumped by every change (0 until the first); the ETag is `"<version>"`.',
        examples=[3],
    )


class SystemSettingsUpdate(InputModel):
    """Only the settings sent change; an unknown setting or a value out of range is a 422
    naming the field; ``null`` is refused (send the default to go back to it)."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [{"amount_decimal_places": 2, "order_number_prefix": "SO-"}]
        },
    )

    amount_decimal_places: Omittable[DecimalPlaces] = MISSING
    default_currency: Omittable[Currency] = MISSING
    order_number_prefix: Omittable[NumberPrefix] = MISSING
    contract_number_prefix: Omittable[NumberPrefix] = MISSING
    ticket_number_prefix: Omittable[NumberPrefix] = MISSING
    contract_expiry_reminder_days: Omittable[Days] = MISSING
    receivable_due_reminder_days: Omittable[Days] = MISSING
    sla_hours: Omittable[SlaHours] = MISSING
    commission_rates: Omittable[CommissionRates] = MISSING
    customer_pool_claim_limit: Omittable[ClaimLimit] = MISSING
    customer_pool_return_days: Omittable[ReturnDays] = MISSING
