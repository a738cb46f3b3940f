"""Insight regeneration: every retailer's 30-day stats and a friendly message, nightly."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.cli.insights import insights_app
from workers.families.registry import Family, routes_of

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from workers.schedules import ScheduleDefinition


def _workflows() -> list[type]:
    from workflows.insights import InsightsRegenerationWorkflow

    return [InsightsRegenerationWorkflow]


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    from activities.insights import InsightActivities

    return [InsightActivities(deps.engine).regenerate_insights_chunk]


def _schedules() -> list[ScheduleDefinition]:
    from schemas.insights import InsightsRequest
    from workers.schedules import ScheduleDefinition
    from workflows.insights import InsightsRegenerationWorkflow

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
        )
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
