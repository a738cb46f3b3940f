"""The reconciliation queue: failed applications, retried by `loyalty-reconcile/{item_id}`.

A row per order reference (unique), so queuing the same failure twice is one item. The row is
the truth a person reads (status, attempts, last error, who resolved it); the workflow moves it:

- every attempt bumps `attempts` in its own short transaction first, so a failed attempt still
  counts, and records its error in another when it fails;
- the successful attempt applies the points and resolves the row in ONE transaction that holds
  the row's lock, so an item resolved by hand meanwhile is never also applied, and vice versa.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import RowMapping, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.events.outbox import emit
from activities.loyalty.errors import UnknownCustomer
from activities.loyalty.ledger import adjust_points, apply_points
from schemas import ids, search_attributes
from schemas.loyalty import (
    ApplyOrderPoints,
    ApplyQueuedPoints,
    FailedPointsApplication,
    LoyaltySweepPage,
    LoyaltySweepPageResult,
    MarkNeedsReview,
    QueueApplyResult,
    QueueItem,
    ReconcileRequest,
    ReopenItem,
    ResolveItem,
)

log = structlog.get_logger(__name__)

WORKFLOW_TYPE = "LoyaltyReconciliationWorkflow"
ERROR_TEXT_LIMIT = 500


_COLUMNS = (
    "id AS item_id, customer_id, order_reference AS order_id, payment_intent_id, points_redeemed, order_total,"
    " status, resolution, attempts, resolved_by"
)
SELECT_ITEM = text(f"SELECT {_COLUMNS} FROM loyalty_reconciliation_queue WHERE id = :id")

INSERT_ITEM = text(
    f"""
INSERT INTO loyalty_reconciliation_queue
    (customer_id, order_reference, payment_intent_id, points_redeemed, order_total, last_error)
VALUES (:customer_id, :order_id, :payment_intent_id, :points_redeemed, :order_total, :error)
ON CONFLICT (order_reference) DO NOTHING
RETURNING {_COLUMNS}
"""
)
SELECT_BY_ORDER = text(f"SELECT {_COLUMNS} FROM loyalty_reconciliation_queue WHERE order_reference = :order_id")
ORDER_OF_INTENT = text(
    "SELECT customer_id, order_reference FROM loyalty_reconciliation_queue WHERE payment_intent_id = :intent"
    " ORDER BY id LIMIT 1"
)

BEGIN_ATTEMPT = text(
    "UPDATE loyalty_reconciliation_queue SET attempts = attempts + 1, updated_at = now()"
    " WHERE id = :id AND status = 'PENDING' RETURNING id"
)
LOCK_PENDING = text("SELECT status FROM loyalty_reconciliation_queue WHERE id = :id FOR UPDATE")
RECORD_ERROR = text("UPDATE loyalty_reconciliation_queue SET last_error = :error, updated_at = now() WHERE id = :id")
RESOLVE = text(
    f"""
UPDATE loyalty_reconciliation_queue
SET status = 'RESOLVED', resolution = :resolution, resolved_by = :resolved_by, resolved_at = now(), updated_at = now()
WHERE id = :id AND status <> 'RESOLVED'
RETURNING {_COLUMNS}
"""
)
SET_RESOLUTION = text(
    f"UPDATE loyalty_reconciliation_queue SET resolution = :resolution WHERE id = :id RETURNING {_COLUMNS}"
)
NEEDS_REVIEW = text(
    f"""
UPDATE loyalty_reconciliation_queue SET status = 'NEEDS_REVIEW', last_error = :reason, updated_at = now()
WHERE id = :id AND status = 'PENDING'
RETURNING {_COLUMNS}
"""
)
REVIEW_COUNT = text(
    "SELECT count(*) FROM outbound_events"
    " WHERE object_type = 'loyalty_item' AND object_id = CAST(:id AS text) AND type = 'loyalty.item.needs_review'"
)
"""How many times the item went to review before: the n-th time's event key (a reopened item can go again)."""
REOPEN = text(
    f"""
UPDATE loyalty_reconciliation_queue SET status = 'PENDING', updated_at = now()
WHERE id = :id AND status = 'NEEDS_REVIEW'
RETURNING {_COLUMNS}
"""
)
PENDING_PAGE = text(
    f"SELECT {_COLUMNS} FROM loyalty_reconciliation_queue"
    " WHERE status = 'PENDING' AND id > :after ORDER BY id LIMIT :page_size"
)


def _item(row: RowMapping) -> QueueItem:
    return QueueItem.model_validate(dict(row))


def error_text(error: BaseException) -> str:
    """A short, single-line description for `last_error`: the error's type and first line.

    Database errors keep only their first line (a DETAIL line could echo a row's values).
    """
    if isinstance(error, ApplicationError):
        return f"{error.type}: {error.message}"[:ERROR_TEXT_LIMIT]
    return f"{_error_type(error)}: {_first_line(error)}"[:ERROR_TEXT_LIMIT]


def _error_type(error: BaseException) -> str:
    return type(getattr(error, "orig", None) or error).__name__


def _first_line(error: BaseException) -> str:
    return (str(getattr(error, "orig", None) or error).strip().splitlines() or [""])[0][:ERROR_TEXT_LIMIT]


async def _read(conn: AsyncConnection, item_id: int) -> QueueItem:
    row = (await conn.execute(SELECT_ITEM, {"id": item_id})).mappings().first()
    if row is None:
        raise ApplicationError(f"no loyalty reconciliation item {item_id}", type="UnknownQueueItem", non_retryable=True)
    return _item(row)


# --------------------------------------------------------------------------- enqueue (the checkout path)


async def order_of_payment_intent(engine: AsyncEngine, intent_id: str) -> tuple[int, str] | None:
    """(customer id, order id) of the queued order paid by this PaymentIntent, or None: how a
    refund finds a loyalty order whose checkout did not name it in the intent's metadata."""
    async with engine.connect() as conn:
        row = (await conn.execute(ORDER_OF_INTENT, {"intent": intent_id})).first()
    return None if row is None else (int(row.customer_id), str(row.order_reference))


async def insert_queue_item(engine: AsyncEngine, failed: FailedPointsApplication) -> tuple[QueueItem, bool]:
    """Queue a failed application once per order: (the item, created now). Unknown customer: refused."""
    try:
        async with engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        INSERT_ITEM,
                        {
                            "customer_id": failed.customer_id,
                            "order_id": failed.order_id,
                            "payment_intent_id": failed.payment_intent_id,
                            "points_redeemed": failed.points_redeemed,
                            "order_total": failed.order_total,
                            "error": failed.error,
                        },
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                existing = (await conn.execute(SELECT_BY_ORDER, {"order_id": failed.order_id})).mappings().one()
                return _item(existing), False
    except IntegrityError as error:
        if "customer_id" in str(error.orig) or "foreign key" in str(error.orig).lower():
            raise UnknownCustomer(failed.customer_id) from None
        raise
    item = _item(row)
    log.info("loyalty.queued", item_id=item.item_id, customer_id=item.customer_id, order_id=item.order_id)
    return item, True


async def start_reconciliation(client: Client, item: QueueItem, *, task_queue: str) -> bool:
    """Start the item's workflow unless one is running (True: started now).

    A closed workflow may be followed by a new run (the item is PENDING again: terminated by an
    operator, or reopened by SQL); a running one is left alone, so enqueue and sweep may race.
    """
    try:
        await client.start_workflow(
            WORKFLOW_TYPE,
            ReconcileRequest(item_id=item.item_id),
            id=ids.loyalty_reconcile(item.item_id),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(search_attributes.CUSTOMER_ID, str(item.customer_id)),
                    SearchAttributePair(search_attributes.CASE_STATUS, item.status),
                ]
            ),
            static_summary=f"Loyalty points of order {item.order_id} for customer {item.customer_id}",
        )
    except WorkflowAlreadyStartedError:
        return False
    except RPCError as error:  # the time-skipping server reports a running workflow as a bare ALREADY_EXISTS
        if error.status == RPCStatusCode.ALREADY_EXISTS:
            return False
        raise
    return True


# --------------------------------------------------------------------------- the workflow's activities


class LoyaltyQueueActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @activity.defn(name="loyalty_load_item")
    async def load_item(self, request: ApplyQueuedPoints) -> QueueItem:
        async with self._engine.connect() as conn:
            return await _read(conn, request.item_id)

    @activity.defn(name="loyalty_apply_queued_points")
    async def apply_queued_points(self, request: ApplyQueuedPoints) -> QueueApplyResult:
        """One attempt: count it, then apply and resolve together; record the error if it fails."""
        async with self._engine.begin() as conn:
            counted = await conn.scalar(BEGIN_ATTEMPT, {"id": request.item_id})
            if counted is None:  # resolved or sent to review meanwhile: nothing to do
                return QueueApplyResult(item=await _read(conn, request.item_id))
        try:
            async with self._engine.begin() as conn:
                status = await conn.scalar(LOCK_PENDING, {"id": request.item_id})
                if status != "PENDING":
                    return QueueApplyResult(item=await _read(conn, request.item_id))
                item = await _read(conn, request.item_id)
                application = await apply_points(
                    conn,
                    ApplyOrderPoints(
                        customer_id=item.customer_id,
                        order_id=item.order_id,
                        points_redeemed=item.points_redeemed,
                        order_total=item.order_total,
                    ),
                )
                resolution = "refunded" if application.outcome == "order_reversed" else "applied"
                row = (
                    (
                        await conn.execute(
                            RESOLVE, {"id": request.item_id, "resolution": resolution, "resolved_by": "system"}
                        )
                    )
                    .mappings()
                    .one()
                )
        except Exception as error:
            description = error_text(error)
            async with self._engine.begin() as conn:
                await conn.execute(RECORD_ERROR, {"id": request.item_id, "error": description})
            log.warning(
                "loyalty.attempt_failed", item_id=request.item_id, attempt=activity.info().attempt, error=description
            )
            if isinstance(error, ApplicationError):
                raise
            # Retryable, and only its first line: a database error's SQL and DETAIL stay out of the history.
            raise ApplicationError(_first_line(error), type=_error_type(error)) from None
        resolved = _item(row)
        log.info(
            "loyalty.item_applied",
            item_id=resolved.item_id,
            customer_id=resolved.customer_id,
            attempts=resolved.attempts,
            outcome=application.outcome,
        )
        return QueueApplyResult(item=resolved, application=application)

    @activity.defn(name="loyalty_mark_needs_review")
    async def mark_needs_review(self, request: MarkNeedsReview) -> QueueItem:
        async with self._engine.begin() as conn:
            row = (
                (await conn.execute(NEEDS_REVIEW, {"id": request.item_id, "reason": request.reason[:ERROR_TEXT_LIMIT]}))
                .mappings()
                .first()
            )
            item = _item(row) if row else await _read(conn, request.item_id)
            if row:  # it moved to NEEDS_REVIEW now (a retry finds it there and writes nothing)
                await emit(
                    conn,
                    "loyalty.item.needs_review",
                    "loyalty_item",
                    item.item_id,
                    {
                        "item_id": item.item_id,
                        "customer_id": item.customer_id,
                        "order_id": item.order_id,
                        "attempts": item.attempts,
                    },
                    dedupe_key=f"{item.item_id}:{await conn.scalar(REVIEW_COUNT, {'id': item.item_id})}",
                )
        log.warning("loyalty.needs_review", item_id=item.item_id, customer_id=item.customer_id, status=item.status)
        return item

    @activity.defn(name="loyalty_resolve_item")
    async def resolve_item(self, request: ResolveItem) -> QueueItem:
        """Close the item (applied, refunded, or by a person); an item closed already is returned as it is.

        A person's points adjustment is written in the same transaction, under the item's row lock
        (taken before the customer's, as an attempt does): the item closes with it or not at all, an
        attempt that applies the order's points meanwhile rules it out, and it is once per item."""
        # A person's note goes with the resolution ("manual: points given in store"); last_error stays.
        resolution = f"{request.resolution}: {request.note}" if request.note else request.resolution
        async with self._engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        RESOLVE, {"id": request.item_id, "resolution": resolution, "resolved_by": request.resolved_by}
                    )
                )
                .mappings()
                .first()
            )
            if row is not None and request.points_adjustment:
                adjusted = await adjust_points(
                    conn,
                    row["customer_id"],
                    request.points_adjustment,
                    reference_type="reconciliation_item",
                    reference_id=str(request.item_id),
                )
                row = (
                    (
                        await conn.execute(
                            SET_RESOLUTION,
                            {"id": request.item_id, "resolution": f"{resolution} ({adjusted.points:+d} points)"},
                        )
                    )
                    .mappings()
                    .one()
                )
            item = _item(row) if row else await _read(conn, request.item_id)
        log.info(
            "loyalty.item_resolved", item_id=item.item_id, resolution=item.resolution, resolved_by=item.resolved_by
        )
        return item

    @activity.defn(name="loyalty_reopen_item")
    async def reopen_item(self, request: ReopenItem) -> QueueItem:
        """Back to PENDING for another try (signal `retry_now`)."""
        async with self._engine.begin() as conn:
            row = (await conn.execute(REOPEN, {"id": request.item_id})).mappings().first()
            item = _item(row) if row else await _read(conn, request.item_id)
        log.info("loyalty.item_reopened", item_id=item.item_id, actor_id=request.actor_id, status=item.status)
        return item


class LoyaltySweepActivities:
    """The sweep's page: start a workflow for each PENDING item that has none running."""

    def __init__(self, engine: AsyncEngine, client: Client, task_queue: str) -> None:
        self._engine = engine
        self._client = client
        self._task_queue = task_queue

    @activity.defn(name="loyalty_start_missing_reconciliations")
    async def start_missing_reconciliations(self, page: LoyaltySweepPage) -> LoyaltySweepPageResult:
        async with self._engine.connect() as conn:
            rows = [
                _item(row)
                for row in (
                    await conn.execute(PENDING_PAGE, {"after": page.after_item_id, "page_size": page.page_size})
                ).mappings()
            ]
        if not rows:
            return LoyaltySweepPageResult(after_item_id=page.after_item_id, rows=0, started=0, already_running=0)
        slots = asyncio.Semaphore(page.max_concurrent_starts)

        async def start(item: QueueItem) -> bool:
            async with slots:
                return await start_reconciliation(self._client, item, task_queue=self._task_queue)

        started = sum(await asyncio.gather(*(start(item) for item in rows)))
        last = rows[-1].item_id
        activity.heartbeat(last)
        log.info("loyalty.sweep_page", started=started, already_running=len(rows) - started, after_item_id=last)
        return LoyaltySweepPageResult(
            after_item_id=last, rows=len(rows), started=started, already_running=len(rows) - started
        )
