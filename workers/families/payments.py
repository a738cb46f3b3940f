"""Payments, a shared gateway: the Stripe activities the workflows call (subscriptions, PaymentIntents).

They call the process's one gateway (`ActivityDeps.stripe`), so a `jobs` worker needs STRIPE_SECRET_KEY:
without it the worker refuses to start (`requires`) rather than poll `jobs` with them unregistered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.families.registry import Family

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from config.settings import Settings


def _requires(settings: Settings) -> dict[str, list[str]]:
    return {} if settings.stripe_secret_key else {"jobs": ["STRIPE_SECRET_KEY not set"]}


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    if deps.stripe is None:
        from config.settings import SettingsError

        raise SettingsError("STRIPE_SECRET_KEY: required by the jobs worker (the payments activities)")
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
    requires=_requires,
    settings=("stripe_secret_key", "stripe_webhook_secret", "stripe_api_base", "pay_page_base_url"),
)
