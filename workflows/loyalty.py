"""Loyalty: durable reconciliation of failed points applications, its sweep, and the nightly audit.

`loyalty-reconcile/{item_id}`: an order whose points failed to apply at checkout. First Stripe
confirms the order's PaymentIntent succeeded and was not refunded (a refund: nothing is applied,
the item is resolved as refunded); then the points are applied under Temporal's retry policy
(1 min doubling to 1 h, for at most 24 h). A permanent refusal (insufficient points, unknown
customer) or running out of time sends the item to NEEDS_REVIEW, where it waits for a person:
signal `retry_now` {actor_id} (a fresh 24-hour try) or `resolve_manually` {actor_id, note,
points_adjustment?} (the adjustment is written through the ledger as the item closes).
Both signals also interrupt a try in progress (its back-off included).

`loyalty-reconcile-sweep`: every 15 min, starts the workflow of any PENDING item that has none.
`loyalty-audit/{date}`: reports customers whose balance is not the sum of their ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError

from workflows._common import DB_TIMEOUT, accepted, db_retry

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.loyalty.audit import LoyaltyAuditActivities
    from activities.loyalty.queue import LoyaltyQueueActivities, LoyaltySweepActivities
    from schemas import search_attributes
    from schemas.loyalty import (
        REFUSALS,
        ApplyQueuedPoints,
        LoyaltyAuditRequest,
        LoyaltyAuditResult,
        LoyaltySweepPage,
        LoyaltySweepRequest,
        LoyaltySweepResult,
        MarkNeedsReview,
        QueueApplyResult,
        QueueItem,
        ReconcileRequest,
        ReconcileResult,
        ReconcileStatus,
        ReopenItem,
        ResolveItem,
        ResolveManually,
        RetryNow,
    )
    from schemas.payments import PaymentIntentState, PaymentIntentStatus

T = TypeVar("T")

GIVE_UP_AFTER = timedelta(hours=24)
BACKOFF = RetryPolicy(
    initial_interval=timedelta(minutes=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(hours=1),
    maximum_attempts=12,  # about 7 hours: well inside Stripe's 24-hour idempotency window
    non_retryable_error_types=REFUSALS,
)
DB_RETRY = db_retry()
PROCESSING_RECHECK = timedelta(minutes=15)


class _Interrupted:
    """A person's signal cut a try short."""


INTERRUPTED = _Interrupted()


@workflow.defn
class LoyaltyReconciliationWorkflow:
    def __init__(self) -> None:
        self._item_id = 0
        self._item: QueueItem | None = None
        self._phase = "starting"
        self._reason: str | None = None
        self._request: RetryNow | ResolveManually | None = None
        self._applied: QueueApplyResult | None = None

    @workflow.run
    async def run(self, request: ReconcileRequest) -> ReconcileResult:
        self._item_id = request.item_id
        item = await self._db(LoyaltyQueueActivities.load_item, ApplyQueuedPoints(item_id=request.item_id))
        self._show(item)
        while item.status != "RESOLVED":
            item = await (self._reconcile(item) if item.status == "PENDING" else self._review(item))
            self._show(item)
        self._phase = "done"
        await workflow.wait_condition(workflow.all_handlers_finished)
        application = self._applied.application if self._applied else None
        return ReconcileResult(
            item_id=item.item_id,
            customer_id=item.customer_id,
            status=item.status,
            resolution=item.resolution,
            resolved_by=item.resolved_by,
            attempts=item.attempts,
            points_earned=application.points_earned if application else None,
            points_redeemed=application.points_redeemed if application else None,
        )

    # --- signals and query: the people ---------------------------------------------------------

    # A payload that does not decode into the parameter's type is logged and dropped by the SDK;
    # `accepted` catches the shapes that reach a handler undecoded. A bad signal never fails a task.

    @workflow.signal
    def retry_now(self, request: RetryNow | None = None) -> None:
        """`{"actor_id": ...}`: try again now."""
        self._accept("retry_now", accepted(RetryNow, request, signal="retry_now", subject=self._subject))

    @workflow.signal
    def resolve_manually(self, request: ResolveManually | None = None) -> None:
        """`{"actor_id": ..., "note": ..., "points_adjustment": N?}`: close the item by hand (the order's
        points are not applied; a given adjustment is written, once, with the resolution)."""
        self._accept(
            "resolve_manually", accepted(ResolveManually, request, signal="resolve_manually", subject=self._subject)
        )

    @workflow.query
    def status(self) -> ReconcileStatus:
        item = self._item
        return ReconcileStatus(
            item_id=self._item_id,
            customer_id=item.customer_id if item else None,
            status=item.status if item else None,
            phase=self._phase,
            resolution=item.resolution if item else None,
            reason=self._reason,
        )

    # --- the steps ---------------------------------------------------------------------------

    async def _reconcile(self, item: QueueItem) -> QueueItem:
        """One try (bounded by BACKOFF's attempts and GIVE_UP_AFTER): verify the payment with Stripe,
        then apply the points."""
        deadline = workflow.now() + GIVE_UP_AFTER
        try:
            if item.payment_intent_id:
                self._phase = "checking the payment with Stripe"
                verdict = await self._interruptible(lambda: self._payment_verdict(item, deadline))
                if verdict is INTERRUPTED:
                    return await self._act_on_request(item)
                if verdict == "refunded":
                    return await self._resolve(item, "refunded")
                if verdict is not None:
                    return await self._needs_review(item, str(verdict))
            self._phase = "applying points (retrying with back-off)"
            applied = await self._interruptible(lambda: self._apply(deadline))
            if isinstance(applied, _Interrupted):
                return await self._act_on_request(item)
            self._applied = applied
            return applied.item
        except ActivityError as error:
            return await self._needs_review(item, _why(error))

    async def _payment_verdict(self, item: QueueItem, deadline: Any) -> str | None:
        """None: paid and not refunded; "refunded"; or why a person must look at it."""
        assert item.payment_intent_id is not None
        while True:
            state: PaymentIntentState = await workflow.execute_activity(
                "payment_intent_status",
                PaymentIntentStatus(id=item.payment_intent_id),
                result_type=PaymentIntentState,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=_remaining(deadline),
                retry_policy=BACKOFF,
                summary=f"check {item.payment_intent_id}",
            )
            if state.refunded:
                return "refunded"
            if state.status == "succeeded":
                return None
            if state.status != "processing":
                return f"PaymentNotSucceeded: PaymentIntent {state.id} is {state.status}"
            if workflow.now() + PROCESSING_RECHECK >= deadline:
                return f"PaymentNotSucceeded: PaymentIntent {state.id} still processing after {_hours(GIVE_UP_AFTER)}"
            await workflow.sleep(PROCESSING_RECHECK, summary="payment still processing")

    async def _apply(self, deadline: Any) -> QueueApplyResult:
        return await workflow.execute_activity_method(
            LoyaltyQueueActivities.apply_queued_points,
            ApplyQueuedPoints(item_id=self._item_id),
            start_to_close_timeout=DB_TIMEOUT,
            schedule_to_close_timeout=_remaining(deadline),
            retry_policy=BACKOFF,
            summary=f"apply the points of item {self._item_id}",
        )

    async def _review(self, item: QueueItem) -> QueueItem:
        """NEEDS_REVIEW: wait, as long as it takes, for a person's `retry_now` or `resolve_manually`."""
        self._phase = "waiting for review"
        await workflow.wait_condition(lambda: self._request is not None)
        return await self._act_on_request(item)

    async def _act_on_request(self, item: QueueItem) -> QueueItem:
        request, self._request = self._request, None
        if isinstance(request, ResolveManually):
            return await self._resolve(
                item, "manual", by=request.actor_id, note=request.note, points_adjustment=request.points_adjustment
            )
        assert isinstance(request, RetryNow)
        self._reason = None
        if item.status != "NEEDS_REVIEW":
            return item  # PENDING: the next try starts now
        return await self._db(
            LoyaltyQueueActivities.reopen_item, ReopenItem(item_id=item.item_id, actor_id=request.actor_id)
        )

    async def _needs_review(self, item: QueueItem, reason: str) -> QueueItem:
        self._reason = reason
        workflow.logger.warning("loyalty item %s needs review: %s", item.item_id, reason)
        return await self._db(
            LoyaltyQueueActivities.mark_needs_review, MarkNeedsReview(item_id=item.item_id, reason=reason)
        )

    async def _resolve(
        self,
        item: QueueItem,
        resolution: Literal["applied", "refunded", "manual"],
        *,
        by: str = "system",
        note: str | None = None,
        points_adjustment: int | None = None,
    ) -> QueueItem:
        self._phase = f"resolving ({resolution})"
        return await self._db(
            LoyaltyQueueActivities.resolve_item,
            ResolveItem(
                item_id=item.item_id,
                resolution=resolution,
                resolved_by=by,
                note=note,
                points_adjustment=points_adjustment,
            ),
        )

    # --- helpers -----------------------------------------------------------------------------

    async def _interruptible(self, step: Callable[[], Awaitable[T]]) -> T | _Interrupted:
        """Run `step` until it ends or a person's signal arrives (then the step is cancelled)."""
        task = asyncio.ensure_future(step())
        await workflow.wait_condition(lambda: task.done() or self._request is not None)
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task  # an attempt already running finishes on its own; the row lock decides which wins
        except (ActivityError, asyncio.CancelledError):
            pass
        return INTERRUPTED

    async def _db(self, method: Callable[..., Awaitable[T]], arg: BaseModel) -> T:
        return await workflow.execute_activity_method(
            method,
            arg,
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
        )

    def _show(self, item: QueueItem) -> None:
        """The item's state for the UI: `CaseStatus`, `CustomerId` and the details line."""
        self._item = item
        known = workflow.info().typed_search_attributes
        updates = []
        if known.get(search_attributes.CASE_STATUS) != item.status:
            updates.append(search_attributes.CASE_STATUS.value_set(item.status))
        if known.get(search_attributes.CUSTOMER_ID) != str(item.customer_id):
            updates.append(search_attributes.CUSTOMER_ID.value_set(str(item.customer_id)))
        if updates:
            workflow.upsert_search_attributes(updates)
        details = f"item {item.item_id} (order {item.order_id}, customer {item.customer_id}): {item.status}"
        if item.resolution:
            details += f", {item.resolution}" + (f" by {item.resolved_by}" if item.resolved_by != "system" else "")
        elif item.status == "NEEDS_REVIEW" and self._reason:
            details += f": {self._reason}"
        workflow.set_current_details(details[:1000])

    @property
    def _subject(self) -> str:
        return f"loyalty item {self._item_id}"

    def _accept(self, signal: str, request: RetryNow | ResolveManually | None) -> None:
        if request is None:
            return
        if self._phase == "done" or (self._item is not None and self._item.status == "RESOLVED"):
            workflow.logger.info("loyalty item %s: ignored %s, the item is resolved", self._item_id, signal)
            return
        if isinstance(self._request, ResolveManually) and isinstance(request, RetryNow):
            workflow.logger.info("loyalty item %s: ignored retry_now, a manual resolution is pending", self._item_id)
            return
        workflow.logger.info("loyalty item %s: %s by %s", self._item_id, signal, request.actor_id)
        self._request = request


def _remaining(deadline: Any) -> timedelta:
    """What is left of the 24-hour window (at least a second, so an expired window fails at once)."""
    return max(deadline - workflow.now(), timedelta(seconds=1))


def _why(error: ActivityError) -> str:
    """A one-line reason for review from an activity failure (its refusal, or the time-out and last error)."""
    cause = error.cause
    if isinstance(cause, TimeoutError):  # the window closed while an attempt ran
        cause = cause.cause
    elif error.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED:  # transient every time: retries used up
        return f"GaveUp: no success in {BACKOFF.maximum_attempts} attempts (last error {_describe(cause)})"[:500]
    elif error.retry_state != RetryState.TIMEOUT:  # a refusal: not worth another try
        return _describe(cause)[:500]
    return f"GaveUp: no success within {_hours(GIVE_UP_AFTER)} (last error {_describe(cause)})"[:500]


def _hours(span: timedelta) -> str:
    return f"{span.total_seconds() / 3600:g} h"


def _describe(cause: BaseException | None) -> str:
    if isinstance(cause, ApplicationError):
        return f"{cause.type}: {cause.message}"
    return f"{type(cause).__name__}: {cause}" if cause else "no attempt finished"


@workflow.defn
class LoyaltyReconcileSweepWorkflow:
    """Every 15 min: a workflow for each PENDING item that has none (rows inserted by SQL, a lost start)."""

    @workflow.run
    async def run(self, request: LoyaltySweepRequest) -> LoyaltySweepResult:
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("loyalty-reconcile-sweep")])
        result = LoyaltySweepResult(pending_seen=0, started=0, already_running=0)
        after = 0
        while True:
            page = await workflow.execute_activity_method(
                LoyaltySweepActivities.start_missing_reconciliations,
                LoyaltySweepPage(
                    after_item_id=after,
                    page_size=request.page_size,
                    max_concurrent_starts=request.max_concurrent_starts,
                ),
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(minutes=1),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1), maximum_attempts=30
                ),
                summary=f"start missing workflows after item {after}",
            )
            result.pending_seen += page.rows
            result.started += page.started
            result.already_running += page.already_running
            after = page.after_item_id
            if page.rows < request.page_size:
                break
        workflow.set_current_details(f"{result.started} started, {result.already_running} already running")
        return result


@workflow.defn
class LoyaltyIntegrityAuditWorkflow:
    """Nightly: report every customer whose balance differs from their ledger (never rewrites one)."""

    @workflow.run
    async def run(self, request: LoyaltyAuditRequest) -> LoyaltyAuditResult:
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("loyalty-integrity-audit")])
        result = await workflow.execute_activity_method(
            LoyaltyAuditActivities.audit,
            request,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5), maximum_attempts=20
            ),
            summary="compare every balance with its ledger",
        )
        workflow.set_current_details(
            f"{result.discrepancy_count} discrepancies among {result.customers_checked} customers ({result.audit_date})"
        )
        return result
