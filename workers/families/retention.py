"""Data retention: a daily sweep of what jobctl no longer needs to keep (never money or ledgers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.families.registry import Family

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from workers.schedules import ScheduleDefinition


def _workflows() -> list[type]:
    from workflows.retention import DataRetentionWorkflow

    return [DataRetentionWorkflow]


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    from activities.retention import RetentionActivities

    retention = RetentionActivities(deps.engine)
    return [
        retention.delete_webhook_events,
        retention.clear_message_payloads,
        retention.anonymise_recovery_actions,
        retention.delete_idempotency_keys,
        retention.delete_whatsapp_sessions,
    ]


def _schedules() -> list[ScheduleDefinition]:
    from schemas.retention import RetentionRequest
    from workers.schedules import ScheduleDefinition
    from workflows.retention import DataRetentionWorkflow

    return [
        ScheduleDefinition(
            schedule_id="data-retention",
            workflow=DataRetentionWorkflow.run,
            make_arg=lambda s: RetentionRequest(
                webhook_days=s.retention_webhook_days,
                message_days=s.retention_message_days,
                idempotency_hours=s.idempotency_retention_hours,
            ),
            workflow_id="retention/daily",
            summary="Daily data retention: old webhook ids, message provider data, ended members' actions, API keys'"
            " replays",
            daily_at=(2, 0),
            job_name="data-retention",
        )
    ]


FAMILY = Family(
    name="retention",
    workflows=_workflows,
    activities=_activities,
    schedules=_schedules,
    settings=(
        "retention_webhook_days",
        "retention_message_days",
        "idempotency_retention_hours",
        "idempotency_abandoned_seconds",
    ),
)
