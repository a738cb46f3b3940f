"""Starting and steering an order's clock: what the shop's backend (and `jobctl orders`) calls.

The database holds the clock (the `pending_orders` row), so a start answers from the database:
it writes (or reads) the row, which refuses an unknown or settled order with no Temporal call at
all, then starts `pending-order/{order_id}` and returns without waiting for its first task. One
database round trip and one start RPC: a checkout's answer never waits behind the worker's queue.
The workflow's first task registers the same row again (idempotent, the row keeps its clock), so
it computes the very expiry and follow-up time the caller was given. A second start of a running
clock attaches to it (`USE_EXISTING`) instead of starting another.

A row written whose start then failed (Temporal down) is a PENDING row no clock watches: a retry
of the start attaches to it, and the `order-expiry-sweep` starts its clock otherwise.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.messaging.outbox import QuietHours
from activities.orders import OrderNotPending, OrderRefused, UnknownOrder, register_pending
from schemas import ids, search_attributes
from schemas.orders import (
    LateOrderFailure,
    OrderCompleted,
    OrderFailed,
    OrderFailureResult,
    PendingOrderInput,
    PendingOrderResult,
    PendingOrderStatus,
    RegisterPendingOrder,
)
from workflows.orders import OrderFailureWorkflow, PendingOrderWorkflow


async def start_pending_order(
    client: Client,
    engine: AsyncEngine,
    order: PendingOrderInput,
    *,
    task_queue: str = "jobs",
    quiet_hours: QuietHours = QuietHours(),
) -> PendingOrderStatus:
    """Start the order's 24-hour clock, or attach to the one already running; idempotent by order id.

    Returns the clock's status (expires_at, follow_up_at) as the row says. Raises `UnknownOrder`
    for an order not in the database, `OrderNotPending` for one already settled and `OrderRefused`
    for a `retailer_id` that is not the order's (its `RetailerId` is always the order row's). `quiet_hours`
    must be the worker's (QUIET_HOURS_START/END), so the follow-up time told is the one it keeps.
    """
    record = await register_pending(
        engine,
        RegisterPendingOrder(
            order_id=order.order_id,
            created_at=order.created_at or datetime.now(UTC),
            follow_up_after=order.follow_up_after,
            ttl=order.ttl,
        ),
        quiet_hours,
    )
    if record.state != "PENDING":
        raise OrderNotPending(f"order {order.order_id} is already {record.state}")
    if order.retailer_id is not None and order.retailer_id != record.retailer_id:
        # The caller's word would have become the clock's RetailerId (issue #33): the order's row is
        # the truth. The row registered above is the order's own, so a corrected retry finds it.
        raise OrderRefused(f"order {order.order_id} is not retailer {order.retailer_id}'s")
    # The row's own clock, retailer and the record itself: the workflow keeps the clock told here
    # without reading the row again (no local activity in its first task).
    order = order.model_copy(
        update={
            "created_at": record.created_at,
            "retailer_id": record.retailer_id,
            "registered": record,
        }
    )
    try:
        await client.start_workflow(
            PendingOrderWorkflow.run,
            order,
            id=ids.pending_order(order.order_id),
            task_queue=task_queue,
            # A running clock is reused; a finished one is final, unless it failed or was terminated.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            search_attributes=_search_attributes(order),
            static_summary=f"Pending order {order.order_id} of retailer {order.retailer_id}",
        )
    except (WorkflowAlreadyStartedError, RPCError) as error:
        # Some servers (the time-skipping one) report the refusal as a bare ALREADY_EXISTS status.
        if isinstance(error, RPCError) and error.status != RPCStatusCode.ALREADY_EXISTS:
            raise
        ended = await _result(client, order.order_id)  # only a clock that ended normally refuses a restart
        raise OrderNotPending(f"order {order.order_id} is already {ended.state}") from None
    return PendingOrderStatus.of(record.order_id, record.state, record, record.follow_up_sent_at)


async def complete_order(client: Client, order_id: int, *, actor_id: str | None = None) -> None:
    """Signal `completed`: COMPLETED, or RECOVERED if the follow-up went out first."""
    await _signal(client, order_id, "completed", OrderCompleted(actor_id=actor_id))


async def fail_order(
    client: Client, order_id: int, reason: str, *, task_queue: str = "jobs", messaging_task_queue: str = "messaging"
) -> OrderFailureResult | None:
    """The order is failed, its credit debit reversed, and the retailer told.

    While its clock runs: the `failed` signal (returns None; the clock does it). Once the clock
    has ended (a delivery that failed after checkout completed): `order-failure/{order_id}` does
    it and what it wrote is returned as soon as it is written, the retailer's message going out
    on its own (held by quiet hours or the brake); a second report reverses nothing twice and
    messages once."""
    failed = OrderFailed(reason=reason)  # ValidationError on an empty reason
    try:
        await _signal(client, order_id, "failed", failed)
    except OrderNotPending:
        pass
    else:
        return None
    late = LateOrderFailure(order_id=order_id, reason=failed.reason, messaging_task_queue=messaging_task_queue)
    update_id = f"failed-{uuid.uuid4().hex}"
    start = WithStartWorkflowOperation(
        OrderFailureWorkflow.run,
        late,
        id=f"order-failure/{order_id}",
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        memo={"reported_by": update_id},  # the update that came with the start: the one that changed it
        static_summary=f"Order {order_id} failed after its clock ended",
    )
    try:
        # Answered once the failure is written (the `applied` update), not once the retailer was
        # told: quiet hours hold `order_failed` until morning (issue #33). The run tells them.
        return await client.execute_update_with_start_workflow(
            OrderFailureWorkflow.applied, start_workflow_operation=start, id=update_id
        )
    except WorkflowUpdateFailedError as error:  # refused by the database (no such order): nothing changed
        raise _refusal(error.cause) from None


async def order_status(client: Client, order_id: int) -> PendingOrderStatus:
    """The clock's status: queried while it runs, its result once it has ended."""
    handle = client.get_workflow_handle(ids.pending_order(order_id))
    try:
        described = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise UnknownOrder(f"order {order_id} has no clock: no workflow {ids.pending_order(order_id)}") from None
        raise
    if described.status == WorkflowExecutionStatus.RUNNING:
        return await handle.query(PendingOrderWorkflow.status)
    result = await _result(client, order_id)
    return PendingOrderStatus(order_id=order_id, state=result.state, follow_up_sent_at=result.follow_up_sent_at)


async def _signal(client: Client, order_id: int, signal: str, payload: object) -> None:
    try:
        await client.get_workflow_handle(ids.pending_order(order_id)).signal(signal, payload)
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
    else:
        return
    try:
        ended = await _result(client, order_id)
    except OrderRefused as refused:
        raise type(refused)(f"order {order_id} has no running clock to signal: {refused}") from None
    raise OrderNotPending(f"order {order_id} is already {ended.state}: its clock has ended")


async def _result(client: Client, order_id: int) -> PendingOrderResult:
    handle = client.get_workflow_handle(ids.pending_order(order_id), result_type=PendingOrderResult)
    try:
        return await handle.result(follow_runs=False)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise UnknownOrder(f"order {order_id} has no clock: no workflow {ids.pending_order(order_id)}") from None
        raise
    except WorkflowFailureError as error:
        raise _refusal(error.cause) from None


def _refusal(cause: BaseException | None) -> OrderRefused:
    if isinstance(cause, ActivityError):  # a workflow that failed with its activity's refusal
        cause = cause.cause
    if isinstance(cause, ApplicationError) and cause.type == "UnknownOrder":
        return UnknownOrder(cause.message)
    if isinstance(cause, ApplicationError) and cause.type == "OrderNotPending":
        return OrderNotPending(cause.message)
    return OrderRefused(f"the order's clock failed: {cause}")


def _search_attributes(order: PendingOrderInput) -> TypedSearchAttributes:
    pairs = [
        SearchAttributePair(search_attributes.ORDER_ID, str(order.order_id)),
        SearchAttributePair(search_attributes.CASE_STATUS, "PENDING"),
    ]
    if order.retailer_id is not None:
        pairs.append(SearchAttributePair(search_attributes.RETAILER_ID, str(order.retailer_id)))
    return TypedSearchAttributes(pairs)
