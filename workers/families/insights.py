"""Insights: every retailer's 30-day stats and a friendly message, nightly; the weekly message to those who opted in."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.cli.insights import insights_app
from workers.families.registry import Family, routes_of

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from workers.schedules import ScheduleDefinition


def _workflows() -> list[type]:
    from workflows.insights import InsightsDeliveryWorkflow, InsightsRegenerationWorkflow

    return [InsightsRegenerationWorkflow, InsightsDeliveryWorkflow]


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    from activities.insights import InsightActivities

    activities = InsightActivities(deps.engine)
    return [activities.regenerate_insights_chunk, activities.insight_messages]


def _schedules() -> list[ScheduleDefinition]:
    from datetime import timedelta

    from schemas.insights import InsightsDeliveryRequest, InsightsRequest
    from workers.schedules import ScheduleDefinition
    from workflows.insights import InsightsDeliveryWorkflow, InsightsRegenerationWorkflow

    # Temporal appends the scheduled time to the action's workflow id: insights/nightly-2026-11-23T03:00:00Z.
    return [
        ScheduleDefinition(
            schedule_id="insights-nightly",
            workflow=InsightsRegenerationWorkflow.run,
            make_arg=lambda s: InsightsRequest(business_timezone=s.business_timezone),
            workflow_id="insights/nightly",
            summary="Nightly insight regeneration for every retailer",
            daily_at=(3, 0),
            job_name="insights",
        ),
        # Hourly, so each retailer's week's message goes in its own local morning (insights/weekly-...).
        ScheduleDefinition(
            schedule_id="insights-weekly",
            workflow=InsightsDeliveryWorkflow.run,
            make_arg=lambda s: InsightsDeliveryRequest(messaging_task_queue=s.messaging_task_queue),
            workflow_id="insights/weekly",
            summary="Weekly insights messages to opted-in retailers, at their local morning",
            every=timedelta(hours=1),
            job_name="insights-weekly",
        ),
    ]


FAMILY = Family(
    name="insights",
    cli=[("insights", insights_app)],
    workflows=_workflows,
    activities=_activities,
    schedules=_schedules,
    routes=routes_of("insights"),
    scopes={"insights:read": "a retailer's latest insight and message"},
)
