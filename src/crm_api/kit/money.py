"""Money types every domain shares: an ISO 4217 currency code, the one decimal input type
and the non-negative amounts and rates built on it.

Amounts are :class:`~decimal.Decimal` end to end (JSON: decimal strings, never floats).
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

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

#: What a decimal string may look like: ASCII digits, an optional leading ``-`` and an
#: optional fraction. Published in the schema (ECMA 262 syntax, the same meaning).
DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
_DECIMAL_STRING = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)


def _plain_decimal(value: Any) -> Any:
    """A string must be a plain ASCII decimal; numbers (and Decimals built by the code) go
    on to pydantic's own checks (finite, range, digits, scale).

    Python's ``Decimal()`` reads far more than a decimal: ``"1_000"``, ``" 12 "``, ``"+5"``,
    ``"1e3"``, Arabic-Indic and full-width digits (U+0660…, U+FF10…), ``"NaN"``. A
    demanding API takes what it documents and names the field for anything else."""
    if isinstance(value, str) and not _DECIMAL_STRING.fullmatch(value):
        raise PydanticCustomError(
            "invalid_decimal",
            "must be a JSON number or a decimal string of ASCII digits with an optional "
            "leading '-' and fraction, e.g. \"1299.00\" (no spaces, '+', '_', exponent)",
        )
    return value


def _plain_form(value: Decimal) -> Decimal:
    # A JSON number such as 1e3 arrives as Decimal('1E+3'), and "0.0000000" (zero at any
    # scale passes the scale check) as Decimal('0E-7'): both would be written back, stored
    # (settings keep JSON) and audited with an exponent the pattern refuses. The range and
    # digit checks ran first, so the value is small enough to quantize.
    if "E" in str(value):
        value = value.normalize()
        if value.as_tuple().exponent > 0:  # type: ignore[operator]
            value = value.quantize(Decimal(1))
    if value.is_zero() and value.is_signed():  # "-0" is 0
        value = value.copy_abs()
    return value


class _PlainDecimal:
    """The marker that makes a ``Decimal`` an input decimal: place it after the ``Field``
    holding the range and scale (``Annotated[Decimal, Field(ge=0, ...), PLAIN_DECIMAL]``),
    so pydantic's own checks stay in the schema and run on the number first.

    A string must match ``DECIMAL_PATTERN`` (422 ``invalid_decimal`` naming the field);
    the schema publishes the pattern, so a generated client (and schemathesis) knows it."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        checked = core_schema.no_info_after_validator_function(_plain_form, handler(source))
        return core_schema.no_info_before_validator_function(_plain_decimal, checked)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        for branch in out.get("anyOf", ()):
            if branch.get("type") == "string":
                branch["pattern"] = DECIMAL_PATTERN
        return out


#: The one marker every input Decimal (body or query) carries; ``tests/test_decimal_input``
#: fails on an input schema whose decimal lacks it.
PLAIN_DECIMAL = _PlainDecimal()

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
    PLAIN_DECIMAL,
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
    PLAIN_DECIMAL,
]


def round_amount(value: Decimal, places: int) -> Decimal:
    """``value`` rounded half-up to ``places`` decimal places (the settings' amount rule)."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
