"""Schema bases shared by every domain."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import (
    MISSING,
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)
from pydantic_core import PydanticCustomError

T = TypeVar("T")


def _not_null(value: object) -> object:
    if value is None:
        raise PydanticCustomError("null_not_allowed", "may be omitted but not null")
    return value


Omittable = Annotated[T | MISSING, BeforeValidator(_not_null)]
"""An update (PATCH) field that may be left out but not cleared: ``Omittable[Name] =
MISSING``. Its schema is ``Name``'s, without ``null`` and not required, so the contract says
what the API does; ``null`` is a 422 ``null_not_allowed``. Left out, the field is unset
(``model_dump(exclude_unset=True)`` omits it, as it omits every field not sent)."""


def holds_nul(value: object, *, objects: bool = True) -> bool:
    """Whether ``value`` (a string, or lists and, with ``objects``, JSON objects of them)
    holds U+0000, which PostgreSQL text and jsonb cannot store."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(holds_nul(item, objects=objects) for item in value)
    if objects and isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    return False


def _refuse_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "may not hold NUL (U+0000) characters")
    return value


#: For a string taken from the path (which :class:`InputModel` does not see): no U+0000.
NoNul = AfterValidator(_refuse_nul)


class InputModel(BaseModel):
    """Request bodies: unknown fields are rejected (422), strings are stripped, and no
    string may hold U+0000 (PostgreSQL text cannot: it would reach SQL and come back as a
    422 naming no field)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # not into objects: a nested input model checks its own fields (so the error names
        # the nested field); free-form JSON fields check themselves (holds_nul)
        if holds_nul(value, objects=False):
            raise PydanticCustomError("nul_character", "may not hold NUL (U+0000) characters")
        return value


class OutputModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    """The one list envelope. ``next_cursor`` is opaque; pass it back as ``cursor``."""

    data: list[T]
    next_cursor: str | None = Field(
        default=None, description="Cursor for the next page; null on the last page."
    )
    has_more: bool = Field(description="Whether another page follows.")
    total: int | None = Field(
        default=None,
        description="Number of matching records; only with `include_total=true`. Exact up to"
        " the server's count cap (10,000 by default), the query planner's estimate above it.",
    )
    total_is_estimate: bool = Field(
        default=False,
        description="Whether `total` is an estimate: the matches exceed the count cap, so"
        " they were not all counted (`total` is then at least the cap + 1).",
    )


class Problem(BaseModel):
    """RFC 9457 problem details, as every error is answered."""

    type: str = Field(examples=["https://crm-api.dev/problems/customer_not_found"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["No customer with that id."])
    instance: str | None = Field(default=None, examples=["/v1/customers/5d0c…"])
    code: str = Field(examples=["customer_not_found"])
    request_id: str | None = Field(default=None, examples=["9f1c2e4b7a2d4c1e8f0a1b2c3d4e5f60"])
    errors: list[FieldError] | None = None


class FieldError(BaseModel):
    field: str = Field(examples=["email"])
    code: str = Field(examples=["value_error"])
    message: str = Field(examples=["value is not a valid email address"])


Problem.model_rebuild()

NonEmptyStr = Annotated[str, Field(min_length=1)]
