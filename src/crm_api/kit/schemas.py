"""Schema bases shared by every domain."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import MISSING, BaseModel, BeforeValidator, ConfigDict, Field
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


class InputModel(BaseModel):
    """Request bodies: unknown fields are rejected (422), strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


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
