"""Amounts of money at the API's door: decimal strings with two decimals, in and out (issue #34).

A JSON number is a float in most languages' parsers, and `10.1 + 0.2` is not `10.3` in any of
them, so the OpenAPI document says an amount is a string (`"10.50"`), and every amount the API
answers is one, normalised to two decimals (`"10.5"` and `10.50` both come back `"10.50"`). A JSON
number is still read, for callers written before; a string that is not a plain decimal (`"1e3"`,
`"10.505"`, `" 10"`) is refused, naming the field.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

CENTS = Decimal("0.01")
PATTERN = r"^-?(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$"
"""A plain decimal: an optional minus, up to 12 whole digits, up to 2 decimals (numeric(14,2))."""
_PLAIN = re.compile(PATTERN)


def _read(value: Any) -> Any:
    if isinstance(value, str) and not _PLAIN.fullmatch(value):
        raise ValueError('an amount is a decimal string with at most two decimals, such as "10.50"')
    return value


def _write(value: Decimal) -> str:
    return str(value.quantize(CENTS))


_SCHEMA = {"type": "string", "format": "decimal", "pattern": PATTERN, "examples": ["10.50"]}

Amount = Annotated[Decimal, PlainSerializer(_write, return_type=str, when_used="json"), WithJsonSchema(_SCHEMA)]
"""An amount the API answers: `"10.50"`."""

AmountIn = Annotated[
    Decimal,
    BeforeValidator(_read),
    Field(max_digits=14, decimal_places=2),
    PlainSerializer(_write, return_type=str, when_used="json"),
    WithJsonSchema(_SCHEMA),
]
"""An amount in a request: a plain decimal string (or, for callers written before, a JSON number),
at most two decimals and numeric(14,2)'s digits."""
