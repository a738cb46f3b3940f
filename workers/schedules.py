"""Schedules as code: one registry, applied idempotently (ARCHITECTURE §5).

`apply` creates a missing schedule and updates an existing one in place, keeping its
paused state and note, so an operator who paused a schedule in the UI is not overruled
by the next deploy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from schemas import search_attributes
from schemas.insights import InsightsRequest
from schemas.orders import OrderSweepRequest
from workers import credit_api, loyalty_api
from workers.settings import Settings
from workflows.credit import CreditGuardrailsWorkflow, PaymentRemindersWorkflow
from workflows.insights import InsightsRegenerationWorkflow
from workflows.loyalty import LoyaltyIntegrityAuditWorkflow, LoyaltyReconcileSweepWorkflow
from workflows.orders import OrderExpirySweepWorkflow

CATCHUP_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class ScheduleDefinition:
    schedule_id: str
    workflow: Any
    make_arg: Callable[[Settings], Any]
    workflow_id: str
    summary: str
    daily_at: tuple[int, int] | None = None
    every: timedelta | None = None
    jitter: timedelta | None = None
    job_name: str = field(default="")

    def spec(self, settings: Settings) -> ScheduleSpec:
        if self.daily_at:
            hour, minute = self.daily_at
            return ScheduleSpec(
                calendars=[ScheduleCalendarSpec(hour=[ScheduleRange(hour)], minute=[ScheduleRange(minute)])],
                time_zone_name=settings.business_timezone,
                jitter=self.jitter,
            )
        assert self.every is not None
        return ScheduleSpec(intervals=[ScheduleIntervalSpec(every=self.every)], jitter=self.jitter)

    def schedule(self, settings: Settings, state: ScheduleState | None = None) -> Schedule:
        return Schedule(
            action=ScheduleActionStartWorkflow(
                self.workflow,
                self.make_arg(settings),
                id=self.workflow_id,
                task_queue=settings.task_queue,
                static_summary=self.summary,
                typed_search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(search_attributes.JOB_NAME, self.job_name or self.schedule_id)]
                ),
            ),
            spec=self.spec(settings),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=CATCHUP_WINDOW),
            state=state or ScheduleState(note="created by jobctl schedules apply"),
        )


# Temporal appends the scheduled time to the action's workflow id: insights/nightly-2026-11-23T03:00:00Z.
SCHEDULES: tuple[ScheduleDefinition, ...] = (
    ScheduleDefinition(
        schedule_id="insights-nightly",
        workflow=InsightsRegenerationWorkflow.run,
        make_arg=lambda s: InsightsRequest(business_timezone=s.business_timezone),
        workflow_id="insights/nightly",
        summary="Nightly insight regeneration for every retailer",
        daily_at=(3, 0),
        job_name="insights",
    ),
    ScheduleDefinition(
        schedule_id="order-expiry-sweep",
        workflow=OrderExpirySweepWorkflow.run,
        make_arg=lambda s: OrderSweepRequest(
            follow_up_after=s.order_followup_after, messaging_task_queue=s.messaging_task_queue
        ),
        workflow_id="order-expiry-sweep/run",  # + the time: order-expiry-sweep/run-2026-11-23T06:00:00Z
        summary="Expire pending orders no workflow watches; start missing order workflows",
        every=timedelta(hours=6),
        job_name="order-expiry-sweep",
    ),
    ScheduleDefinition(
        schedule_id="payment-reminders",
        workflow=PaymentRemindersWorkflow.run,
        make_arg=credit_api.reminders_schedule_input,
        workflow_id="payment-reminders/daily",
        summary="Payment reminders: one message and one payment link per retailer with debits due today",
        daily_at=(10, 0),
        job_name="payment-reminders",
    ),
    ScheduleDefinition(
        schedule_id="credit-guardrails",
        workflow=CreditGuardrailsWorkflow.run,
        make_arg=credit_api.guardrails_schedule_input,
        workflow_id="credit-guardrails/daily",
        summary="Credit guardrails: pause retailers past their limits, lift cleared system pauses",
        daily_at=(11, 0),
        job_name="credit-guardrails",
    ),
    ScheduleDefinition(
        schedule_id="loyalty-reconcile-sweep",
        workflow=LoyaltyReconcileSweepWorkflow.run,
        make_arg=loyalty_api.loyalty_sweep_schedule_input,
        workflow_id="loyalty-reconcile-sweep/run",
        summary="Start a reconciliation for every PENDING loyalty item that has none",
        every=timedelta(minutes=15),
        job_name="loyalty-reconcile-sweep",
    ),
    ScheduleDefinition(
        schedule_id="loyalty-integrity-audit",
        workflow=LoyaltyIntegrityAuditWorkflow.run,
        make_arg=loyalty_api.loyalty_audit_schedule_input,
        workflow_id="loyalty-audit/nightly",
        summary="Nightly audit: loyalty balances that differ from their ledger (reported, never rewritten)",
        daily_at=(4, 0),
        job_name="loyalty-integrity-audit",
    ),
)


def by_id(schedule_id: str) -> ScheduleDefinition:
    for definition in SCHEDULES:
        if definition.schedule_id == schedule_id:
            return definition
    known = ", ".join(d.schedule_id for d in SCHEDULES)
    raise KeyError(f"unknown schedule {schedule_id!r} (known: {known})")


async def apply(client: Client, settings: Settings) -> list[tuple[str, str]]:
    """Create or update every schedule; returns (id, 'created'|'updated') pairs."""
    outcome = []
    for definition in SCHEDULES:
        try:
            await client.create_schedule(definition.schedule_id, definition.schedule(settings))
            outcome.append((definition.schedule_id, "created"))
        except ScheduleAlreadyRunningError:
            handle = client.get_schedule_handle(definition.schedule_id)

            def keep_state(current: ScheduleUpdateInput, d: ScheduleDefinition = definition) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=d.schedule(settings, state=current.description.schedule.state))

            await handle.update(keep_state)
            outcome.append((definition.schedule_id, "updated"))
    return outcome
