"""Payloads of the Stripe gateway (`activities/payments/gateway.py`): what a workflow, the pay
route or the webhook receiver asks it for, and what came back.

Only business ids, Stripe object ids, amounts and statuses travel through Temporal: no names,
e-mails or phone numbers (workflow histories are visible in the UI). Amounts are exact
``Decimal`` major units (``150.25`` dollars); the gateway converts them to Stripe's integer
minor units and refuses anything that does not convert exactly.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

OwnerType = Literal["retailer", "member", "customer"]

_KEY = Field(
    min_length=1,
    max_length=200,
    pattern=r"^[A-Za-z0-9:_\-./]+$",
    description="from business ids, e.g. reminder:42:2026-11-23; the Stripe Idempotency-Key is built from it",
)
_CURRENCY = Field(default="usd", pattern=r"^[a-z]{3}$", description="ISO 4217, lower case, as Stripe spells it")


class StripeCustomer(BaseModel):
    """The owner's Stripe customer (`StripeGateway.ensure_customer`)."""

    owner_type: OwnerType
    owner_id: int
    stripe_customer_id: str
    created: bool = Field(description="False: the id was already stored on the owner's row")


class CheckoutSessionLine(BaseModel):
    """One line of Stripe's hosted Checkout page: what it is for (never a name) and its amount."""

    description: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(description="major units, > 0")


class CheckoutSessionRequest(BaseModel):
    """A Stripe Checkout Session (payment mode) for a retailer: what a click on a pay link asks for."""

    retailer_id: int = Field(ge=1)
    amount: Decimal = Field(description="major units, at most 2 decimals (0 for zero-decimal currencies), > 0")
    currency: str = _CURRENCY
    idempotency_key: str = _KEY
    description: str | None = Field(
        default=None, max_length=500, description="what the payment is for; never a name, e-mail or phone number"
    )
    lines: list[CheckoutSessionLine] = Field(
        default_factory=list, description="one per debit; empty: one line for `amount`. Lines must add up to `amount`"
    )
    metadata: dict[str, str] = Field(default_factory=dict, description="ids only (debit ids, a fingerprint)")
    locale: str | None = Field(default=None, description="the retailer's (BCP 47): the Checkout page's language")


class CheckoutSession(BaseModel):
    """A Stripe Checkout Session as Stripe has it (not our pay link: that is `tables.PaymentLink`)."""

    url: str = Field(description="Stripe's hosted page")
    checkout_session_id: str | None = Field(default=None, description="the Checkout Session's id (cs_...)")
    payment_intent_id: str | None = Field(default=None, description="the session's PaymentIntent, once Stripe made one")
    amount: Decimal
    currency: str
    stripe_customer_id: str
    status: str = Field(default="open", description="the Checkout Session's status: open, complete or expired")
    payment_status: str = Field(
        default="unpaid", description="the Checkout Session's payment_status: paid, unpaid, ..."
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="the Checkout Session's metadata as Stripe has it"
    )


class ExtendSubscription(BaseModel):
    membership_id: int = Field(ge=1)
    days: int = Field(ge=1, le=365)
    idempotency_key: str = _KEY


class SubscriptionPeriod(BaseModel):
    subscription_id: str
    status: str
    trial_end: datetime | None
    current_period_end: datetime | None = Field(
        description="when the member is next billed: the later of the period end and the trial end"
    )
    already_applied: bool = Field(default=False, description="this key's extension had been applied before")


class CancelSubscription(BaseModel):
    membership_id: int = Field(ge=1)
    idempotency_key: str = _KEY
    at_period_end: bool = Field(default=False, description="False: cancel now; True: set cancel_at_period_end")


class SubscriptionCancellation(BaseModel):
    subscription_id: str
    status: str
    cancel_at_period_end: bool
    canceled_at: datetime | None
    already_cancelled: bool = False


class PaymentIntentStatus(BaseModel):
    id: str = Field(pattern=r"^pi_[A-Za-z0-9_]+$")


class PaymentIntentState(BaseModel):
    id: str
    status: str = Field(description="Stripe's status: succeeded, processing, requires_payment_method, ...")
    amount: Decimal
    amount_refunded: Decimal = Field(description="sum of pending and succeeded refunds")
    currency: str
    refunded: bool = Field(description="any money was refunded (partially or fully)")
    fully_refunded: bool


class SubscriptionStateRequest(BaseModel):
    membership_id: int = Field(ge=1)


class SubscriptionState(BaseModel):
    """The member's subscription as Stripe has it now (re-read before opening a case or ending one)."""

    subscription_id: str
    status: str = Field(description="Stripe's status: active, trialing, past_due, unpaid, incomplete, canceled, ...")
    cancel_at_period_end: bool
    current_period_end: datetime | None

    @property
    def ended(self) -> bool:
        return self.status in ("canceled", "incomplete_expired")

    @property
    def paying(self) -> bool:
        """In good standing: nothing to save (no failed payment, no cancellation scheduled)."""
        return self.status in ("active", "trialing") and not self.cancel_at_period_end


# --- what the money events re-read at Stripe (issue #32) ------------------------------------------
# Amounts stay in Stripe's minor units here: a negative or unknown-currency amount is refused by
# the handler that reads it, never rounded.


class StripePaymentIntent(BaseModel):
    """A PaymentIntent as Stripe has it now (`StripeGateway.payment_intent`)."""

    id: str
    status: str = Field(description="succeeded, processing, requires_payment_method, canceled, ...")
    amount: int
    amount_received: int = 0
    currency: str
    customer: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    latest_charge: str | None = None


class StripeCharge(BaseModel):
    """A Charge as Stripe has it now (`StripeGateway.charge`): refunds read `amount_refunded`,
    which is cumulative, so a late or repeated event books only what is new."""

    id: str
    amount: int
    amount_refunded: int
    currency: str
    payment_intent: str | None = None
    refunded: bool = False
    disputed: bool = False
    status: str = "succeeded"


class StripeDispute(BaseModel):
    """A Dispute as Stripe has it now (`StripeGateway.dispute`)."""

    id: str
    charge: str
    payment_intent: str | None = None
    amount: int
    currency: str
    status: str = Field(description="warning_needs_response, needs_response, under_review, won, lost, ...")
