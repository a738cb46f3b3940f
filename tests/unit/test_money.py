"""One way to show an amount (CLDR via Babel) and one table of Stripe's decimals (issue #35)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from activities.payments.gateway import from_minor_units, to_minor_units
from schemas.money import format_money, stripe_exponent

NBSP = "\u00a0"


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "shown"),
    [
        ("100000", "INR", "en-IN", "₹1,00,000.00"),  # lakh grouping
        ("100000", "INR", "hi-IN", "₹1,00,000.00"),
        ("1234.56", "EUR", "de-DE", f"1.234,56{NBSP}€"),
        ("1234.5", "EUR", "es-ES", f"1.234,50{NBSP}€"),
        ("1234", "JPY", "ja-JP", "￥1,234"),  # no decimals
        ("1234", "JPY", "en", "¥1,234"),
        ("150", "USD", "en", "$150.00"),
        ("150", "USD", "not-a-locale", "$150.00"),  # an unknown locale: English, never a crash
    ],
)
def test_format_money(amount: str, currency: str, locale: str, shown: str) -> None:
    assert format_money(Decimal(amount), currency, locale) == shown


def test_stripe_minor_units_follow_stripes_list() -> None:
    assert (stripe_exponent("JPY"), stripe_exponent("krw"), stripe_exponent("inr"), stripe_exponent("KWD")) == (
        0,
        0,
        2,
        3,
    )
    assert to_minor_units(Decimal("1234"), "jpy") == 1234
    assert to_minor_units(Decimal("1234.56"), "inr") == 123456
    assert from_minor_units(123456, "eur") == Decimal("1234.56")
    assert from_minor_units(1234, "jpy") == Decimal("1234")
