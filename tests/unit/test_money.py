"""One way to show an amount (CLDR via Babel) and one table of Stripe's decimals (issue #35)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activities.payments.gateway import from_minor_units, to_minor_units
from schemas.money import _babel_format, _babel_locale, format_money, money_formatter, stripe_exponent

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


LOCALES = ["en", "en-IN", "hi-IN", "es-ES", "es-MX", "de-DE", "de-CH", "fr-FR", "ar-EG", "sv-SE", "ja-JP", "pt-BR"]
CURRENCIES = ["USD", "INR", "EUR", "JPY", "KWD", "CHF", "BRL", "CLP"]


@given(
    amount=st.decimals(min_value=-(10**12), max_value=10**12, places=3, allow_nan=False, allow_infinity=False),
    currency=st.sampled_from(CURRENCIES),
    locale=st.sampled_from(LOCALES),
)
def test_format_money_writes_what_babel_writes(amount: Decimal, currency: str, locale: str) -> None:
    # The pattern applied without Babel per amount (schemas.money._Style) must never differ from it:
    # digits, grouping (lakh too), separators, symbol place, sign, half-even rounding to the currency's
    # decimals. A pair it cannot write (de-CH's apostrophe grouping, say) is left to Babel.
    assert format_money(amount, currency, locale) == _babel_format(amount, currency, _babel_locale(locale))


@given(
    amount=st.decimals(min_value=-(10**12), max_value=10**12, places=3, allow_nan=False, allow_infinity=False),
    currency=st.sampled_from(CURRENCIES),
    locale=st.sampled_from([*LOCALES, "not-a-locale", None]),
)
def test_a_formatter_for_one_currency_and_locale_writes_what_format_money_writes(
    amount: Decimal, currency: str, locale: str | None
) -> None:
    # The nightly insights format a page's amounts through one formatter a (currency, locale) pair.
    assert money_formatter(currency.lower(), locale)(amount) == format_money(amount, currency, locale)


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


def test_the_pay_page_shows_the_amount_in_the_accounts_currency_and_the_retailers_locale() -> None:
    from activities.credit.paylinks import PayOutcome
    from workers.api.routes.pay import _html

    rupees = PayOutcome("processing", amount=Decimal("100000"), currency="inr", locale="en-IN")
    assert "₹1,00,000.00" in bytes(_html(200, "Payment received", "...", rupees, None).body).decode()
    euros = PayOutcome("processing", amount=Decimal("1234.5"), currency="eur", locale="es-ES")
    assert f"1.234,50{NBSP}€" in bytes(_html(200, "Payment received", "...", euros, None).body).decode()


def test_checkout_gets_a_locale_stripe_knows() -> None:
    from schemas.money import stripe_checkout_locale

    shown = [stripe_checkout_locale(x) for x in ("es-ES", "en-GB", "pt-BR", "hi-IN", None)]
    assert shown == ["es", "en-GB", "pt-BR", "auto", "auto"]
