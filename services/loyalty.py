"""Loyalty from the outside: what the checkout path, `jobctl loyalty` and the schedules call.

`enqueue_failed_points` is the checkout path's fallback when its inline `apply_points_at_checkout`
failed: it records the item once per order and starts `loyalty-reconcile/{item_id}`. Calling it
twice for the same order is one item and one workflow.
"""

from __future__ import annotations

from datetime import UTC, date
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.loyalty.queue import insert_queue_item, start_reconciliation
from config.settings import Settings
from schemas import ids
from schemas.errors import Refused, failure_reason
from schemas.loyalty import (
    FailedPointsApplication,
    LoyaltyAuditRequest,
    LoyaltyAuditResult,
    LoyaltySweepRequest,
    QueuedItem,
    ReconcileResult,
    ReconcileStatus,
    ResolveManually,
    RetryNow,
)
from workflows.loyalty import LoyaltyIntegrityAuditWorkflow, LoyaltyReconciliationWorkflow


class LoyaltyRefused(Refused):
    """A signal or lookup that cannot apply (no such item, item already resolved); the message says why."""


async def enqueue_failed_points(
    client: Client,
    engine: AsyncEngine,
    customer_id: int,
    order_id: str | int,
    points_redeemed: int,
    order_total: Decimal | str | int,
    *,
    payment_intent_id: str | None = None,
    error: str | None = None,
    task_queue: str = "jobs",
) -> QueuedItem:
    """Queue an order whose points failed to apply, and start its reconciliation workflow.

    Idempotent by order: a second call returns the same item (and starts nothing while its
    workflow runs). Raises `pydantic.ValidationError` for bad input (negative points, a malformed
    PaymentIntent id) and `UnknownCustomer` for a customer that does not exist; nothing is written then.
    """
    failed = FailedPointsApplication(
        customer_id=customer_id,
        order_id=order_id,  # type: ignore[arg-type]
        points_redeemed=points_redeemed,
        order_total=order_total,  # type: ignore[arg-type]
        payment_intent_id=payment_intent_id,
        error=error[:500] if error else None,
    )
    item, created = await insert_queue_item(engine, failed)
    started = False
    if item.status == "PENDING":  # a NEEDS_REVIEW item's workflow is waiting for a person already
        started = await start_reconciliation(client, item, task_queue=task_queue)
    return QueuedItem(
        item_id=item.item_id,
        workflow_id=ids.loyalty_reconcile(item.item_id),
        status=item.status,
        created=created,
        started=started,
    )


async def retry_now(client: Client, item_id: int, actor_id: str) -> None:
    """Signal `retry_now`: another attempt now (validated here first: a bad actor id is a ValidationError)."""
    await _signal(client, item_id, "retry_now", RetryNow(actor_id=actor_id))


async def resolve_manually(
    client: Client, item_id: int, actor_id: str, note: str, *, points_adjustment: int | None = None
) -> None:
    """Signal `resolve_manually`: close the item by hand, recording who and why; a points adjustment
    (+ or -) is written through the ledger as it closes, once per item."""
    await _signal(
        client,
        item_id,
        "resolve_manually",
        ResolveManually(actor_id=actor_id, note=note, points_adjustment=points_adjustment),
    )


async def reconciliation_status(client: Client, item_id: int) -> ReconcileStatus:
    """The item's workflow status: queried while it runs, from its result once it has ended."""
    handle = client.get_workflow_handle(ids.loyalty_reconcile(item_id))
    try:
        described = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise LoyaltyRefused(
                f"item {item_id} has no reconciliation workflow ({ids.loyalty_reconcile(item_id)})",
                code="unknown_queue_item",
            ) from None
        raise
    if described.status == WorkflowExecutionStatus.RUNNING:
        return await handle.query(LoyaltyReconciliationWorkflow.status)
    result = await _result(client, item_id)
    return ReconcileStatus(
        item_id=item_id,
        customer_id=result.customer_id,
        status=result.status,
        phase="done",
        resolution=result.resolution,
    )


async def reconciliation_history(client: Client, item_id: int, *, limit: int = 60) -> list[dict[str, Any]]:
    """The item's workflow as a person reads it, from its event history (its first `limit` steps):
    each activity (checking the payment, applying, marking, resolving) with its outcome and, when it
    failed for good, why; each signal (who asked to retry or resolve); timers; the end. Raises
    RPCError as `reconciliation_status` does (NOT_FOUND: the item has no workflow)."""
    from temporalio.api.enums.v1 import EventType

    handle = client.get_workflow_handle(ids.loyalty_reconcile(item_id))
    scheduled: dict[int, str] = {}
    steps: list[dict[str, Any]] = []
    async for event in handle.fetch_history_events(page_size=200):
        kind, at = event.event_type, event.event_time.ToDatetime(tzinfo=UTC)
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
            continue
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            steps.append({"at": at, "what": scheduled.get(done.scheduled_event_id, "activity"), "outcome": "done"})
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed = event.activity_task_failed_event_attributes
            failure = failed.failure.cause if failed.failure.HasField("cause") else failed.failure
            why, kind_name = failure.message, failure.application_failure_info.type
            if kind_name and kind_name not in why:
                why = f"{kind_name}: {why}"
            steps.append(
                {
                    "at": at,
                    "what": scheduled.get(failed.scheduled_event_id, "activity"),
                    "outcome": "failed",
                    "detail": why[:300],
                }
            )
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signaled = event.workflow_execution_signaled_event_attributes
            step = {"at": at, "what": f"signal {signaled.signal_name}", "outcome": "received"}
            try:  # who asked: the payload's actor_id (through the client's codec, when payloads are encrypted)
                decoded = await client.data_converter.decode(signaled.input.payloads)
                if decoded and isinstance(decoded[0], dict) and decoded[0].get("actor_id"):
                    step["detail"] = f"by {str(decoded[0]['actor_id'])[:64]}"
            except Exception:  # noqa: BLE001 - an undecodable payload is shown without its actor, never an error
                pass
            steps.append(step)
        elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
            steps.append({"at": at, "what": "waiting", "outcome": "timer"})
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            steps.append({"at": at, "what": "workflow started", "outcome": "started"})
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            steps.append({"at": at, "what": "workflow completed", "outcome": "done"})
        if len(steps) >= limit:
            break
    return steps


async def run_audit(
    client: Client, audit_date: date, *, business_timezone: str = "UTC", task_queue: str = "jobs"
) -> LoyaltyAuditResult:
    """Run `loyalty-audit/{date}` now and wait for its report (joins the run already going, if any)."""
    return await client.execute_workflow(
        LoyaltyIntegrityAuditWorkflow.run,
        LoyaltyAuditRequest(audit_date=audit_date, business_timezone=business_timezone),
        id=ids.loyalty_audit(audit_date),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"Loyalty integrity audit for {audit_date.isoformat()} (manual)",
    )


# --- schedules (workers/schedules.py) --------------------------------------------------------


def loyalty_sweep_schedule_input(settings: Settings) -> LoyaltySweepRequest:
    """`loyalty-reconcile-sweep` (every 15 min) → LoyaltyReconcileSweepWorkflow.run."""
    return LoyaltySweepRequest()


def loyalty_audit_schedule_input(settings: Settings) -> LoyaltyAuditRequest:
    """`loyalty-integrity-audit` (04:00) → LoyaltyIntegrityAuditWorkflow.run; the date is the run's local day."""
    return LoyaltyAuditRequest(business_timezone=settings.business_timezone)


# --- helpers ---------------------------------------------------------------------------------


async def _signal(client: Client, item_id: int, signal: str, payload: BaseModel) -> None:
    try:
        await client.get_workflow_handle(ids.loyalty_reconcile(item_id)).signal(signal, payload)
        return
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
    result = await _result(client, item_id)  # no running workflow: say what became of the item
    raise LoyaltyRefused(
        f"item {item_id} is already {result.status} ({result.resolution}): its workflow has ended",
        code="queue_item_closed",
    )


async def _result(client: Client, item_id: int) -> ReconcileResult:
    handle = client.get_workflow_handle(ids.loyalty_reconcile(item_id), result_type=ReconcileResult)
    try:
        return await handle.result(follow_runs=False)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise LoyaltyRefused(
                f"item {item_id} has no reconciliation workflow ({ids.loyalty_reconcile(item_id)})",
                code="unknown_queue_item",
            ) from None
        raise
    except WorkflowFailureError as error:  # the activity's own reason, not "Activity task failed" (issue #33)
        message, kind = failure_reason(error.cause)
        raise LoyaltyRefused(f"item {item_id}'s workflow failed: {message}", code=kind) from None


# --- reading the queue (the HTTP API and `jobctl loyalty items`) ---------------------------------


async def list_items(
    engine: AsyncEngine, *, state: str | None = None, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    """Reconciliation items by state, oldest first (the review list: NEEDS_REVIEW)."""
    from sqlalchemy import select

    from schemas.tables import LoyaltyReconciliationQueueItem as Item

    query = select(*_item_columns())
    if state is not None:
        query = query.where(Item.status == state)
    async with engine.connect() as conn:
        rows = await conn.execute(query.order_by(Item.created_at, Item.id).limit(limit).offset(offset))
        return [dict(r._mapping) for r in rows]


async def queue_totals(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    """Per state (PENDING, NEEDS_REVIEW, RESOLVED): how many items, the points they redeem and
    their orders' total (the review queue's header)."""
    from sqlalchemy import func, select

    from schemas.tables import LoyaltyReconciliationQueueItem as Item

    none: dict[str, Any] = {"items": 0, "points": 0, "order_total": Decimal("0")}
    totals = {state: dict(none) for state in ("NEEDS_REVIEW", "PENDING", "RESOLVED")}
    query = select(Item.status, func.count(), func.sum(Item.points_redeemed), func.sum(Item.order_total)).group_by(
        Item.status
    )
    async with engine.connect() as conn:
        for state, items, points, total in await conn.execute(query):
            totals[state] = {"items": items, "points": points or 0, "order_total": total or Decimal("0")}
    return totals


# --- one item, its order and its customer (the console's item and ledger pages) -------------------


def _ledger_columns(t: Any) -> tuple[Any, ...]:
    return (t.id, t.type, t.points, t.balance_before, t.balance_after, t.reference_type, t.reference_id, t.created_at)


async def get_item(engine: AsyncEngine, item_id: int) -> dict[str, Any] | None:
    """One reconciliation item as `list_items` gives it, or None (its primary key)."""
    from sqlalchemy import select

    from schemas.tables import LoyaltyReconciliationQueueItem as Item

    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    *_item_columns(),
                ).where(Item.id == item_id)
            )
        ).first()
    return dict(row._mapping) if row else None


async def order_ledger(engine: AsyncEngine, order_id: str, item_id: int) -> list[dict[str, Any]]:
    """What the item's order did to its customer's points: the order's ledger rows (spent, earned,
    reversed) and a manual resolution's `adjusted` row, in order. Read by the ledger's unique key."""
    from sqlalchemy import and_, or_, select

    from schemas.tables import LoyaltyTransaction as T

    query = (
        select(*_ledger_columns(T))
        .where(
            or_(
                and_(T.reference_type == "order", T.reference_id == order_id),
                and_(T.reference_type == "reconciliation_item", T.reference_id == str(item_id)),
            )
        )
        .order_by(T.id)
        .limit(20)
    )
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


async def customer_ledger(
    engine: AsyncEngine, customer_id: int, *, limit: int = 25, offset: int = 0
) -> dict[str, Any] | None:
    """A customer (None when unknown) with its stored balance, the sum of its whole ledger, and a
    page of ledger rows newest first: the index `ix_loyalty_transactions_customer_id_created_at`."""
    from sqlalchemy import func, select

    from schemas.tables import Customer
    from schemas.tables import LoyaltyTransaction as T

    async with engine.connect() as conn:
        customer = (
            await conn.execute(
                select(Customer.id, Customer.name, Customer.external_id, Customer.loyalty_points).where(
                    Customer.id == customer_id
                )
            )
        ).first()
        if customer is None:
            return None
        totals = (
            await conn.execute(
                select(func.coalesce(func.sum(T.points), 0), func.count()).where(T.customer_id == customer_id)
            )
        ).one()
        rows = await conn.execute(
            select(*_ledger_columns(T))
            .where(T.customer_id == customer_id)
            .order_by(T.created_at.desc(), T.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return {
            "customer_id": customer.id,
            "name": customer.name,
            "external_id": customer.external_id,
            "balance": customer.loyalty_points,
            "ledger_sum": int(totals[0]),
            "entries": int(totals[1]),
            "rows": [dict(r._mapping) for r in rows],
        }


def _item_columns() -> tuple[Any, ...]:
    """A review item as the queue and an item's page read it (one list for both)."""
    from schemas.tables import LoyaltyReconciliationQueueItem as Item

    return (
        Item.id.label("item_id"),
        Item.customer_id,
        Item.order_reference.label("order_id"),
        Item.payment_intent_id,
        Item.points_redeemed,
        Item.order_total,
        Item.status,
        Item.resolution,
        Item.attempts,
        Item.last_error,
        Item.resolved_by,
        Item.resolved_at,
        Item.created_at,
        Item.updated_at,
    )
