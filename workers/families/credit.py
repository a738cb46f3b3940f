"""Credit: payment reminders, guardrails (auto-pause), payment recording, the admin's tools."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from workers.cli.credit import credit_app, payments_app
from workers.families.registry import Family, routes_of

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from services import StripeHandler
    from workers.schedules import ScheduleDefinition


def _workflows() -> list[type]:
    from workflows.credit import (
        CreditGuardrailsWorkflow,
        PaymentRemindersWorkflow,
        RecordPaymentWorkflow,
    )

    return [PaymentRemindersWorkflow, CreditGuardrailsWorkflow, RecordPaymentWorkflow]


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    """Reminders link to the API's `/pay/{token}` (PUBLIC_BASE_URL); Stripe (`deps.stripe`) only
    expires the open session of a link they replace."""
    from activities.credit.guardrails import GuardrailActivities
    from activities.credit.payments import PaymentRecordingActivities
    from activities.credit.reminders import ReminderActivities

    reminders = ReminderActivities(deps.engine, deps.stripe, deps.settings.public_base_url)
    guardrails = GuardrailActivities(deps.engine)
    payments = PaymentRecordingActivities(deps.engine)
    return [reminders.reminder_page, reminders.mark_reminders_sent, guardrails.apply, payments.record]


def _schedules() -> list[ScheduleDefinition]:
    from services import credit as service
    from workers.schedules import ScheduleDefinition
    from workflows.credit import CreditGuardrailsWorkflow, PaymentRemindersWorkflow

    return [
        ScheduleDefinition(
            schedule_id="payment-reminders",
            workflow=PaymentRemindersWorkflow.run,
            make_arg=service.reminders_schedule_input,
            workflow_id="payment-reminders/daily",
            summary="Payment reminders: one message and one payment link per retailer with debits due today",
            daily_at=(10, 0),
            job_name="payment-reminders",
        ),
        ScheduleDefinition(
            schedule_id="credit-guardrails",
            workflow=CreditGuardrailsWorkflow.run,
            make_arg=service.guardrails_schedule_input,
            workflow_id="credit-guardrails/daily",
            summary="Credit guardrails: pause retailers past their limits, lift cleared system pauses",
            daily_at=(11, 0),
            job_name="credit-guardrails",
        ),
    ]


def _stripe_handlers(deps: ActivityDeps) -> Mapping[str, StripeHandler]:
    """Payments, refunds and disputes: each re-read at Stripe before the ledger moves."""
    from services.credit import stripe_handlers

    return stripe_handlers(deps.client, deps.settings, stripe=deps.stripe, engine=deps.engine)


FAMILY = Family(
    name="credit",
    cli=[("credit", credit_app), ("payments", payments_app)],
    workflows=_workflows,
    activities=_activities,
    schedules=_schedules,
    stripe_handlers=_stripe_handlers,
    routes=lambda: [*routes_of("credit")(), *routes_of("pay")()],  # /pay/{token}: the reminders' links,
    settings=(
        "credit_currency",
        "pause_on_dispute",
        "pay_link_token_per_minute",
        "pay_link_address_per_minute",
        "pay_link_stripe_cache_seconds",
    ),
    scopes={
        "credit:read": "the risk view, retailers' credit profiles and open payment links",
        "credit:write": "pause, unpause or block a retailer; change limits; adjustments; record payments",
    },
)
