"""Loyalty: the row-locked points ledger, reconciliation retries with human review, the nightly audit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from workers.cli.loyalty import loyalty_app
from workers.families.registry import Family, routes_of

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from workers.schedules import ScheduleDefinition


def _workflows() -> list[type]:
    from workflows.loyalty import (
        LoyaltyIntegrityAuditWorkflow,
        LoyaltyReconcileSweepWorkflow,
        LoyaltyReconciliationWorkflow,
    )

    return [LoyaltyReconciliationWorkflow, LoyaltyReconcileSweepWorkflow, LoyaltyIntegrityAuditWorkflow]


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    """The reconciliation also calls `payment_intent_status` (payments)."""
    from activities.loyalty.audit import LoyaltyAuditActivities
    from activities.loyalty.ledger import LoyaltyLedgerActivities
    from activities.loyalty.queue import LoyaltyQueueActivities, LoyaltySweepActivities

    ledger = LoyaltyLedgerActivities(deps.engine)
    queue = LoyaltyQueueActivities(deps.engine)
    sweep = LoyaltySweepActivities(deps.engine, deps.client, deps.settings.task_queue)
    audit = LoyaltyAuditActivities(deps.engine)
    return [
        ledger.apply_order_points,
        ledger.reverse_order_points,
        queue.load_item,
        queue.apply_queued_points,
        queue.mark_needs_review,
        queue.resolve_item,
        queue.reopen_item,
        sweep.start_missing_reconciliations,
        audit.audit,
    ]


def _schedules() -> list[ScheduleDefinition]:
    from services import loyalty as service
    from workers.schedules import ScheduleDefinition
    from workflows.loyalty import (
        LoyaltyIntegrityAuditWorkflow,
        LoyaltyReconcileSweepWorkflow,
    )

    return [
        ScheduleDefinition(
            schedule_id="loyalty-reconcile-sweep",
            workflow=LoyaltyReconcileSweepWorkflow.run,
            make_arg=service.loyalty_sweep_schedule_input,
            workflow_id="loyalty-reconcile-sweep/run",
            summary="Start a reconciliation for every PENDING loyalty item that has none",
            every=timedelta(minutes=15),
            job_name="loyalty-reconcile-sweep",
        ),
        ScheduleDefinition(
            schedule_id="loyalty-integrity-audit",
            workflow=LoyaltyIntegrityAuditWorkflow.run,
            make_arg=service.loyalty_audit_schedule_input,
            workflow_id="loyalty-audit/nightly",
            summary="Nightly audit: loyalty balances that differ from their ledger (reported, never rewritten)",
            daily_at=(4, 0),
            job_name="loyalty-integrity-audit",
        ),
    ]


FAMILY = Family(
    name="loyalty",
    cli=[("loyalty", loyalty_app)],
    workflows=_workflows,
    activities=_activities,
    schedules=_schedules,
    routes=routes_of("loyalty"),
    scopes={
        "loyalty:read": "list and show reconciliation items",
        "loyalty:write": "apply points, queue failures, retry or resolve items, run the audit",
    },
)
