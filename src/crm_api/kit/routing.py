"""Route helpers: documented problem responses and common headers."""

from __future__ import annotations

from typing import Any

from crm_api.kit.schemas import Problem

_DESCRIPTIONS = {
    400: "Malformed request (bad JSON, bad cursor).",
    401: "Missing or invalid credentials.",
    403: "Your role lacks this permission.",
    404: "Not found, or outside your data scope.",
    409: "Conflict (duplicate, invalid state transition, concurrent change).",
    412: "If-Match does not match the current version.",
    413: "Request body too large.",
    415: "Body is not application/json.",
    422: "Validation failed; see `errors`.",
    428: "If-Match required.",
    429: "Too many requests.",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given problem statuses (plus 401/403/422 always)."""
    wanted = sorted({401, 403, 422, *statuses})
    return {
        s: {
            "model": Problem,
            "description": _DESCRIPTIONS.get(s, "Error"),
            "content": {"application/problem+json": {}},
        }
        for s in wanted
    }


ETAG_HEADER = {
    "ETag": {"description": "Current version, for If-Match.", "schema": {"type": "string"}}
}
