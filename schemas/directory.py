"""The business's own data coming in (issue #34): one input model per kind, the one validation every
door uses — the ingestion API's PUTs, `jobctl import`, the CLI.

Each row names itself by the business's own id (`external_id`; a company by its slug), so writing
it is an upsert and writing it again changes nothing (`services/directory.py` writes them). What
can be checked without the database is checked here: phones parsed and kept in E.164 (a landline
refused for WhatsApp), time zones, locales, currencies, amounts (exact, two decimals, never
negative), free text (`schemas.text`). What needs the database (a retailer the account names, a
Stripe id another row holds, a status that cannot go back) is the service's refusal, per row.

A PUT is a whole replacement: a field left out takes its default, as for a new row.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from schemas.churn import Channels, Days90, Hour, NudgeCap, Offsets, distinct_channels
from schemas.contact import Currency, LocaleTag, Phone, TimeZone, check_channel
from schemas.messaging import Channel
from schemas.tables import EXTERNAL_ID, MEMBERSHIP_STATUSES, ORDER_STATUSES, PAYMENT_MODES
from schemas.text import ShortText

MAX_AMOUNT = Decimal("999999999999.99")
"""numeric(14,2): the largest amount a column of money holds."""

ExternalId = Annotated[
    str,
    Field(
        pattern=EXTERNAL_ID,
        description="the business's own id: 1-128 letters, digits and _.:@/- (no spaces)",
        examples=["shop-0042"],
    ),
]
CompanySlug = Annotated[
    str,
    Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="the company's id: a lower-case slug", examples=["acme"]),
]
Amount = Annotated[
    Decimal,
    Field(ge=0, le=MAX_AMOUNT, max_digits=14, decimal_places=2, description="exact, at most two decimals"),
]
Name = Annotated[ShortText, Field(description="as shown to people (1-64 characters)")]
StripeId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{3,255}$", description="as Stripe gives it")]
OrderStatus = Literal["PENDING", "CONFIRMED", "DELIVERED", "CANCELLED", "FAILED"]
PaymentMode = Literal["CREDIT", "COD"]
MembershipStatus = Literal["ACTIVE", "PAST_DUE", "CANCELLING", "CANCELLED", "TERMINATED"]
assert set(get_args(OrderStatus)) == set(ORDER_STATUSES)
assert set(get_args(PaymentMode)) == set(PAYMENT_MODES)
assert set(get_args(MembershipStatus)) == set(MEMBERSHIP_STATUSES)


class DirectoryRow(BaseModel):
    """An unknown field is refused, naming it (issue #33): a misspelt column must not be dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Contact(DirectoryRow):
    """Someone jobctl messages: `preferred_channel` comes before `phone`, whose check reads it (a
    landline cannot take WhatsApp: refused naming `phone`)."""

    preferred_channel: Channel = Field(default="whatsapp", description="whatsapp (a mobile number) or sms")
    phone: Phone | None = Field(default=None, description="any notation with the country code; stored in E.164")

    @field_validator("phone")
    @classmethod
    def _reachable(cls, phone: str | None, info: ValidationInfo) -> str | None:
        return check_channel(phone, info.data.get("preferred_channel"))


def _example(**fields: JsonValue) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [fields]})


# Each kind has its fields (`...Fields`: a PUT's body, the row named by the path) and its row
# (`...In`: the fields and the business's id, as an import or the service takes it).


class RetailerFields(Contact):
    """A shop buying on credit."""

    name: Name
    timezone: TimeZone = Field(default="UTC", description="its local hours: quiet hours, reminders")
    locale: LocaleTag = Field(default="en", description="BCP 47: the language of its messages")

    model_config = _example(
        name="Corner Store",
        phone="+14155550123",
        preferred_channel="whatsapp",
        timezone="America/Los_Angeles",
        locale="en-US",
    )


class RetailerIn(RetailerFields):
    external_id: ExternalId


class CreditAccountFields(DirectoryRow):
    """A retailer's credit line. A new one starts with all of its limit available; a changed limit
    goes through the credit ledger (available credit follows, audited, guardrails re-checked)."""

    credit_limit: Amount = Field(default=Decimal("50000.00"), description="total credit")
    payment_terms_days: int = Field(default=30, ge=0, le=365, description="a credit order is due this many days after")
    max_order_value: Amount = Field(default=Decimal("50000.00"), gt=0, description="the largest credit order")
    max_outstanding_days: int = Field(default=30, ge=0, le=3650, description="days overdue before credit pauses")
    currency: Currency = Field(default="USD", description="ISO 4217; cannot change while debits are open")

    model_config = _example(
        credit_limit="25000.00",
        payment_terms_days=30,
        max_order_value="5000.00",
        max_outstanding_days=45,
        currency="USD",
    )


class CreditAccountIn(CreditAccountFields):
    retailer_external_id: ExternalId


class OrderFields(DirectoryRow):
    """An order as the shop recorded it: history for the insights, and the row a checkout's clock
    needs. Writing it takes no credit: placing it does (`POST /v1/orders/{order_id}/placement`)."""

    retailer_external_id: ExternalId
    amount: Amount = Field(description="the order's total")
    payment_mode: PaymentMode
    status: OrderStatus = Field(default="PENDING", description="moves forward only: PENDING, CONFIRMED, DELIVERED")
    placed_at: AwareDatetime | None = Field(
        default=None, description="when it was placed (with an offset); left out: now for a new order, else as stored"
    )

    model_config = _example(
        retailer_external_id="shop-0042",
        amount="129.90",
        payment_mode="CREDIT",
        status="PENDING",
        placed_at="2026-12-06T10:15:00Z",
    )


class OrderIn(OrderFields):
    external_id: ExternalId


class CompanyFields(DirectoryRow):
    """A tenant of the churn saver and its rules (ranges as the `companies` table's CHECKs)."""

    name: Name
    timezone: TimeZone = Field(default="UTC", description="its members' time zone unless theirs is given")
    reminder_offsets_days: Offsets = Field(default_factory=lambda: [0, 2, 5])
    channels: Channels = Field(default_factory=lambda: list[Channel](["whatsapp", "sms"]))
    incentive_days: Days90 = Field(default=7, description="days an incentive extends the subscription by (0: none)")
    quiet_hours_start: Hour = Field(default=21, description="local hour nudges stop")
    quiet_hours_end: Hour = Field(default=8, description="local hour nudges resume")
    daily_nudge_cap: NudgeCap = 1
    grace_period_days: Days90 = Field(default=3, description="days after the last offset before the membership ends")

    _distinct = field_validator("channels")(distinct_channels)

    model_config = _example(
        name="Acme Gym",
        timezone="Europe/Berlin",
        reminder_offsets_days=[0, 2, 5],
        channels=["whatsapp", "sms"],
        incentive_days=7,
        quiet_hours_start=21,
        quiet_hours_end=8,
        daily_nudge_cap=1,
        grace_period_days=3,
    )


class CompanyIn(CompanyFields):
    id: CompanySlug


class MemberFields(Contact):
    """A member of a company's subscription (its churn cases' subject)."""

    name: Name
    timezone: TimeZone | None = Field(default=None, description="None: the company's")
    stripe_customer_id: StripeId | None = None
    stripe_subscription_id: StripeId | None = None
    status: MembershipStatus = "ACTIVE"
    current_period_end: AwareDatetime | None = None

    model_config = _example(
        name="Dana Smith",
        phone="+14155550123",
        preferred_channel="sms",
        stripe_customer_id="cus_Q1w2e3r4",
        stripe_subscription_id="sub_Q1w2e3r4",
        status="ACTIVE",
        current_period_end="2027-01-01T00:00:00Z",
    )


class MemberIn(MemberFields):
    company_id: CompanySlug
    external_id: ExternalId = Field(description="the company's own member id, unique within the company")


class CustomerFields(DirectoryRow):
    """A loyalty customer. Points are not set here: they are the sum of the loyalty ledger."""

    name: Name
    phone: Phone | None = None
    earn_rate: Decimal = Field(
        default=Decimal("1"), ge=0, max_digits=10, decimal_places=4, description="points per currency unit spent"
    )
    stripe_customer_id: StripeId | None = None

    model_config = _example(name="Sam Lee", phone="+14155550123", earn_rate="1.5", stripe_customer_id="cus_Z9y8x7")


class CustomerIn(CustomerFields):
    external_id: ExternalId


def refusal_of(error: ValidationError) -> tuple[str | None, str]:
    """(field, reason) of a row's first validation error, as a report shows it: the field by its
    name (`reminder_offsets_days.0`), the reason without pydantic's "Value error, " prefix."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return field, first["msg"].removeprefix("Value error, ")
