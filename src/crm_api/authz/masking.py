"""Masked is write-safe: the rule every write path applies to sensitive fields.

Reads mask a sensitive value (``****3445``, :func:`crm_api.kit.filtering.mask`) for a
caller outside its ``read_sensitive`` scope. A client that GETs a record and sends it back
whole then submits the mask; storing it would destroy the real value for good (the audit
diff hides sensitive values too). So, for every sensitive field of every resource:

- a value equal to what this caller is shown for the stored value means "unchanged": it is
  dropped from the patch, so nothing is written and no audit diff appears;
- any other value that *looks masked* (:func:`looks_masked`) is a 422 ``masked_value``
  naming the field: a mask is never stored;
- a new full value is an ordinary change, subject to the caller's ``update`` right.

A caller that sees the real value is shown no mask, so for it any masked-looking value is a
422 (unless it is exactly the stored value: sending back what is there changes nothing).
Creates have nothing to compare with: a masked-looking value is always a 422.

Format checks of a field (a phone pattern, say) would reject a mask before the service sees
it, and the write-back would fail for that reason alone: :data:`AllowMasked` lets
masked-looking strings through validation to this rule.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidatorFunctionWrapHandler, WrapValidator
from sqlalchemy.ext.asyncio import AsyncSession

from crm_api.authz.scope import unmasked_for
from crm_api.authz.types import Access
from crm_api.errors import UnprocessableEntity
from crm_api.kit.filtering import mask

#: What marks a value as masked, once NFKC-normalised (fullwidth and small asterisks,
#: U+FF0A and U+FE61, become ``*``): a run of two or more mask glyphs -- ``*`` (our
#: masker writes ``****``) or the bullets, stars and dots other clients and UI kits mask
#: with (U+2022 bullet, U+25CF black circle, U+2217 asterisk operator, U+2219 bullet
#: operator, U+00B7 middle dot, U+204E low asterisk, U+2731 heavy asterisk) -- or a run
#: of four or more ``x``/``X`` (``XXXX-XXXX-1234``). A client that re-masks what it was
#: shown in its own style must not store that instead of the real value. No bank
#: account, tax number or phone number contains such a run.
MASK_PATTERN = re.compile(r"[*\u2022\u25cf\u2217\u2219\u00b7\u204e\u2731]{2,}|[xX]{4,}")


def looks_masked(value: Any) -> bool:
    """Whether ``value`` is (or contains) a mask rather than a real value."""
    if not isinstance(value, str):
        return False
    return MASK_PATTERN.search(unicodedata.normalize("NFKC", value)) is not None


def _let_masks_through(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    return value if looks_masked(value) else handler(value)


#: Pydantic metadata for a sensitive input field with a format check of its own: a
#: masked-looking string skips the check and reaches :func:`resolve_masked` /
#: :func:`reject_masked`, which accept it only as an unchanged write-back. The JSON schema
#: is the field's own (the mask is not advertised as a valid value).
AllowMasked = WrapValidator(_let_masks_through)


def masked_value(fields: Iterable[str]) -> UnprocessableEntity:
    return UnprocessableEntity(
        "A sensitive field holds a masked value. Send the real value, or leave the field "
        "out (or send exactly what you were shown) to keep it unchanged.",
        code="masked_value",
        errors=[
            {"field": f, "code": "masked_value", "message": "looks masked; a mask is never stored"}
            for f in fields
        ],
    )


def reject_masked(values: Mapping[str, Any], fields: Iterable[str]) -> None:
    """For a create (no stored value to compare with): any masked-looking value of
    ``fields`` in ``values`` is a 422 ``masked_value``."""
    bad = [f for f in fields if looks_masked(values.get(f))]
    if bad:
        raise masked_value(bad)


async def resolve_masked(
    session: AsyncSession,
    access: Access,
    sent: Mapping[str, Any],
    stored: Mapping[str, Any],
    fields: Iterable[str],
    *,
    owner_id: uuid.UUID,
    org_unit_id: uuid.UUID | None,
    created_by: uuid.UUID | None = None,
) -> dict[str, Any]:
    """``sent`` (the fields of a patch) without the sensitive values that merely echo what
    the caller was shown for ``stored``. ``owner_id``/``org_unit_id`` are those that decide
    the record's ``read_sensitive`` scope as stored (before this write moves it), i.e. what
    its reads showed. Raises 422 ``masked_value`` for any other masked-looking value.

    Costs a round trip only when a masked-looking value was sent and masking depends on
    the record."""
    masked = [f for f in fields if f in sent and looks_masked(sent[f])]
    if not masked:
        return dict(sent)
    shown_masked = not await unmasked_for(session, access, owner_id, org_unit_id, created_by)
    kept, bad = dict(sent), []
    for f in masked:
        echoed = sent[f] == stored[f] or (shown_masked and sent[f] == mask(stored[f]))
        if echoed:
            del kept[f]
        else:
            bad.append(f)
    if bad:
        raise masked_value(bad)
    return kept
