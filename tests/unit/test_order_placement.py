"""`validate_order_placement`: the seed's checkout rules, as the shop's backend calls them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from activities.credit.guardrails import CreditPosition, PlacementRefused, validate_order_placement

ACTIVE = CreditPosition("ACTIVE", available_credit=Decimal("500.00"), max_order_value=Decimal("300.00"))
PAUSED = CreditPosition("PAUSED", available_credit=Decimal("500.00"), max_order_value=None)
BLOCKED = CreditPosition("BLOCKED", available_credit=Decimal("500.00"), max_order_value=None)
INR = CreditPosition("ACTIVE", Decimal("100000.00"), None, currency="INR", locale="en-IN")
EUR = CreditPosition("ACTIVE", Decimal("1234.56"), None, currency="EUR", locale="es-ES")


@pytest.mark.parametrize(
    ("position", "amount", "mode"),
    [
        (ACTIVE, Decimal("300.00"), "CREDIT"),  # at the maximum order value, within available credit
        (ACTIVE, Decimal("900.00"), "COD"),  # cash on delivery ignores credit limits
        (PAUSED, Decimal("50.00"), "COD"),  # a paused retailer may still buy cash on delivery
    ],
)
def test_allowed_orders(position: CreditPosition, amount: Decimal, mode: str) -> None:
    validate_order_placement(position, amount, mode)


@pytest.mark.parametrize(
    ("position", "amount", "mode", "reason"),
    [
        (PAUSED, Decimal("50.00"), "CREDIT", "credit is paused"),
        (BLOCKED, Decimal("50.00"), "CREDIT", "blocked"),
        (BLOCKED, Decimal("50.00"), "COD", "blocked"),
        (ACTIVE, Decimal("300.01"), "CREDIT", r"maximum order value of \$300\.00"),
        (CreditPosition("ACTIVE", Decimal("100"), None), Decimal("100.01"), "CREDIT", r"available credit of \$100\.00"),
        # in the account's currency, as the retailer's locale writes it
        (INR, Decimal("100000.01"), "CREDIT", "available credit of ₹1,00,000.00"),
        (EUR, Decimal("1234.57"), "CREDIT", "available credit of 1.234,56\xa0€"),
        (ACTIVE, Decimal("0"), "CREDIT", "must be positive"),
        (ACTIVE, Decimal("-5"), "COD", "must be positive"),
        (ACTIVE, Decimal("10"), "CARD", "unknown payment mode"),
    ],
)
def test_refused_orders_say_why(position: CreditPosition, amount: Decimal, mode: str, reason: str) -> None:
    with pytest.raises(PlacementRefused, match=reason):
        validate_order_placement(position, amount, mode)
