"""Reusable validated field types (``Annotated``), with descriptions and examples."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, EmailStr, Field
from pydantic_core import PydanticCustomError

_PHONE_PATTERN = r"^\+?[0-9][0-9 ()\-.]*(?:\s*(?:x|ext\.?)\s*[0-9]{1,6})?$"
_PHONE = re.compile(_PHONE_PATTERN)
#: The same check as ``_website``, in ECMA 262 syntax (no inline flags) for the schema.
_WEBSITE_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/$.?#][^\s]*$"


def _phone(value: str) -> str:
    digits = sum(ch.isdigit() for ch in value.split("x")[0].split("ext")[0])
    if not _PHONE.match(value) or not 5 <= digits <= 17:
        raise ValueError("not a valid phone number (digits, spaces, + ( ) - . and ext allowed)")
    return value


def _website(value: str) -> str:
    if not re.match(r"^https?://[^\s/$.?#][^\s]*$", value, re.IGNORECASE):
        raise ValueError("must be an http(s) URL")
    return value


#: How deep custom_fields may nest (objects and arrays). orjson, which renders every
#: response, stops at 255 levels, and a record is rendered a few levels down (a list page,
#: an audit event's diff): a value near that limit was stored and then made every page
#: showing it a 500.
CUSTOM_FIELDS_MAX_DEPTH = 32


def _storable(value: Any, depth: int = 0) -> None:
    """What jsonb refuses although Python parsed it (NaN/Infinity, NUL characters), and
    nesting past :data:`CUSTOM_FIELDS_MAX_DEPTH`."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("custom_fields may not hold NaN or Infinity (not JSON)")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("custom_fields may not hold NUL characters")
    if isinstance(value, dict | list):
        depth += 1
        if depth > CUSTOM_FIELDS_MAX_DEPTH:
            raise ValueError(
                f"custom_fields may nest at most {CUSTOM_FIELDS_MAX_DEPTH} levels deep"
            )
    if isinstance(value, dict):
        for key, item in value.items():
            _storable(key, depth)
            _storable(item, depth)
    elif isinstance(value, list):
        for item in value:
            _storable(item, depth)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    # Python's parser accepts more than JSON: NaN/Infinity, integers past 64 bits, any
    # nesting. orjson (which renders responses) refuses the last two with a TypeError,
    # which pydantic would not turn into a validation error: a 500 instead of a 422.
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"custom_fields cannot be stored as JSON: {exc}") from None
    _storable(value)
    if len(encoded) > 16_384:
        raise ValueError("custom_fields must be at most 16 KiB of JSON")
    if len(value) > 100:
        raise ValueError("custom_fields may have at most 100 keys")
    return value


def _tags(value: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for tag in value:
        seen.setdefault(tag.strip(), None)
    return list(seen)


#: The start of an ISO-8601 / RFC 3339 date-time: a date, then ``T`` (or a space) and a time.
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_string(value: Any) -> Any:
    """Only what the contract's ``format: date-time`` says: pydantic alone also takes a
    number (in JSON, or a numeric query string) as Unix seconds, so ``created_after=0.5``
    or ``"expires_at": 1893456000`` would be answered as if valid."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATETIME.match(value):
        raise PydanticCustomError(
            "datetime_format",
            "must be an ISO-8601 date-time with an offset, e.g. 2026-12-02T08:00:00Z",
        )
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-05:00 is past year 9999 in UTC: not a 500
        raise ValueError("timestamp out of range once converted to UTC") from None


# The patterns are published in the schema (``json_schema_extra``) but checked by the
# validators, whose messages say what is wrong; the digit count has no portable pattern.
Phone = Annotated[
    str,
    Field(
        max_length=40,
        examples=["+86 138 0013 8000"],
        description="Digits, spaces, `+ ( ) - .` and an extension (`x12`, `ext. 12`); "
        "5 to 17 digits before the extension.",
        json_schema_extra={"pattern": _PHONE_PATTERN},
    ),
    AfterValidator(_phone),
]
Email = Annotated[EmailStr, Field(max_length=320, examples=["li.wei@example.cn"])]
Website = Annotated[
    str,
    Field(
        max_length=500,
        examples=["https://example.com"],
        description="An http(s) URL.",
        json_schema_extra={"pattern": _WEBSITE_PATTERN},
    ),
    AfterValidator(_website),
]
Tag = Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[^,\s][^,]*$")]
Tags = Annotated[list[Tag], Field(max_length=50, examples=[["vip", "华东"]]), AfterValidator(_tags)]
CustomFields = Annotated[
    dict[str, Any],
    Field(
        description="Free-form JSON object (≤100 keys, ≤16 KiB, nested ≤32 levels).",
        examples=[{"erp_id": "C-1"}],
    ),
    AfterValidator(_json_object),
]
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_string), AfterValidator(_utc)]


def _searchable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("may not hold NUL characters (no text can: nothing would match)")
    return value


#: A list's ``q`` (the description is the list query's): 1 to 200 characters; a NUL is a
#: 422 naming the field here, not a database error (PostgreSQL text cannot hold one). Any
#: other character, control characters included, is searched for as it is.
SearchTerm = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_searchable)]
