"""Outbound events: the outbox (written with each change), signed delivery per subscription, operators' tools."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from workers.cli.events import events_app
from workers.families.registry import Family, routes_of

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from workers.schedules import ScheduleDefinition


def _workflows() -> list[type]:
    from workflows.events import EventDeliverySweepWorkflow, EventDeliveryWorkflow

    return [EventDeliveryWorkflow, EventDeliverySweepWorkflow]


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    from activities.events.delivery import EventDeliveryActivities, EventSweepActivities

    delivery = EventDeliveryActivities(deps.engine, deps.settings)
    deps.resources.push_async_callback(delivery.close)
    sweep = EventSweepActivities(deps.engine, deps.client, deps.settings.task_queue)
    return [delivery.deliver, sweep.start_missing]


def _schedules() -> list[ScheduleDefinition]:
    from schemas.events import EventDeliverySweep
    from workers.schedules import ScheduleDefinition
    from workflows.events import EventDeliverySweepWorkflow

    return [
        ScheduleDefinition(
            schedule_id="event-delivery-sweep",
            workflow=EventDeliverySweepWorkflow.run,
            make_arg=lambda s: EventDeliverySweep(poll_seconds=s.event_poll_seconds),
            workflow_id="event-delivery-sweep/run",
            summary="Start the delivery run of every active event subscription that has none",
            every=timedelta(minutes=15),
            job_name="event-delivery-sweep",
        )
    ]


FAMILY = Family(
    name="events",
    cli=[("events", events_app)],
    workflows=_workflows,
    activities=_activities,
    schedules=_schedules,
    routes=routes_of("events"),
    scopes={
        "events:read": "list outbound events and event subscriptions",
        "events:write": "create and delete event subscriptions, replay an event",
    },
    settings=(
        "event_poll_seconds",
        "event_retry_initial_seconds",
        "event_retry_max_seconds",
        "event_give_up_hours",
        "event_http_timeout_seconds",
    ),
)
