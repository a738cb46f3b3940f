"""What a job family's activities (and Stripe webhook handlers) are built from, whichever process hosts them.

The worker builds one `ActivityDeps` and hands it to every family's registry entry
(`workers.families`), so activities name this type and never the process they run in; the webhook
receiver builds one for its Stripe handlers the same way.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.client import Client

    from activities.payments.gateway import StripeGateway
    from config.settings import Settings


@dataclass(frozen=True)
class ActivityDeps:
    client: Client
    settings: Settings
    engine: AsyncEngine
    stripe: StripeGateway | None = None
    """The process's one Stripe gateway, when STRIPE_SECRET_KEY is set (`open_stripe_gateway`;
    closed with `resources`): subscriptions, PaymentIntents, expiring a replaced link's session."""
    resources: AsyncExitStack = field(default_factory=AsyncExitStack)
    """What an activity class opened (an HTTP client's session) is closed here when the worker stops."""
