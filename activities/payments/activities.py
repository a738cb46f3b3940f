"""The Stripe activities the workflows call, on the `jobs` queue (registered when STRIPE_SECRET_KEY is set).

`churn-case` reads, extends and cancels a member's subscription; `loyalty-reconcile` checks a
PaymentIntent before it applies points. Each activity is one call of the process's `StripeGateway`
(`gateway.py`), which owns the client, the idempotency keys (built from the request's business
key, so Temporal's retries replay at Stripe) and the error mapping (`ApplicationError` types the
retry policies know): the activity only gives it Temporal's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio import activity

from schemas.payments import (
    CancelSubscription,
    ExtendSubscription,
    PaymentIntentState,
    PaymentIntentStatus,
    SubscriptionCancellation,
    SubscriptionPeriod,
    SubscriptionState,
    SubscriptionStateRequest,
)

if TYPE_CHECKING:
    from activities.payments.gateway import StripeGateway


class PaymentActivities:
    def __init__(self, stripe: StripeGateway) -> None:
        self._stripe = stripe

    @activity.defn(name="subscription_state")
    async def subscription_state(self, request: SubscriptionStateRequest) -> SubscriptionState:
        """Read-only: the subscription now, so no late or stale event decides an irreversible step."""
        return await self._stripe.subscription_state(request)

    @activity.defn(name="extend_subscription")
    async def extend_subscription(self, request: ExtendSubscription) -> SubscriptionPeriod:
        """A trial extension, applied once per key; the membership's period end follows it."""
        return await self._stripe.extend_subscription(request)

    @activity.defn(name="cancel_subscription")
    async def cancel_subscription(self, request: CancelSubscription) -> SubscriptionCancellation:
        """Cancel now, or at the end of the period; one already cancelled is reported, not an error."""
        return await self._stripe.cancel_subscription(request)

    @activity.defn(name="payment_intent_status")
    async def payment_intent_status(self, request: PaymentIntentStatus) -> PaymentIntentState:
        """A PaymentIntent's status and what of it was refunded."""
        return await self._stripe.payment_intent_status(request)
