"""The loyalty job family's activities: the points ledger, the reconciliation queue, the audit."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.worker import WorkerDeps


def worker_activities(deps: WorkerDeps) -> list[object]:
    """The activities the jobs worker registers for this family.

    The reconciliation workflow also calls `payment_intent_status` (PaymentActivities), which
    the worker registers when a Stripe key is set.
    """
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
