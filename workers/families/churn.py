"""Churn saver: a durable case per at-risk member, nudges, manual steps, incentives through Stripe."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from workers.cli.churn import churn_app
from workers.families.registry import Family, routes_of

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from services import StripeHandler


def _workflows() -> list[type]:
    from workflows.churn import ChurnCaseWorkflow

    return [ChurnCaseWorkflow]


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    """The case also calls `send_message` (messaging) and the subscription activities (payments)."""
    from activities.churn.cases import ChurnActivities

    cases = ChurnActivities(deps.engine)
    return [cases.load_case, cases.decide_nudge, cases.record_action]


def _stripe_handlers(deps: ActivityDeps) -> Mapping[str, StripeHandler]:
    """The handlers re-read the subscription at Stripe before opening a case (when a key is set)."""
    from services.churn import stripe_handlers

    return stripe_handlers(deps.client, deps.engine, deps.settings, stripe=deps.stripe)


FAMILY = Family(
    name="churn",
    cli=[("churn", churn_app)],
    workflows=_workflows,
    activities=_activities,
    stripe_handlers=_stripe_handlers,
    routes=lambda: [*routes_of("churn")(), *routes_of("manage")()],  # /manage/{token}: the nudges' links
    scopes={
        "churn:read": "list and show churn cases, read company settings",
        "churn:write": "open cases, nudge, incentives, end cases, change company settings",
    },
    settings=("actor_hash_key", "manage_link_secret", "manage_link_days", "manage_return_url"),
)
