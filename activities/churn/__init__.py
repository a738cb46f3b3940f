"""The churn job family's activities: cases, the company's nudge rules, audited actions.

The case workflow also calls `send_message` (messaging queue) and `extend_subscription` /
`cancel_subscription` (PaymentActivities, registered when a Stripe key is set).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.worker import WorkerDeps


def worker_activities(deps: WorkerDeps) -> list[object]:
    from activities.churn.cases import ChurnActivities

    cases = ChurnActivities(deps.engine)
    return [cases.load_case, cases.decide_nudge, cases.record_action]
