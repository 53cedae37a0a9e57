"""Keyset (cursor) pagination over whitelisted sort keys, with a stable ``id`` tie-break.

A cursor is the sort spec plus the last row's sort values, base64url-encoded JSON. It is
opaque to clients; a cursor that does not decode, or that was made for another sort, is a
400 ``invalid_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    SmallInteger,
    and_,
    false,
    literal,
    or_,
    tuple_,
)
from sqlalchemy.orm import QueryableAttribute

from crm_api.errors import BadRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

#: A sort or tie-break column: a Core column (``Customer.__table__.c.name``) or a mapped
#: attribute (``Customer.name``). Not ``SQLColumnExpression``, which covers both but has no
#: ``.type``, and a cursor value is checked against the column's ``.type``.
SortColumn: TypeAlias = ColumnElement[Any] | QueryableAttribute[Any]


@dataclass(frozen=True, slots=True)
class SortKey:
    name: str
    descending: bool


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    cursor: str | None
    sort: tuple[SortKey, ...]
    include_total: bool


@dataclass(frozen=True, slots=True)
class CommaSeparated:
    """The OpenAPI schema of a comma-separated query parameter whose items come from a
    fixed list: an array of those items, serialized ``style: form, explode: false``
    (``sort=-created_at,name``). Used as a field's ``json_schema_extra``, so it replaces
    the field's schema (a plain string to pydantic, which the endpoint parses itself);
    :func:`crm_api.kit.routing.query_model` reads it to join repeated keys
    (``sort=a&sort=b``, what clients that explode arrays send) and to document the style.
    """

    items: tuple[str, ...]
    default: tuple[str, ...]
    max_items: int

    def __call__(self, schema: dict[str, Any]) -> None:
        kept: dict[str, Any] = {k: schema[k] for k in ("title", "description") if k in schema}
        schema.clear()
        schema.update(kept)
        schema.update(
            {
                "type": "array",
                "items": {"type": "string", "enum": list(self.items)},
                "minItems": 1,
                "maxItems": self.max_items,
                "uniqueItems": True,
                "default": list(self.default),
            }
        )


def sort_values(sort_enum: type[StrEnum]) -> tuple[str, ...]:
    """Every value one item of ``sort`` may take: each key, ascending then descending."""
    return tuple(v for m in sort_enum for v in (m.value, f"-{m.value}"))


def sort_field(sort_enum: type[StrEnum], default: str, description: str | None = None) -> Any:
    """The ``sort`` field of a resource's list query: ``default`` (e.g. ``-created_at``)
    when absent, published in OpenAPI as an array of the allowed keys (see
    :class:`CommaSeparated`), checked by :func:`parse_sort` (422 ``invalid_sort``)."""
    keys = ", ".join(f"`{m.value}`" for m in sort_enum)
    text = description or f"Sort keys: {keys}."
    text += (
        " Comma-separated, each at most once; `-` before a key sorts descending. Ties are"
        " broken by id."
    )
    return Field(
        default=default,
        max_length=200,
        description=text,
        json_schema_extra=CommaSeparated(
            sort_values(sort_enum), tuple(default.split(",")), len(sort_enum)
        ),
    )


class ListQuery(BaseModel):
    """Query parameters every list endpoint shares. Resources subclass it to add their
    filters; unknown query parameters are rejected with 422."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(
        default=DEFAULT_LIMIT,
        ge=1,
        le=MAX_LIMIT,
        description=f"Page size, 1–{MAX_LIMIT} (default {DEFAULT_LIMIT}); out of range is a 422.",  # noqa: RUF001
    )
    cursor: str | None = Field(
        default=None, max_length=1024, description="`next_cursor` of the previous page."
    )
    sort: str = Field(
        default="-created_at",
        max_length=200,
        description="Comma-separated sort keys, `-` for descending; see the resource's list.",
    )
    include_total: bool = Field(
        default=False, description="Also count all matches (costs a second query)."
    )

    def page(self, sort_enum: type[StrEnum]) -> PageParams:
        return PageParams(
            self.limit, self.cursor, parse_sort(self.sort, sort_enum), self.include_total
        )


def parse_sort(raw: str, sort_enum: type[StrEnum]) -> tuple[SortKey, ...]:
    from crm_api.errors import UnprocessableEntity

    keys: list[SortKey] = []
    seen: set[str] = set()
    valid = {m.value for m in sort_enum}
    # Lenient beyond the published schema (an array of `key`/`-key` items), as before the
    # enum was published: blanks around an item, a `+` sign and empty items are accepted.
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        desc = part.startswith("-")
        name = part[1:] if part[0] in "-+" else part  # one sign at most: "--name" is invalid
        if name not in valid or name in seen:
            raise UnprocessableEntity(
                f"Cannot sort by {part!r}. Allowed keys: {', '.join(sorted(valid))}.",
                code="invalid_sort",
                errors=[{"field": "query.sort", "code": "invalid_sort", "message": part}],
            )
        seen.add(name)
        keys.append(SortKey(name, desc))
    if not keys:
        raise UnprocessableEntity(
            "sort must name at least one key.",
            code="invalid_sort",
            errors=[{"field": "query.sort", "code": "invalid_sort", "message": "empty"}],
        )
    return tuple(keys)


#: Sort values are tagged in the cursor's JSON where JSON has no exact type of its own:
#: ``{"t": iso}`` a timestamp, ``{"D": iso}`` a date, ``{"d": "12.50"}`` a Decimal (a
#: string, never a float: no digit is lost), ``{"u": str}`` a UUID, ``{"f": "nan"}`` a
#: float JSON cannot write; strings, integers, booleans, finite floats and NULL are plain
#: JSON, an enum is its value. Decoding is directed by the sort column's type, so a value
#: of another type (or a NULL for a NOT NULL column) is an ``invalid_cursor``.


def _encode_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, date):
        return {"D": value.isoformat()}
    if isinstance(value, Decimal):
        return {"d": str(value)}
    if isinstance(value, uuid.UUID):
        return {"u": str(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else {"f": repr(value)}
    raise TypeError(f"cannot put a {type(value).__name__} sort value in a cursor")


def _tagged(value: Any, tag: str) -> Any:
    if not isinstance(value, dict) or set(value) != {tag} or not isinstance(value[tag], str):
        raise ValueError(f"expected a {tag!r} value in the cursor")
    return value[tag]


#: The range of each integer column type (a value outside it would fail in the driver).
_INT_BITS: tuple[tuple[type[Any], int], ...] = ((SmallInteger, 16), (BigInteger, 64), (Integer, 32))
#: PostgreSQL's numeric: up to 131072 digits before the decimal point, 16383 after.
_NUMERIC_DIGITS = (131072, 16383)


def _python_type(column: SortColumn) -> Any:
    try:
        return column.type.python_type
    except NotImplementedError:  # a type without one: compared as plain JSON
        return None


def _decode_value(value: Any, column: SortColumn) -> Any:
    """``value`` (from a cursor) as the Python value of ``column``'s type; ``ValueError``
    when it is not one."""
    if value is None:
        if not _nullable(column):
            raise ValueError("NULL in the cursor for a NOT NULL column")
        return None
    expected = _python_type(column)
    if expected is datetime:
        decoded = datetime.fromisoformat(_tagged(value, "t"))
        if decoded.tzinfo is None:  # never issued: every timestamp column is timezone-aware
            raise ValueError("naive timestamp in cursor")
        try:
            # asyncpg sends timestamptz as UTC: 9999-12-31T23:00-05:00 or 0001-01-01T00:00+01:00
            # parse but fall outside Python's datetime range there (a 500 before).
            return decoded.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp out of range in cursor") from None
    if expected is date:
        return date.fromisoformat(_tagged(value, "D"))
    if expected is Decimal:
        number = Decimal(_tagged(value, "d"))
        if number.is_snan():
            raise ValueError("signalling NaN in cursor")
        if number.is_finite() and number:
            precision = getattr(column.type, "precision", None)
            scale = getattr(column.type, "scale", None) or 0
            before, after = (precision - scale, scale) if precision is not None else _NUMERIC_DIGITS
            if number.adjusted() >= before or -number.as_tuple().exponent > after:  # type: ignore[operator]
                raise ValueError("numeric out of the column's range in cursor")
        return number
    if expected is uuid.UUID:
        return uuid.UUID(_tagged(value, "u"))
    if expected is float:
        if isinstance(value, dict):
            return float(_tagged(value, "f"))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number in the cursor")
        return float(value)
    if expected is bool:
        if not isinstance(value, bool):
            raise ValueError("expected a boolean in the cursor")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer in the cursor")
        bits = next((b for t, b in _INT_BITS if isinstance(column.type, t)), 64)
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise ValueError("integer out of the column's range in cursor")
        return value
    if isinstance(expected, type) and issubclass(expected, Enum):
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("expected an enum value in the cursor")
        return expected(value)  # ValueError for a value not of the enum
    if expected is str:
        if not isinstance(value, str):
            raise ValueError("expected a string in the cursor")
        if "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise ValueError("NUL in cursor")
        return value
    raise ValueError(f"cannot read a cursor value for a {expected!r} column")


def _nullable(column: SortColumn) -> bool:
    """Whether ``column`` may hold NULL (a mapped attribute: its column's answer)."""
    expression = getattr(column, "expression", column)
    return bool(getattr(expression, "nullable", True))


def encode_cursor(sort: Sequence[SortKey], row: Mapping[str, Any]) -> str:
    payload = {
        "s": [("-" if k.descending else "") + k.name for k in sort],
        "v": [_encode_value(row[k.name]) for k in sort],
        "id": str(row["id"]),
    }
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode_cursor(
    cursor: str, sort: Sequence[SortKey], columns: Mapping[str, SortColumn]
) -> tuple[list[Any], uuid.UUID]:
    """The sort values and id a cursor carries, each checked against (and converted to) its
    sort column's type; 400 ``invalid_cursor`` for anything else."""
    invalid = BadRequest(
        "The cursor is malformed or was issued for a different sort.", code="invalid_cursor"
    )
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        expected = [("-" if k.descending else "") + k.name for k in sort]
        if not isinstance(payload, dict) or payload.get("s") != expected:
            raise invalid
        raw = payload["v"]
        if not isinstance(raw, list) or len(raw) != len(sort) or not isinstance(payload["id"], str):
            raise invalid
        values = [_decode_value(v, columns[k.name]) for v, k in zip(raw, sort, strict=True)]
        return values, uuid.UUID(payload["id"])
    except (
        ValueError,
        TypeError,
        KeyError,
        ArithmeticError,
        binascii.Error,
        orjson.JSONDecodeError,
    ) as exc:
        raise invalid from exc


def _ordered(column: SortColumn, descending: bool) -> ColumnElement[Any]:
    """``column`` in the ORDER BY. NULLs sort as PostgreSQL's default has them, as if
    greater than every value (last ascending, first descending), so a plain index serves
    both directions; spelled out for a nullable column so the keyset predicate and the
    ORDER BY visibly agree."""
    if descending:
        return column.desc().nulls_first() if _nullable(column) else column.desc()
    return column.asc().nulls_last() if _nullable(column) else column.asc()


def _after(column: SortColumn, value: Any, descending: bool) -> ColumnElement[bool] | None:
    """Rows strictly after ``value`` in ``column``'s order (NULL the greatest, as in
    :func:`_ordered`); ``None``: no row is."""
    if value is None:
        # nothing is greater than NULL; descending, every non-NULL value comes after it
        return column.is_not(None) if descending else None
    # a bound parameter of the column's type: `flagged > true` as well as `amount > $1`
    bound = literal(value, column.type)
    if descending:
        before: ColumnElement[bool] = column < bound  # NULLs came first: already passed
        return before
    greater: ColumnElement[bool] = column > bound
    return or_(greater, column.is_(None)) if _nullable(column) else greater


def _same(column: SortColumn, value: Any) -> ColumnElement[bool]:
    if value is None:
        return column.is_(None)
    same: ColumnElement[bool] = column == literal(value, column.type)
    return same


def keyset_after(
    columns: Sequence[SortColumn], values: Sequence[Any], directions: Sequence[bool]
) -> ColumnElement[bool]:
    """The rows after ``values`` in the order of ``columns`` (each descending or not, the
    last one the id tie-break): the predicate of the next page."""
    if len(set(directions)) == 1 and not any(_nullable(c) for c in columns):
        # one direction, no NULLs: a row comparison, which PostgreSQL answers from one index
        left = tuple_(*columns)
        right = tuple_(*values)
        return left < right if directions[0] else left > right
    clauses: list[ColumnElement[bool]] = []
    for i, column in enumerate(columns):
        after = _after(column, values[i], directions[i])
        if after is not None:
            clauses.append(and_(*(_same(columns[j], values[j]) for j in range(i)), after))
    return or_(*clauses) if clauses else false()


def apply_keyset(
    stmt: Select[Any],
    columns: Mapping[str, SortColumn],
    id_column: SortColumn,
    params: PageParams,
) -> Select[Any]:
    """Order ``stmt`` by the sort keys plus id, continue after the cursor, fetch limit+1."""
    sort = params.sort
    # the id tie-break follows the direction of the last key, so one index serves both
    id_desc = sort[-1].descending
    order = [_ordered(columns[k.name], k.descending) for k in sort]
    order.append(_ordered(id_column, id_desc))
    if params.cursor:
        values, last_id = decode_cursor(params.cursor, sort, columns)
        stmt = stmt.where(
            keyset_after(
                [*(columns[k.name] for k in sort), id_column],
                [*values, last_id],
                [*(k.descending for k in sort), id_desc],
            )
        )
    return stmt.order_by(*order).limit(params.limit + 1)


def page_envelope(
    rows: list[dict[str, Any]], params: PageParams, total: int | None = None
) -> dict[str, Any]:
    has_more = len(rows) > params.limit
    data = rows[: params.limit]
    next_cursor = encode_cursor(params.sort, data[-1]) if has_more and data else None
    return {"data": data, "next_cursor": next_cursor, "has_more": has_more, "total": total}
