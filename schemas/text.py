"""Free text from outside (a reason, a note, an actor's name): one type for every door (issue #33).

PostgreSQL's `text` refuses NUL and UTF-8 refuses a lone surrogate: a value carrying either was a
500 at the API, or an activity that failed 45 times after the caller had been told 202. Other
control characters (an escape sequence, a carriage return) are never meant in a reason and make
logs and the UI lie. So every model that takes text from a person or a caller declares it with
`Reason`, `Actor` or `ShortText`: refused at the door (HTTP 422 naming the field, CLI exit 2),
stripped like the routes already stripped it, bounded per use; the signal and update payloads
use `Clean` (refusal only). Tab and newline stay allowed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StringConstraints

ALLOWED_CONTROLS = "\t\n"
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$"
"""What the OpenAPI document says of free text (surrogates cannot be written in a JSON Schema)."""


def problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None: the first character at fault, by code point
    (never the value itself, which may be anything)."""
    bad = _FORBIDDEN.search(value)
    if bad is None:
        return None
    char = bad.group()
    what = "NUL" if char == "\x00" else ("a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character")
    return f"must not contain {what} (U+{ord(char):04X} at position {bad.start()}); only tab and newline are allowed"


def _refuse(value: Any) -> Any:
    """Before stripping: a control character at either end must be refused, not trimmed away."""
    if isinstance(value, str) and (why := problem(value)) is not None:
        raise ValueError(why)
    return value


_REFUSED = BeforeValidator(_refuse)
_DOCUMENTED = Field(json_schema_extra={"pattern": PATTERN})

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500), _REFUSED, _DOCUMENTED]
"""A reason or note (1-500 characters): stored in the audit log, on an order, with a resolution."""

Actor = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), _REFUSED, _DOCUMENTED]
"""Who acts (1-100 characters): an admin's or operator's name."""

Clean = Annotated[str, _REFUSED, _DOCUMENTED]
"""Refusal only, no stripping or bounds of its own: for the signal and update payloads that
recorded histories decode (their own `Field` bounds stay as they were, so every recorded value
still decodes and replays the same)."""

ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), _REFUSED, _DOCUMENTED]
"""A short name (1-64 characters): where a column or an older model bounds it so."""
