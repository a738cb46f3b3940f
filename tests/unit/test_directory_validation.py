"""The directory's one validation (`schemas/directory.py`, `schemas/contact.py`): what a business
sending its rows is told, field by field, before anything is written."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.directory import (
    CompanyIn,
    CreditAccountIn,
    CustomerIn,
    MemberIn,
    OrderIn,
    RetailerIn,
    refusal_of,
)


def refused(model: type[BaseModel], **fields: Any) -> tuple[str | None, str]:
    with pytest.raises(ValidationError) as error:
        model(**fields)
    return refusal_of(error.value)


def test_phone_is_stored_in_e164_whatever_the_notation() -> None:
    assert RetailerIn(external_id="s1", name="Shop", phone="+1 (415) 555-0123").phone == "+14155550123"
    assert RetailerIn(external_id="s1", name="Shop", phone="+91 98765 43210").phone == "+919876543210"


@pytest.mark.parametrize("phone", ["+15551234567", "(415) 555-0199", "call me", "+999"])
def test_an_invalid_phone_is_refused_saying_how_to_write_it(phone: str) -> None:
    field, reason = refused(RetailerIn, external_id="s1", name="Shop", phone=phone)
    assert field == "phone"
    assert "E.164, e.g. +14155550123" in reason and phone not in reason  # never repeats the number


def test_a_landline_cannot_prefer_whatsapp() -> None:
    london_landline = "+442079460000"
    field, reason = refused(RetailerIn, external_id="s1", name="Shop", phone=london_landline)
    assert field == "phone" and "not a mobile number" in reason
    sms = RetailerIn(external_id="s1", name="Shop", phone=london_landline, preferred_channel="sms")
    assert sms.phone == london_landline
    field, _ = refused(MemberIn, company_id="acme", external_id="m1", name="A", phone=london_landline)
    assert field == "phone"


def test_time_zone_locale_and_currency() -> None:
    assert refused(RetailerIn, external_id="s1", name="Shop", timezone="Mars/Olympus")[0] == "timezone"
    assert refused(RetailerIn, external_id="s1", name="Shop", locale="xx-QQ")[0] == "locale"
    assert RetailerIn(external_id="s1", name="Shop", locale="hi_in").locale == "hi-IN"
    assert refused(CreditAccountIn, retailer_external_id="s1", currency="ABC")[0] == "currency"
    assert refused(CreditAccountIn, retailer_external_id="s1", currency="XXX")[0] == "currency"
    assert CreditAccountIn(retailer_external_id="s1", currency="eur").currency == "EUR"


def test_amounts_are_exact_non_negative_with_two_decimals() -> None:
    assert refused(CreditAccountIn, retailer_external_id="s1", credit_limit="10.001")[0] == "credit_limit"
    assert refused(OrderIn, external_id="o", retailer_external_id="s", amount="-1", payment_mode="COD")[0] == "amount"
    order = OrderIn(external_id="o", retailer_external_id="s", amount="12.5", payment_mode="COD")
    assert order.amount == Decimal("12.5") and order.model_dump(mode="json")["amount"] == "12.5"
    assert refused(CreditAccountIn, retailer_external_id="s1", payment_terms_days=366)[0] == "payment_terms_days"


def test_unknown_fields_bad_ids_and_text_are_refused() -> None:
    assert refused(CustomerIn, external_id="c1", name="A", points=5)[0] == "points"
    assert refused(CustomerIn, external_id="has space", name="A")[0] == "external_id"
    assert refused(CustomerIn, external_id="c1", name="A\x00B")[0] == "name"
    assert refused(OrderIn, external_id="o", retailer_external_id="s", amount="1", payment_mode="COD",
                   placed_at="2026-12-01T10:00:00")[0] == "placed_at"  # fmt: skip


def test_company_rules_have_the_tables_ranges() -> None:
    assert refused(CompanyIn, id="Acme Corp", name="Acme")[0] == "id"
    assert refused(CompanyIn, id="acme", name="Acme", reminder_offsets_days=[0, 91])[0] == "reminder_offsets_days.1"
    assert refused(CompanyIn, id="acme", name="Acme", channels=["sms", "sms"])[0] == "channels"
    assert refused(CompanyIn, id="acme", name="Acme", quiet_hours_end=24)[0] == "quiet_hours_end"
    defaults = CompanyIn(id="acme", name="Acme")
    assert defaults.reminder_offsets_days == [0, 2, 5] and defaults.channels == ["whatsapp", "sms"]
