"""The credit job family's activities: reminders, guardrails, payment recording."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.worker import WorkerDeps


def worker_activities(deps: WorkerDeps) -> list[object]:
    """The activities the jobs worker registers for this family (reminders need Stripe for their links)."""
    from activities.credit.guardrails import GuardrailActivities
    from activities.credit.payments import PaymentRecordingActivities
    from activities.credit.reminders import ReminderActivities

    reminders = ReminderActivities(deps.engine, deps.payments)
    guardrails = GuardrailActivities(deps.engine)
    payments = PaymentRecordingActivities(deps.engine)
    return [reminders.reminder_page, reminders.mark_reminders_sent, guardrails.apply, payments.record]
