"""Optimistic concurrency: ``version`` → ``ETag``; ``If-Match`` checked on PATCH/DELETE.

The check runs against the row *locked* by ``SELECT … FOR UPDATE``, so two writers holding
the same ETag cannot both pass: the second sees the new version and gets 412.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from crm_api.errors import PreconditionFailed, PreconditionRequired


def etag(version: int) -> str:
    return f'"{version}"'


def _parse(header: str) -> set[str] | None:
    """``None`` means ``*`` (any version)."""
    values = {v.strip().removeprefix("W/") for v in header.split(",") if v.strip()}
    return None if "*" in values else values


IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=512,
        description="ETag from a previous GET; a stale value is answered with 412.",
    ),
]


async def _require_if_match(request: Request) -> bool:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool (a thread hop per
    # request for reading an attribute)
    return bool(request.app.state.settings.require_if_match)


#: Whether writes must send ``If-Match`` (428 without), from the settings the app was
#: created with (``app.state``), not the process-wide ones: ``create_app(settings)``
#: decides.
RequireIfMatch = Annotated[bool, Depends(_require_if_match)]


def check_if_match(if_match: str | None, current_version: int, *, required: bool) -> None:
    if if_match is None:
        if required:
            raise PreconditionRequired(
                "Send If-Match with the ETag of the version you are changing.",
                code="if_match_required",
            )
        return
    accepted = _parse(if_match)
    if accepted is not None and etag(current_version) not in accepted:
        raise PreconditionFailed(
            "The record has changed since you read it; fetch it again and retry.",
            code="version_mismatch",
            current_version=current_version,
        )
