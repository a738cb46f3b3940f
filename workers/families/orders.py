"""Order recovery: each pending checkout's 24-hour clock, its follow-up, expiry and failure reversal."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from workers.cli.orders import orders_app
from workers.families.registry import Family, routes_of

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from workers.schedules import ScheduleDefinition


def _workflows() -> list[type]:
    from workflows.orders import (
        OrderExpirySweepWorkflow,
        OrderFailureWorkflow,
        PendingOrderWorkflow,
    )

    return [PendingOrderWorkflow, OrderExpirySweepWorkflow, OrderFailureWorkflow]


def _activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    from activities.messaging.outbox import QuietHours
    from activities.orders import OrderActivities, OrderSweepActivities
    from services.orders import start_pending_order

    s = deps.settings
    quiet_hours = QuietHours(s.quiet_hours_start, s.quiet_hours_end)
    orders = OrderActivities(deps.engine, quiet_hours)

    def start(client: Any, order: Any) -> Any:
        return start_pending_order(client, deps.engine, order, task_queue=s.task_queue, quiet_hours=quiet_hours)

    sweep = OrderSweepActivities(deps.engine, deps.client, start)
    return [
        orders.register_pending_order,
        orders.record_follow_up,
        orders.settle_pending_order,
        orders.handle_order_failure,
        sweep.expire_orphaned_orders,
        sweep.start_missing_order_workflows,
    ]


def _schedules() -> list[ScheduleDefinition]:
    from schemas.orders import OrderSweepRequest
    from workers.schedules import ScheduleDefinition
    from workflows.orders import OrderExpirySweepWorkflow

    return [
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
        )
    ]


FAMILY = Family(
    name="orders",
    cli=[("orders", orders_app)],
    workflows=_workflows,
    activities=_activities,
    schedules=_schedules,
    routes=routes_of("orders"),
    scopes={
        "orders:read": "show an order's clock, validate an order placement",
        "orders:write": "start, complete or fail an order's clock; place an order (a credit order's debit)",
    },
    settings=("order_followup_after", "order_ttl"),
)
