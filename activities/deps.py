"""What a job family's activities are built from, whichever process hosts them.

The worker builds one `ActivityDeps` and hands it to every family's registry entry
(`workers.families`), so activities name this type and never the process they run in.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.client import Client

    from activities.payments.activities import PaymentActivities
    from config.settings import Settings


@dataclass(frozen=True)
class ActivityDeps:
    client: Client
    settings: Settings
    engine: AsyncEngine
    payments: PaymentActivities | None = None
    """Stripe, when STRIPE_SECRET_KEY is set (reminder links, subscriptions, PaymentIntents)."""
    resources: AsyncExitStack = field(default_factory=AsyncExitStack)
    """What an activity class opened (an HTTP client's session) is closed here when the worker stops."""
