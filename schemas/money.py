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
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
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
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    style = _style(currency.upper(), _babel_locale(locale or DEFAULT_LOCALE))
    return style.format(value) if style else _babel_format(value, currency.upper(), _babel_locale(locale or ""))


@cache
def money_formatter(currency: str, locale: str | None = None) -> Callable[[Decimal], str]:
    """`format_money` with the currency and locale fixed: what writes many amounts of a few
    (currency, locale) pairs (a night's insights) resolves the pattern once a pair, not an amount."""
    style = _style(currency.upper(), _babel_locale(locale or DEFAULT_LOCALE))
    if style:
        return style.format
    code, babel_locale = currency.upper(), _babel_locale(locale or "")
    return lambda value: _babel_format(value, code, babel_locale)


def _babel_format(value: Decimal, currency: str, locale: str) -> str:
    from babel.numbers import format_currency

    return format_currency(value, currency, locale=locale or DEFAULT_LOCALE)


class _Style:
    """One (currency, locale)'s CLDR pattern, read from Babel once and applied with str operations.

    Babel's `format_currency` costs about 17 µs an amount (it re-reads the pattern and symbols
    each time); the nightly insights write two amounts per retailer, a reminders day one per
    message. This applies the same pattern (prefix, suffix, primary and secondary grouping, the
    separators, the currency's digits, half-even rounding) in about 2 µs. `_style` checks it
    against Babel on probe amounts when built and keeps Babel for a pair where they differ
    (a locale with its own digits or minus sign, say): the output is Babel's either way.
    """

    __slots__ = ("decimal", "group", "negative", "positive", "primary", "quantum", "secondary")

    def __init__(self, currency: str, locale: str) -> None:
        from babel import Locale
        from babel.numbers import get_currency_precision, get_currency_symbol, get_decimal_symbol, get_group_symbol

        loc = Locale.parse(locale)
        pattern = loc.currency_formats["standard"]
        symbol = get_currency_symbol(currency, loc)
        self.positive = (pattern.prefix[0].replace("¤", symbol), pattern.suffix[0].replace("¤", symbol))
        self.negative = (pattern.prefix[1].replace("¤", symbol), pattern.suffix[1].replace("¤", symbol))
        self.primary, self.secondary = pattern.grouping
        self.decimal, self.group = get_decimal_symbol(loc), get_group_symbol(loc)
        self.quantum = Decimal(1).scaleb(-get_currency_precision(currency))

    def format(self, value: Decimal) -> str:
        rounded = value.quantize(self.quantum, rounding=ROUND_HALF_EVEN)
        whole, _, fraction = f"{abs(rounded):f}".partition(".")
        groups = [whole[-self.primary :]] if len(whole) > self.primary else [whole]
        rest = whole[: -self.primary] if len(whole) > self.primary else ""
        while rest:
            groups.append(rest[-self.secondary :])
            rest = rest[: -self.secondary]
        number = self.group.join(reversed(groups)) + (self.decimal + fraction if fraction else "")
        prefix, suffix = self.negative if value.is_signed() else self.positive  # -0.001 is "-$0.00", as Babel
        return prefix + number + suffix


_PROBES = tuple(
    Decimal(v)
    for v in ("0", "5", "-5", "-0.001", "0.005", "12.345", "999.995", "1234.5", "-1234.5", "100000", "-98765432.109")
)


@cache
def _style(currency: str, locale: str) -> _Style | None:
    """The fast pattern for (currency, locale), or None where it would not write what Babel writes."""
    try:
        style = _Style(currency, locale)
    except Exception:  # noqa: BLE001 - any pattern Babel has that _Style cannot read: Babel formats it
        return None
    if all(style.format(v) == _babel_format(v, currency, locale) for v in _PROBES):
        return style
    return None


def parse_amount(text: str) -> Decimal | None:
    """A plain amount as workflows pass it (`1234.5`, or `1,234.50` in histories recorded before
    amounts were formatted at send time); None if `text` is not one."""
    try:
        value = Decimal(text.replace(",", "").strip())
    except (InvalidOperation, AttributeError):
        return None
    return value if value.is_finite() else None
