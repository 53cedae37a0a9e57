"""Keyset (cursor) pagination over whitelisted sort keys, with a stable ``id`` tie-break.

A cursor is the sort spec plus the last row's sort values, base64url-encoded JSON. It is
opaque to clients; a cursor that does not decode, or that was made for another sort, is a
400 ``invalid_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from sqlalchemy import ColumnElement, Select, and_, or_, tuple_
from sqlalchemy.orm import QueryableAttribute

from crm_api.errors import BadRequest
from crm_api.kit.counting import DEFAULT_COUNT_CAP

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
    #: ``include_total`` is exact up to this many matches, an estimate above
    #: (kit/counting.py; ``CRM_LIST_COUNT_CAP``).
    count_cap: int = DEFAULT_COUNT_CAP


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
        default=False,
        description="Also count the matches (a second query): exact up to a cap (10,000 by"
        " default), above it the query planner's estimate, with `total_is_estimate: true`.",
    )
    #: Set from the app's settings by :func:`crm_api.kit.routing.query_model`.
    _count_cap: int = PrivateAttr(default=DEFAULT_COUNT_CAP)

    def page(self, sort_enum: type[StrEnum]) -> PageParams:
        return PageParams(
            self.limit,
            self.cursor,
            parse_sort(self.sort, sort_enum),
            self.include_total,
            self._count_cap,
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


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and "t" in value:
        decoded = datetime.fromisoformat(value["t"])
        if decoded.tzinfo is None:  # never issued: every timestamp column is timezone-aware
            raise ValueError("naive timestamp in cursor")
        try:
            # asyncpg sends timestamptz as UTC: 9999-12-31T23:00-05:00 or 0001-01-01T00:00+01:00
            # parse but fall outside Python's datetime range there (a 500 before).
            return decoded.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp out of range in cursor") from None
    if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise ValueError("NUL in cursor")
    return value


def encode_cursor(sort: Sequence[SortKey], row: Mapping[str, Any]) -> str:
    payload = {
        "s": [("-" if k.descending else "") + k.name for k in sort],
        "v": [_encode_value(row[k.name]) for k in sort],
        "id": str(row["id"]),
    }
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode_cursor(cursor: str, sort: Sequence[SortKey]) -> tuple[list[Any], uuid.UUID]:
    invalid = BadRequest(
        "The cursor is malformed or was issued for a different sort.", code="invalid_cursor"
    )
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        expected = [("-" if k.descending else "") + k.name for k in sort]
        if not isinstance(payload, dict) or payload.get("s") != expected:
            raise invalid
        values = [_decode_value(v) for v in payload["v"]]
        if len(values) != len(sort) or not isinstance(payload["id"], str):
            raise invalid
        return values, uuid.UUID(payload["id"])
    except (ValueError, TypeError, KeyError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise invalid from exc


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
    order = [columns[k.name].desc() if k.descending else columns[k.name].asc() for k in sort]
    order.append(id_column.desc() if id_desc else id_column.asc())
    if params.cursor:
        values, last_id = decode_cursor(params.cursor, sort)
        cols = [columns[k.name] for k in sort]
        for col, value in zip(cols, values, strict=True):
            if not isinstance(value, col.type.python_type):
                raise BadRequest("The cursor is malformed.", code="invalid_cursor")
        directions = [k.descending for k in sort] + [id_desc]
        if len(set(directions)) == 1:
            # one direction: a row comparison, which PostgreSQL answers from one index
            left = tuple_(*cols, id_column)
            right = tuple_(*values, last_id)
            stmt = stmt.where(left < right if directions[0] else left > right)
        else:
            all_cols = [*cols, id_column]
            all_vals = [*values, last_id]
            clauses: list[ColumnElement[bool]] = []
            for i, col in enumerate(all_cols):
                eqs = [all_cols[j] == all_vals[j] for j in range(i)]
                cmp = col < all_vals[i] if directions[i] else col > all_vals[i]
                clauses.append(and_(*eqs, cmp))
            stmt = stmt.where(or_(*clauses))
    return stmt.order_by(*order).limit(params.limit + 1)


def page_envelope(
    rows: list[dict[str, Any]],
    params: PageParams,
    total: int | None = None,
    total_is_estimate: bool = False,
) -> dict[str, Any]:
    has_more = len(rows) > params.limit
    data = rows[: params.limit]
    next_cursor = encode_cursor(params.sort, data[-1]) if has_more and data else None
    return {
        "data": data,
        "next_cursor": next_cursor,
        "has_more": has_more,
        "total": total,
        "total_is_estimate": total_is_estimate,
    }
