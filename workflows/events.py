"""Outbound event delivery: one long-lived run per subscription, `event-delivery/{subscription_id}`.

Each round is one `events_deliver` activity (the subscription's pending events in order, signed);
the run then waits: the head event's back-off when it failed (a durable timer, hours at most), or,
idle, until a `wake` signal or `poll_seconds`. It continues as new when Temporal suggests it or
after `ROUNDS_PER_RUN` rounds. It carries the subscription's id and counts only: the URL, the
secret and the events' payloads never enter its history.

`EventDeliverySweepWorkflow` (schedule `event-delivery-sweep`) starts the run of every active
subscription that has none: the safety net behind the start at creation.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows._common import db_retry

with workflow.unsafe.imports_passed_through():
    from activities.events.delivery import EventDeliveryActivities, EventSweepActivities
    from schemas.events import (
        DeliverEvents,
        DeliveryOutcome,
        EventDeliveryInput,
        EventDeliveryStatus,
        EventDeliverySweep,
        EventDeliverySweepResult,
    )

ROUNDS_PER_RUN = 500
DELIVER_TIMEOUT = timedelta(minutes=2)
"""An activity delivers for about 30 s (`BATCH_SECONDS`) plus one receiver's timeout."""
DELIVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)
"""The activity's own failures (the database away): a receiver's refusal is not one, it is the
activity's answer (`retry_after_seconds`). Past these attempts the run waits a poll and goes on."""


@workflow.defn
class EventDeliveryWorkflow:
    def __init__(self) -> None:
        self._woken = False
        self._status: EventDeliveryStatus | None = None

    @workflow.run
    async def run(self, request: EventDeliveryInput) -> EventDeliveryStatus:
        status = self._status = EventDeliveryStatus(
            subscription_id=request.subscription_id, delivered=request.delivered
        )
        poll = timedelta(seconds=request.poll_seconds)
        for _ in range(ROUNDS_PER_RUN):
            self._woken = False
            status.state = "delivering"
            try:
                outcome = await workflow.execute_activity_method(
                    EventDeliveryActivities.deliver,
                    DeliverEvents(subscription_id=request.subscription_id),
                    start_to_close_timeout=DELIVER_TIMEOUT,
                    heartbeat_timeout=timedelta(minutes=1),
                    retry_policy=DELIVER_RETRY,
                )
            except ActivityError:
                outcome = DeliveryOutcome(retry_after_seconds=request.poll_seconds)
            status.delivered += outcome.delivered
            status.given_up += outcome.given_up
            if outcome.stopped:
                status.state = "stopped"
                return status
            if outcome.more:
                continue
            if outcome.retry_after_seconds is not None:
                status.state = "backing_off"
                await workflow.sleep(timedelta(seconds=outcome.retry_after_seconds))
            else:
                status.state = "idle"
                try:
                    await workflow.wait_condition(lambda: self._woken, timeout=poll)
                except TimeoutError:
                    pass
            if workflow.info().is_continue_as_new_suggested():
                break
        workflow.continue_as_new(request.model_copy(update={"delivered": status.delivered}))

    @workflow.signal
    def wake(self) -> None:
        """New events or a replay: look now (a back-off in progress is kept)."""
        self._woken = True

    @workflow.query
    def status(self) -> EventDeliveryStatus | None:
        return self._status


@workflow.defn
class EventDeliverySweepWorkflow:
    @workflow.run
    async def run(self, sweep: EventDeliverySweep) -> EventDeliverySweepResult:
        return await workflow.execute_activity_method(
            EventSweepActivities.start_missing,
            sweep,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=db_retry(),
        )
