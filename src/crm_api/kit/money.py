"""Money types every domain shares: an ISO 4217 currency code and non-negative amounts.

Amounts are :class:`~decimal.Decimal` end to end (JSON: decimal strings, never floats).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

#: Active ISO 4217 alphabetic codes (the standard's list 1, 2025), without ``XTS`` (testing)
#: and ``XXX`` (no currency). A literal copy: the API must not change with a library.
ISO_4217 = frozenset(
    """
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD
    BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP
    DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS
    INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL
    LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR
    NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP
    SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN
    UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD
    XPF XPT XSU XUA YER ZAR ZMW ZWG
    """.split()  # noqa: SIM905 (a block of codes reads better than 180 quoted ones)
)


def _iso_4217(value: str) -> str:
    if value not in ISO_4217:
        raise PydanticCustomError(
            "invalid_currency", "not an ISO 4217 currency code (upper case, e.g. CNY, USD)"
        )
    return value


Currency = Annotated[
    str,
    Field(
        min_length=3,
        max_length=3,
        pattern="^[A-Z]{3}$",
        description="ISO 4217 currency code, upper case.",
        examples=["CNY"],
    ),
    AfterValidator(_iso_4217),
]
"""An ISO 4217 code (422 ``invalid_currency`` for a well-formed code the standard lacks)."""

#: The largest amount a ``numeric(18, 4)`` column holds.
MAX_AMOUNT = Decimal("99999999999999.9999")

Amount = Annotated[
    Decimal,
    Field(
        ge=0,
        le=MAX_AMOUNT,
        max_digits=18,
        decimal_places=4,
        description="A non-negative amount with at most 4 decimal places, as a decimal string.",
        examples=["1299.00"],
    ),
]

Rate = Annotated[
    Decimal,
    Field(
        ge=0,
        le=1,
        max_digits=5,
        decimal_places=4,
        description="A fraction between 0 and 1 with at most 4 decimal places (0.13 is 13 %).",
        examples=["0.13"],
    ),
]


def round_amount(value: Decimal, places: int) -> Decimal:
    """``value`` rounded half-up to ``places`` decimal places (the settings' amount rule)."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
