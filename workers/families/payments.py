"""Payments, a shared gateway: the Stripe activities the workflows call (subscriptions, PaymentIntents).

Registered only when STRIPE_SECRET_KEY is set: they call the process's one gateway (`ActivityDeps.stripe`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.families.registry import Family

if TYPE_CHECKING:
    from activities.deps import ActivityDeps


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    if deps.stripe is None:
        return []
    from activities.payments.activities import PaymentActivities

    payments = PaymentActivities(deps.stripe)
    return [
        payments.extend_subscription,
        payments.cancel_subscription,
        payments.subscription_state,
        payments.payment_intent_status,
    ]


FAMILY = Family(
    name="payments",
    activities=_activities,
    settings=("stripe_secret_key", "stripe_webhook_secret", "stripe_api_base", "pay_page_base_url"),
)
