"""Payments, a shared gateway: Stripe customers, payment links, subscriptions, PaymentIntents.

Registered only when STRIPE_SECRET_KEY is set (`ActivityDeps.payments`).
"""

from __future__ import annotations

from typing import Any

from workers.families.registry import Family


def _activities(deps: Any) -> list[Any]:
    payments = deps.payments
    if payments is None:
        return []
    return [
        payments.ensure_customer,
        payments.create_payment_link,
        payments.extend_subscription,
        payments.cancel_subscription,
        payments.subscription_state,
        payments.payment_intent_status,
    ]


FAMILY = Family(
    name="payments", activities=_activities,
    settings=("stripe_secret_key", "stripe_webhook_secret", "stripe_api_base", "pay_page_base_url"),
)
