"""Amounts of money at the API's door: decimal strings with two decimals, in and out (issue #34).

A JSON number is a float in most languages' parsers, and `10.1 + 0.2` is not `10.3` in any of
them, so the OpenAPI document says an amount is a string (`"10.50"`), and every amount the API
answers is one, normalised to two decimals (`"10.5"` and `10.50` both come back `"10.50"`). A JSON
number is still read, for callers written before; a string that is not a plain decimal (`"1e3"`,
`"10.505"`, `" 10"`) is refused, naming the field.

And amounts as people read them and as Stripe takes them (issue #35): `format_money` is how
every door shows an amount (messages, the pay page, the CLI, API text fields): CLDR's pattern
for the locale (Babel), with the currency's symbol, so 100000 INR in `en-IN` reads
`₹1,00,000.00`, 1234.56 EUR in `de-DE` reads `1.234,56 €`, and JPY has no decimals.

`STRIPE_ZERO_DECIMAL` is Stripe's own list of zero-decimal currencies (it differs from ISO 4217's
exponents: Stripe takes ISK and HUF, for instance, with two decimals); `stripe_exponent` is what
every amount sent to or read from Stripe is scaled by (the gateway, the pay links, the sandbox).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Annotated, Any, Final

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


# --- shown to people, sent to Stripe (issue #35) ----------------------------------------

# https://docs.stripe.com/currencies#zero-decimal
STRIPE_ZERO_DECIMAL: Final = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
# https://docs.stripe.com/currencies#three-decimal: amounts rounded to tens of minor units.
STRIPE_THREE_DECIMAL: Final = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
DEFAULT_LOCALE: Final = "en"
# https://docs.stripe.com/api/checkout/sessions/create#create_checkout_session-locale
STRIPE_CHECKOUT_LOCALES: Final = frozenset(
    "bg cs da de el en en-GB es es-419 et fi fil fr fr-CA hr hu id it ja ko lt lv ms mt nb nl pl pt pt-BR"
    " ro ru sk sl sv th tr vi zh zh-HK zh-TW".split()
)


def stripe_checkout_locale(locale: str | None) -> str:
    """A retailer's BCP 47 locale as Stripe Checkout takes it: itself, its language, or `auto`
    (the payer's browser) when Stripe has neither (`hi-IN`)."""
    if not locale:
        return "auto"
    tag = locale.replace("_", "-")
    if tag in STRIPE_CHECKOUT_LOCALES:
        return tag
    language = tag.split("-")[0].lower()
    return language if language in STRIPE_CHECKOUT_LOCALES else "auto"


def stripe_exponent(currency: str) -> int:
    """Decimal places of `currency` at Stripe (case-insensitive): 0, 2 or 3."""
    code = currency.lower()
    return 0 if code in STRIPE_ZERO_DECIMAL else 3 if code in STRIPE_THREE_DECIMAL else 2


@cache
def _babel_locale(locale: str) -> str:
    """`locale` (BCP 47, `hi-IN`) as a Babel locale name, or the default one if CLDR has none."""
    from babel import Locale, UnknownLocaleError

    try:
        return str(Locale.parse(locale.replace("-", "_")))
    except (UnknownLocaleError, ValueError, TypeError):
        return DEFAULT_LOCALE


def format_money(amount: Decimal | int | float | str, currency: str, locale: str | None = None) -> str:
    """`amount` in `currency` (ISO 4217) the way `locale` writes it, e.g. `₹1,00,000.00`, `1.234,56 €`.

    The currency's own decimals (CLDR: none for JPY), rounded half-even only if `amount` has more.
    """
    from babel.numbers import format_currency

    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    return format_currency(value, currency.upper(), locale=_babel_locale(locale or DEFAULT_LOCALE))


def parse_amount(text: str) -> Decimal | None:
    """A plain amount as workflows pass it (`1234.5`, or `1,234.50` in histories recorded before
    amounts were formatted at send time); None if `text` is not one."""
    try:
        value = Decimal(text.replace(",", "").strip())
    except (InvalidOperation, AttributeError):
        return None
    return value if value.is_finite() else None
