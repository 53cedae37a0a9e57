"""JSON request bodies, parsed once and strictly: UTF-8 only, and each key once per object.

Starlette's ``Request.json()`` (``json.loads`` of the bytes) took the last of two equal
keys, so ``{"name": "a", "name": "b"}`` was answered as if the client had sent one name,
and it guessed UTF-16 or UTF-32 from the first bytes, although JSON between systems is
UTF-8 (RFC 8259, section 8.1). :func:`loads_body` refuses both with a 400 problem.

The results are the standard library's ``json.loads`` results (the validation of every
input schema was written against them: ``NaN`` and integers past 64 bits reach the
validators, which name the field), produced the fast way when that is provably the same:

* **fast path**: orjson parses (about 2-3 times faster than ``json``), and one count
  proves that no key was lost to a duplicate. Every ``:`` of the body outside a string is
  one object member; orjson writes every string's ``:`` literally; so when the body has
  no ``\\u003a`` escape, re-serializing the parsed value gives exactly as many ``:`` as
  the body, and fewer as soon as a duplicate dropped a member (its separator, with
  whatever its value held). A body with a run of 19 digits anywhere (orjson reads an
  integer past 64 bits as a float, ``json`` as an int) or a ``\\u003`` escape takes the
  slow path, as does anything orjson refuses (``NaN``, ``1e999``, a lone surrogate, nesting
  past 1024, a byte order mark) or cannot write back (nesting past 254);
* **slow path**: ``json`` with an ``object_pairs_hook`` that refuses a repeated key.
  Only after a refusal is the body parsed a third time, to name where the key repeats.

Measured (``python -m bench.json_body``, docs/benchmarks.md "JSON bodies"): a 1 kB body
parses 10-25 % faster than with the plain ``json.loads`` it replaces, a 100 kB one about
as fast (many objects) or +50 % (long strings: the byte scans); the hook on every body
would cost +10-40 % on 1 kB and +65 % on a 700-line order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson

from crm_api.errors import BadRequest

#: The problem answered for a body that is not JSON (FastAPI's own parser error, as shaped
#: by :func:`crm_api.errors.validation_errors`).
MALFORMED_DETAIL = "The request body is not valid JSON."
_MALFORMED_ERRORS = [{"field": "body", "code": "json_invalid", "message": "JSON decode error"}]

#: 19 digits: the shortest integer literal orjson reads as a float (-9223372036854775809).
_LONG_DIGIT_RUN = b"0" * 19
#: Every digit to ``0``: a run of 19 digits becomes one substring search.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_ESCAPED_COLON = b"\\u003"


class _DuplicateKey(ValueError):
    """A repeated key met by the slow path's hook (a ``ValueError``, as ``json`` raises)."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


_STRICT = json.JSONDecoder(object_pairs_hook=_unique_object)


class _Members(list[tuple[str, Any]]):
    """An object's members in document order, duplicates kept (to find one)."""


_KEEP_ALL = json.JSONDecoder(object_pairs_hook=_Members)


def malformed() -> BadRequest:
    return BadRequest(MALFORMED_DETAIL, code="malformed_json", errors=_MALFORMED_ERRORS)


def loads_body(body: bytes) -> Any:
    """The JSON value of a request body, as ``json.loads`` reads it.

    Raises :class:`~crm_api.errors.BadRequest` ``malformed_json`` (not JSON, not UTF-8,
    nested past the parser's recursion limit) or ``duplicate_key`` (an object names one key
    twice; ``pointer`` is where, as an RFC 6901 JSON pointer)."""
    if _LONG_DIGIT_RUN not in body.translate(_DIGITS_TO_ZERO) and _ESCAPED_COLON not in body:
        try:
            value = orjson.loads(body)
            written = orjson.dumps(value)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            pass  # the slow path decides: json may take it (NaN) or explains the refusal
        else:
            if written.count(b":") == body.count(b":"):
                return value
    return _loads_strict(body)


def _loads_strict(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed() from None
    if text.startswith("\ufeff"):  # a byte order mark, which json.loads of bytes skipped
        text = text[1:]
    try:
        return _STRICT.decode(text)
    except _DuplicateKey:
        pass
    except (ValueError, RecursionError):
        raise malformed() from None
    try:  # the strict parse stopped at the first complete object naming a key twice
        tree = _KEEP_ALL.decode(text)
    except (ValueError, RecursionError):  # and the rest is not JSON: that comes first
        raise malformed() from None
    path = _first_duplicate(tree)
    pointer = "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)
    raise BadRequest(
        "An object in the request body has the same key twice; send each key once"
        " (`pointer` says where).",
        code="duplicate_key",
        pointer=pointer,
        errors=[
            {
                "field": ".".join(path),
                "code": "duplicate_key",
                "message": "This key appears more than once in its object.",
            }
        ],
    )


def _first_duplicate(tree: Any) -> list[str]:
    """The path to the first repeated key in document order (depth first, iteratively: the
    tree may be as deep as the parser allows)."""
    stack: list[tuple[list[str], Iterator[tuple[str, Any]], set[str] | None]] = []

    def enter(path: list[str], value: Any) -> None:
        if isinstance(value, _Members):
            stack.append((path, iter(value), set()))
        elif isinstance(value, list):
            stack.append((path, ((str(i), item) for i, item in enumerate(value)), None))

    enter([], tree)
    while stack:
        path, members, seen = stack[-1]
        member = next(members, None)
        if member is None:
            stack.pop()
            continue
        key, value = member
        if seen is not None:  # an object's member (not an array's item)
            if key in seen:
                return [*path, key]
            seen.add(key)
        enter([*path, key], value)
    raise AssertionError("the strict parse met a repeated key that the walk did not")


def is_json_media(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` is JSON (``application/json`` or ``application/*+json``),
    as FastAPI decides to parse a body."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )
