"""Order recovery: the `pending_orders` row's transitions, failure reversal, and the sweep.

Every write is conditional on the row still being where the caller expects it
(`WHERE status = 'PENDING'`, `ON CONFLICT DO NOTHING`), so Temporal's at-least-once
activities and a sweep racing a workflow never apply a transition twice. Each status change
writes its `audit_log` row in the same transaction (docs/ARCHITECTURE.md §5). The money of a failed
order (the reversal of its debit) and every audit row are the credit ledger's
(`activities.credit.ledger`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.credit import ledger
from activities.database import autocommit
from activities.errors import permanent
from activities.messaging.outbox import QuietHours
from schemas import ids
from schemas import text as text_rules
from schemas.errors import Refused
from schemas.orders import (
    FollowUpSent,
    OrderFailure,
    OrderFailureResult,
    OrderState,
    OrderSweepPage,
    OrderSweepPageResult,
    PendingOrderInput,
    PendingOrderRecord,
    RegisterPendingOrder,
    SettleOrder,
)

log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------- SQL

# The row is created from the order at checkout start, unless the backend (or the demo seed)
# already wrote it: an existing row keeps its own clock. One statement, so a checkout costs one
# round trip in autocommit: the new row comes from RETURNING (the statement's snapshot does not
# see it), an existing one from the table.
REGISTER_PENDING_SQL = text(
    """
WITH inserted AS (
    INSERT INTO pending_orders (order_id, retailer_id, amount, status, created_at, expires_at)
    SELECT o.id, o.retailer_id, o.total_amount, 'PENDING', :created_at, :created_at + :ttl
    FROM orders o
    WHERE o.id = :order_id AND o.status = 'PENDING'
    ON CONFLICT (order_id) DO NOTHING
    RETURNING order_id, retailer_id, status, created_at, expires_at, follow_up_sent_at
), found AS (
    SELECT * FROM inserted
    UNION ALL
    SELECT order_id, retailer_id, status, created_at, expires_at, follow_up_sent_at
    FROM pending_orders WHERE order_id = :order_id AND NOT EXISTS (SELECT 1 FROM inserted)
)
SELECT f.order_id, f.retailer_id, f.status, f.created_at, f.expires_at, f.follow_up_sent_at, r.timezone
FROM found f JOIN retailers r ON r.id = f.retailer_id
"""
)

# A row another starter inserted while REGISTER_PENDING_SQL ran: committed after the statement's
# snapshot, so only a second statement sees it.
PENDING_WITH_TIMEZONE_SQL = text(
    """
SELECT p.order_id, p.retailer_id, p.status, p.created_at, p.expires_at, p.follow_up_sent_at, r.timezone
FROM pending_orders p JOIN retailers r ON r.id = p.retailer_id
WHERE p.order_id = :order_id
"""
)

# Settle one row (only from PENDING) and audit it, in one statement.
SETTLE_SQL = text(
    """
WITH settled AS (
    UPDATE pending_orders
    SET status = :state,
        completed_at = CASE WHEN :state IN ('COMPLETED', 'RECOVERED') THEN now() END,
        expired_at = CASE WHEN :state = 'EXPIRED' THEN now() END
    WHERE order_id = :order_id AND status = 'PENDING'
    RETURNING order_id, retailer_id, status
), audited AS (
"""
    + ledger.audit_rows(
        "settled",
        retailer_id="retailer_id",
        action="'pending_order_' || lower(status)",
        reference="'order:' || order_id",
        old="""'{"status": "PENDING"}'::jsonb""",
        new="jsonb_build_object('status', status)",
        performed_by="'system'",
        reason=":reason",
    )
    + """
)
SELECT status FROM settled
"""
)

# The sweep's expiry of a whole page at once; `expires_at <= :as_of` again, in case a row moved.
EXPIRE_PAGE_SQL = text(
    """
WITH expired AS (
    UPDATE pending_orders
    SET status = 'EXPIRED', expired_at = now()
    WHERE order_id = ANY(:order_ids) AND status = 'PENDING' AND expires_at <= :as_of
    RETURNING order_id, retailer_id
), audited AS (
"""
    + ledger.audit_rows(
        "expired",
        retailer_id="retailer_id",
        action="'pending_order_expired'",
        reference="'order:' || order_id",
        old="""'{"status": "PENDING"}'::jsonb""",
        new="""'{"status": "EXPIRED"}'::jsonb""",
        performed_by="'system'",
        reason="'expired by the sweep: no workflow was watching it'",
    )
    + """
)
SELECT count(*) FROM expired
"""
)

# A failure locks its retailer, then the order: the reversal of the order's debit is a ledger
# write, and every ledger write of a retailer holds its row lock (activities/credit/ledger.py).
# Retailer first, as placing an order does: the other order deadlocked a placement retried while
# its order failed (tests/activities/test_credit_ledger_sequences.py).
RETAILER_OF_ORDER = text("SELECT retailer_id FROM orders WHERE id = :id")
LOCK_ORDER = text("SELECT id, retailer_id, status FROM orders WHERE id = :id FOR UPDATE")

STALE_PAGE_SQL = text(
    """
SELECT order_id FROM pending_orders
WHERE status = 'PENDING' AND expires_at <= :as_of AND order_id > :after
ORDER BY order_id LIMIT :page_size
"""
)

LIVE_PAGE_SQL = text(
    """
SELECT order_id, retailer_id, created_at FROM pending_orders
WHERE status = 'PENDING' AND expires_at > :as_of AND order_id > :after
ORDER BY order_id LIMIT :page_size
"""
)


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("orders.unknown_timezone", timezone=name)
        return ZoneInfo("UTC")


# --------------------------------------------------------------------------- one order's clock


class OrderRefused(Refused):
    """A start or signal that cannot apply to the order; the message says why, for people."""


class UnknownOrder(OrderRefused):
    """No such order, or no clock for it."""


class OrderNotPending(OrderRefused):
    """The order is settled already (COMPLETED, RECOVERED, EXPIRED, FAILED, or not a checkout)."""


async def register_pending(
    engine: AsyncEngine, request: RegisterPendingOrder, quiet_hours: QuietHours = QuietHours()
) -> PendingOrderRecord:
    """Create the order's row if new and say when its follow-up is due in the retailer's local time.

    The database holds the clock: an existing row keeps its `created_at` and `expires_at`, so the
    starter (`services.orders.start_pending_order`, before it starts the workflow) and the
    workflow's first task (the `register_pending_order` local activity) read the same clock.
    A row settled already is returned as it is (its `state` says so). Raises `UnknownOrder` or
    `OrderNotPending` for an order that cannot have a clock.
    """
    async with autocommit(engine).connect() as conn:
        row = (
            await conn.execute(
                REGISTER_PENDING_SQL,
                {"order_id": request.order_id, "created_at": request.created_at, "ttl": request.ttl},
            )
        ).first()
        if row is None:
            row = (await conn.execute(PENDING_WITH_TIMEZONE_SQL, {"order_id": request.order_id})).first()
        if row is None:
            raise await _not_pending(conn, request.order_id)
    local_due = (row.created_at + request.follow_up_after).astimezone(_zone(row.timezone))
    return PendingOrderRecord(
        order_id=row.order_id,
        retailer_id=row.retailer_id,
        state=row.status,
        created_at=row.created_at,
        expires_at=row.expires_at,
        follow_up_at=quiet_hours.next_allowed(local_due).astimezone(UTC),
        follow_up_sent_at=row.follow_up_sent_at,
    )


async def _not_pending(conn: AsyncConnection, order_id: int) -> OrderRefused:
    status = await conn.scalar(text("SELECT status FROM orders WHERE id = :id"), {"id": order_id})
    if status is None:
        return UnknownOrder(f"order {order_id} does not exist")
    return OrderNotPending(f"order {order_id} is {status}, not a pending checkout")


class OrderActivities:
    """Activities of `PendingOrderWorkflow`; the engine and quiet hours are injected by the worker."""

    def __init__(self, engine: AsyncEngine, quiet_hours: QuietHours = QuietHours()) -> None:
        self._engine = engine
        self._quiet_hours = quiet_hours

    @activity.defn(name="register_pending_order")
    async def register_pending_order(self, request: RegisterPendingOrder) -> PendingOrderRecord:
        """`register_pending`, as the workflow's first step (a local activity, in its first task).

        After `start_pending_order` it only reads the row its starter wrote; a refusal is
        permanent (the type names it: UnknownOrder, OrderNotPending), so the workflow fails at once.
        """
        try:
            return await register_pending(self._engine, request, self._quiet_hours)
        except OrderRefused as refusal:
            raise permanent(type(refusal).__name__, str(refusal)) from None

    @activity.defn(name="record_follow_up")
    async def record_follow_up(self, sent: FollowUpSent) -> None:
        """Remember the follow-up went out, so a restarted clock never sends it again."""
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE pending_orders SET follow_up_sent_at = :sent_at"
                    " WHERE order_id = :order_id AND follow_up_sent_at IS NULL"
                ),
                {"order_id": sent.order_id, "sent_at": sent.sent_at},
            )

    @activity.defn(name="settle_pending_order")
    async def settle_pending_order(self, request: SettleOrder) -> OrderState:
        """COMPLETED, RECOVERED or EXPIRED, only from PENDING; returns the row's state either way."""
        async with self._engine.begin() as conn:
            params = {
                "order_id": request.order_id,
                "state": request.state,
                "reason": f"pending order {request.state.lower()}",
            }
            state = await conn.scalar(SETTLE_SQL, params)
            if state is None:
                state = await conn.scalar(text("SELECT status FROM pending_orders WHERE order_id = :order_id"), params)
        if state is None:
            raise permanent("UnknownOrder", f"order {request.order_id} has no pending row")
        if state != request.state:
            log.info("orders.already_settled", order_id=request.order_id, wanted=request.state, state=state)
        return state

    @activity.defn(name="handle_order_failure")
    async def handle_order_failure(self, failure: OrderFailure) -> OrderFailureResult:
        """Fail the order and give back its credit, all in one transaction; a repeat changes nothing.

        The reversal is the credit ledger's (`ledger.reverse_order_debit`): the reversing CREDIT is
        unique per (order_id, type), so it is written at most once; it is stored fully allocated
        (CLEARED) to the debit it reverses, which is closed with it, so reminders stop chasing it
        and no later payment allocation counts it again; available credit is recomputed by the
        ledger's one rule. The order's retailer is locked with the order, as every ledger write
        needs.

        A reason PostgreSQL cannot store (a NUL) fails at once, naming why (issue #33): retried,
        the same INSERT fails the same way 45 times and the debit stays unreversed meanwhile.
        """
        if (why := text_rules.problem(failure.reason)) is not None:
            raise permanent("UnstorableText", f"order {failure.order_id}: the failure reason {why}")
        async with self._engine.begin() as conn:
            retailer_id = await conn.scalar(RETAILER_OF_ORDER, {"id": failure.order_id})
            if retailer_id is not None:  # an order's retailer never changes
                await ledger.lock_retailer(conn, retailer_id)
            order = (await conn.execute(LOCK_ORDER, {"id": failure.order_id})).first()
            if order is None:
                raise permanent("UnknownOrder", f"order {failure.order_id} does not exist")
            old: dict[str, Any] = {"order_status": order.status}
            new: dict[str, Any] = {}
            if await self._fail_order(conn, failure):
                new["order_status"] = "FAILED"
            pending_was = await self._fail_pending(conn, failure.order_id)
            if pending_was:
                old["pending_status"], new["pending_status"] = pending_was, "FAILED"
            reversal = await ledger.reverse_order_debit(conn, failure.order_id, actor=failure.performed_by)
            currency = await conn.scalar(ledger.ACCOUNT_CURRENCY, {"r": order.retailer_id}) if reversal else None
            if reversal:
                old["available_credit"], new["available_credit"] = (
                    _text(reversal.available_before),
                    _text(reversal.available_after),
                )
                new["reversed_amount"] = str(reversal.amount)
                new["returned_to_balance"] = str(reversal.returned)
            if new:
                await ledger.audit(
                    conn,
                    order.retailer_id,
                    "order_failed",
                    actor=failure.performed_by,
                    reference=f"order:{failure.order_id}",
                    old=old,
                    new=new,
                    reason=failure.reason,
                )
        result = OrderFailureResult(
            order_id=failure.order_id,
            retailer_id=order.retailer_id,
            changed=bool(new),
            reversed_amount=reversal.amount if reversal else None,
            returned_to_balance=reversal.returned if reversal else None,
            currency=currency,
        )
        log.info(
            "orders.failed", order_id=failure.order_id, changed=result.changed, reversed=str(result.reversed_amount)
        )
        return result

    @staticmethod
    async def _fail_order(conn: AsyncConnection, failure: OrderFailure) -> bool:
        result = await conn.execute(
            text(
                "UPDATE orders SET status = 'FAILED', failed_at = now(), failure_reason = :reason"
                " WHERE id = :id AND status <> 'FAILED'"
            ),
            {"id": failure.order_id, "reason": failure.reason},
        )
        return result.rowcount == 1

    @staticmethod
    async def _fail_pending(conn: AsyncConnection, order_id: int) -> str | None:
        return await conn.scalar(
            text(
                "UPDATE pending_orders SET status = 'FAILED' WHERE order_id = :id AND status = 'PENDING'"
                " RETURNING 'PENDING'"
            ),
            {"id": order_id},
        )


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


# --------------------------------------------------------------------------- the safety-net sweep

Starter = Callable[[Client, PendingOrderInput], Awaitable[object]]
"""How the sweep starts a clock: `services.orders.start_pending_order` bound to the engine, the
jobs queue and the quiet hours."""


class OrderSweepActivities:
    """The sweep's pages. It asks Temporal, not the database, whether a clock is running.

    The Temporal client and the starter are injected by the worker (activities never import
    `workers`): a row whose workflow is running is never touched.
    """

    def __init__(self, engine: AsyncEngine, client: Client, start: Starter) -> None:
        self._engine = engine
        self._client = client
        self._start = start

    @activity.defn(name="expire_orphaned_orders")
    async def expire_orphaned_orders(self, page: OrderSweepPage) -> OrderSweepPageResult:
        """Expire one page of PENDING rows past `expires_at` that no running workflow watches."""
        async with self._engine.connect() as conn:
            found = list(
                (
                    await conn.execute(
                        STALE_PAGE_SQL, {"as_of": page.as_of, "after": page.after_order_id, "page_size": page.page_size}
                    )
                ).scalars()
            )
        if not found:
            return OrderSweepPageResult(after_order_id=page.after_order_id, rows=0, changed=0, left_alone=0)
        running = await self._running(found, page.max_concurrent_checks)
        orphans = [order_id for order_id in found if order_id not in running]
        expired = 0
        if orphans:
            async with self._engine.begin() as conn:
                expired = int(await conn.scalar(EXPIRE_PAGE_SQL, {"order_ids": orphans, "as_of": page.as_of}) or 0)
        log.info("orders.sweep_expired", expired=expired, watched=len(running), after_order_id=found[-1])
        return OrderSweepPageResult(after_order_id=found[-1], rows=len(found), changed=expired, left_alone=len(running))

    @activity.defn(name="start_missing_order_workflows")
    async def start_missing_order_workflows(self, page: OrderSweepPage) -> OrderSweepPageResult:
        """Start a clock for each PENDING, unexpired row of one page that has none running."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    LIVE_PAGE_SQL, {"as_of": page.as_of, "after": page.after_order_id, "page_size": page.page_size}
                )
            ).all()
        if not rows:
            return OrderSweepPageResult(after_order_id=page.after_order_id, rows=0, changed=0, left_alone=0)
        running = await self._running([row.order_id for row in rows], page.max_concurrent_checks)
        missing = [row for row in rows if row.order_id not in running]
        slots = asyncio.Semaphore(page.max_concurrent_checks)

        async def start(row: Any) -> bool:
            order = PendingOrderInput(
                order_id=row.order_id,
                retailer_id=row.retailer_id,
                created_at=row.created_at,
                follow_up_after=page.follow_up_after,
                messaging_task_queue=page.messaging_task_queue,
            )
            async with slots:
                try:
                    await self._start(self._client, order)
                    return True
                except Exception as error:  # noqa: BLE001 - one refused start must not stop the page
                    log.warning("orders.sweep_start_refused", order_id=row.order_id, error=str(error))
                    return False

        started = sum(await asyncio.gather(*(start(row) for row in missing)))
        log.info("orders.sweep_started", started=started, watched=len(running), after_order_id=rows[-1].order_id)
        return OrderSweepPageResult(
            after_order_id=rows[-1].order_id, rows=len(rows), changed=started, left_alone=len(running)
        )

    async def _running(self, order_ids: Iterable[int], concurrency: int) -> set[int]:
        """The orders whose `pending-order/{id}` workflow is running now (not found: not running)."""
        slots = asyncio.Semaphore(concurrency)

        async def is_running(order_id: int) -> bool:
            async with slots:
                try:
                    described = await self._client.get_workflow_handle(ids.pending_order(order_id)).describe()
                except RPCError as error:
                    if error.status == RPCStatusCode.NOT_FOUND:
                        return False
                    raise
            return described.status == WorkflowExecutionStatus.RUNNING

        checked = list(order_ids)
        flags = await asyncio.gather(*(is_running(order_id) for order_id in checked))
        activity.heartbeat(checked[-1])
        return {order_id for order_id, running in zip(checked, flags, strict=True) if running}
