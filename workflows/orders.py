"""Order recovery: every pending checkout has its own durable 24-hour clock.

`pending-order/{order_id}` waits until the follow-up is due (ORDER_FOLLOWUP_AFTER after
creation, moved out of the retailer's quiet hours), sends one recovery message, waits until
the order expires and marks it EXPIRED. The `completed` and `failed` signals end it early.
Timers are `wait_condition` timeouts, so a signal interrupts any wait at once.

`order-expiry-sweep/{timestamp}` is the safety net for rows no clock watches (written while
Temporal was down, or whose workflow an operator terminated).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from workflows._common import DB_TIMEOUT, accepted, db_retry
from workflows.messaging import deliver, permanent_failure, send_message

with workflow.unsafe.imports_passed_through():
    from activities.orders import OrderActivities, OrderSweepActivities
    from schemas import search_attributes
    from schemas.messaging import SendMessage, SendOutcome
    from schemas.orders import (
        REFUSALS,
        FollowUpSent,
        LateOrderFailure,
        OrderCompleted,
        OrderFailed,
        OrderFailure,
        OrderFailureResult,
        OrderState,
        OrderSweepPage,
        OrderSweepProgress,
        OrderSweepRequest,
        PendingOrderInput,
        PendingOrderRecord,
        PendingOrderResult,
        PendingOrderStatus,
        RegisterPendingOrder,
        SettleOrder,
    )

DB_RETRY = db_retry(*REFUSALS)
PRECISE_CLOCK = "precise-order-clock"
"""Deprecated (docs/ARCHITECTURE.md, §4 "Patches"): clocks whose history has its marker may still run."""
RE_AIM_LEAD = timedelta(seconds=5)


@workflow.defn(sandboxed=False)
class PendingOrderWorkflow:
    """Runs outside the sandbox: one run starts per checkout, and the sandbox re-imported this
    module for each new run, most of the worker's CPU per clock. The sandbox's checks are kept
    from the source instead (tests/unit/test_workflow_determinism.py, the import rules, replay)."""

    def __init__(self) -> None:
        self._order_id = 0
        self._registered_by_starter = False
        self._record: PendingOrderRecord | None = None
        self._state: OrderState = "PENDING"
        self._ending: OrderCompleted | OrderFailed | None = None
        self._follow_up_sent_at: datetime | None = None

    @workflow.run
    async def run(self, order: PendingOrderInput) -> PendingOrderResult:
        self._order_id = order.order_id
        self._registered_by_starter = order.registered is not None
        record = await self._register(order)
        if record.state != "PENDING":
            return await self._finish()  # settled in the database already: nothing to watch

        if record.follow_up_sent_at is None and record.follow_up_at < record.expires_at:
            if await self._ended_before(record.follow_up_at):
                return await self._settle(order)
            await self._follow_up(order)

        if await self._ended_before(record.expires_at):
            return await self._settle(order)
        self._set_state(await self._settle_row("EXPIRED"))
        return await self._finish()

    # --- signals and query: the order's outside world ----------------------------------------

    # A payload that does not decode into the parameter's type is logged and dropped by the SDK;
    # `accepted` catches the shapes that reach a handler undecoded. A bad signal never fails a task.

    @workflow.signal
    def completed(self, completion: OrderCompleted | None = None) -> None:
        """The checkout went through (the payload is optional)."""
        completion = OrderCompleted() if completion is None else completion
        self._end_with("completed", accepted(OrderCompleted, completion, signal="completed", subject=self._subject))

    @workflow.signal
    def failed(self, failure: OrderFailed | None = None) -> None:
        """The order failed: `{"reason": ...}`."""
        self._end_with("failed", accepted(OrderFailed, failure, signal="failed", subject=self._subject))

    @workflow.query
    def status(self) -> PendingOrderStatus:
        return PendingOrderStatus.of(self._order_id, self._state, self._record, self._follow_up_sent_at)

    # --- the steps ---------------------------------------------------------------------------

    async def _register(self, order: PendingOrderInput) -> PendingOrderRecord:
        """Create or read the row (the database holds the clock) and learn when the follow-up is due.

        `start_pending_order` wrote the row already (and refused an order that cannot have a
        clock) and passes it in as `registered`, so the first task only starts the timer; for
        any other starter an unknown order is refused here (the run fails with the reason) and
        one no longer pending ends the run at once, neither touching anything.
        """
        request = RegisterPendingOrder(
            order_id=order.order_id,
            created_at=order.created_at or workflow.info().start_time,
            follow_up_after=order.follow_up_after,
            ttl=order.ttl,
        )
        record = order.registered
        try:
            if record is None:
                record = await workflow.execute_local_activity_method(
                    OrderActivities.register_pending_order,
                    request,
                    start_to_close_timeout=DB_TIMEOUT,
                    retry_policy=DB_RETRY,
                )
        except ActivityError as error:
            kind = permanent_failure(error)
            if kind not in REFUSALS:
                raise
            assert isinstance(error.cause, ApplicationError)
            # The workflow fails, not its task: a later valid start may run.
            raise ApplicationError(error.cause.message, type=kind, non_retryable=True) from None
        self._record = record
        self._follow_up_sent_at = record.follow_up_sent_at
        self._set_state(record.state, retailer_id=record.retailer_id)
        return record

    async def _ended_before(self, deadline: datetime) -> bool:
        """Sleep until `deadline` unless a signal ends the order first (True: it did).

        A timer runs from the moment its task completes, not from `workflow.now()` (when the task
        started), so a slow task (a burst of checkouts queueing at the worker) would make the
        deadline late by that much. A long wait therefore stops RE_AIM_LEAD short and sleeps the
        rest from a fresh `now`, in a task that does nothing else and so completes at once.
        """
        self._precise_clock()
        while (remaining := deadline - workflow.now()) > timedelta(0):
            leg = remaining - RE_AIM_LEAD if remaining > 2 * RE_AIM_LEAD else remaining
            try:
                await workflow.wait_condition(
                    lambda: self._ending is not None, timeout=leg, timeout_summary=f"until {deadline.isoformat()}"
                )
            except TimeoutError:
                continue
            return True
        return self._ending is not None

    async def _follow_up(self, order: PendingOrderInput) -> None:
        """Send `order_followup` once; a deferral (quiet hours at send time) waits and tries again."""
        assert self._record is not None
        while True:
            outcome = await self._tell(order, self._message(order, "order_followup", f"followup:{order.order_id}"))
            if outcome is None or outcome.status == "suppressed":
                return
            if outcome.status == "sent":
                self._follow_up_sent_at = workflow.now()
                await workflow.execute_activity_method(
                    OrderActivities.record_follow_up,
                    FollowUpSent(order_id=order.order_id, sent_at=self._follow_up_sent_at),
                    start_to_close_timeout=DB_TIMEOUT,
                    retry_policy=DB_RETRY,
                )
                workflow.set_current_details(self._details())
                return
            if outcome.retry_at is None or outcome.retry_at >= self._record.expires_at:
                return
            if await self._ended_before(outcome.retry_at):
                return

    async def _settle(self, order: PendingOrderInput) -> PendingOrderResult:
        """Apply the signal that ended the order: failure, or completion (RECOVERED after a follow-up)."""
        if isinstance(self._ending, OrderFailed):
            failed = await workflow.execute_activity_method(
                OrderActivities.handle_order_failure,
                OrderFailure(order_id=order.order_id, reason=self._ending.reason),
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=DB_RETRY,
                summary=f"fail order {order.order_id} and reverse its credit",
            )
            self._set_state("FAILED")
            # The order is settled already; a notice held by quiet hours or the brake goes out when
            # the hold ends, while the run waits on a durable timer.
            await self._tell(order, failure_notice(order.order_id, failed), later=True)
        else:
            self._set_state(await self._settle_row("RECOVERED" if self._follow_up_sent_at else "COMPLETED"))
        return await self._finish()

    def _precise_clock(self) -> None:
        """Where `patched(PRECISE_CLOCK)` was: a run begun before this change has its marker, which
        replays only against a patch call. A run its starter registered began after the precise
        clock shipped (`registered` is newer) and never had one: a marker is two events and a
        visibility write (TemporalChangeVersion) on every checkout."""
        if not self._registered_by_starter:
            workflow.deprecate_patch(PRECISE_CLOCK)

    async def _settle_row(self, state: OrderState) -> OrderState:
        """One UPDATE. As a local activity it runs inside the task the timer (or signal) woke,
        so an expiry lands without another task round trip: that is the expiry lateness."""
        self._precise_clock()
        return await workflow.execute_local_activity_method(
            OrderActivities.settle_pending_order,
            SettleOrder(order_id=self._order_id, state=state),  # type: ignore[arg-type]
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
            summary=f"mark order {self._order_id} {state}",
        )

    def _message(self, order: PendingOrderInput, template: str, key: str) -> SendMessage:
        return SendMessage(
            idempotency_key=key,
            recipient_type="retailer",
            recipient_id=str(self._record.retailer_id if self._record else order.retailer_id),
            template=template,
            params={"order_id": order.order_id},
        )

    async def _tell(self, order: PendingOrderInput, message: SendMessage, *, later: bool = False) -> SendOutcome | None:
        """Message the retailer; a message that cannot go out never holds up the order's outcome.

        `later`: a deferred message is sent again, same key, when its hold ends (`deliver`); the
        follow-up does its own waiting instead, since it is pointless once the order expired."""
        template = message.template
        try:
            if later:
                return await deliver(message, kind="order_notice", task_queue=order.messaging_task_queue)
            return await send_message(message, kind="order_notice", task_queue=order.messaging_task_queue)
        except ActivityError as error:
            workflow.logger.warning(
                "order %s: %s not sent (%s)",
                order.order_id,
                template,
                permanent_failure(error) or type(error.cause).__name__,
            )
            return None

    async def _finish(self) -> PendingOrderResult:
        await workflow.wait_condition(workflow.all_handlers_finished)
        return PendingOrderResult(
            order_id=self._order_id,
            state=self._state,
            follow_up_sent_at=self._follow_up_sent_at,
            settled_at=workflow.now(),
        )

    # --- helpers -----------------------------------------------------------------------------

    def _set_state(self, state: OrderState, *, retailer_id: int | None = None) -> None:
        """The state, for the UI: `CaseStatus` (and the ids, if the starter did not set them) and details."""
        self._state = state
        known = workflow.info().typed_search_attributes
        updates = []
        if known.get(search_attributes.CASE_STATUS) != state:
            updates.append(search_attributes.CASE_STATUS.value_set(state))
        if known.get(search_attributes.ORDER_ID) is None:
            updates.append(search_attributes.ORDER_ID.value_set(str(self._order_id)))
        if retailer_id is not None and known.get(search_attributes.RETAILER_ID) is None:
            updates.append(search_attributes.RETAILER_ID.value_set(str(retailer_id)))
        if updates:
            workflow.upsert_search_attributes(updates)
        workflow.set_current_details(self._details())

    def _details(self) -> str:
        record = self._record
        if record is None or self._state != "PENDING":
            return f"order {self._order_id}: {self._state}"
        follow_up = (
            f"follow-up sent {self._follow_up_sent_at:%Y-%m-%d %H:%M} UTC"
            if self._follow_up_sent_at
            else f"follow-up due {record.follow_up_at:%Y-%m-%d %H:%M} UTC"
        )
        return f"order {self._order_id}: PENDING, {follow_up}, expires {record.expires_at:%Y-%m-%d %H:%M} UTC"

    @property
    def _subject(self) -> str:
        return f"order {self._order_id}"

    def _end_with(self, signal: str, ending: OrderCompleted | OrderFailed | None) -> None:
        if ending is None:
            return
        if self._ending is not None or self._state != "PENDING":
            workflow.logger.info(
                "order %s: ignored %s signal, the order is already %s", self._order_id, signal, self._state
            )
            return
        self._ending = ending


@workflow.defn
class OrderExpirySweepWorkflow:
    """Every 6 h: expire stale rows no clock watches, then start a clock for live rows that have none.

    Each page is one activity (set-based SQL, one describe per row to ask Temporal whether a
    clock is running); the cursor lives here, so a retried page never redoes another.
    """

    def __init__(self) -> None:
        self._progress: OrderSweepProgress | None = None

    @workflow.run
    async def run(self, request: OrderSweepRequest) -> OrderSweepProgress:
        progress = self._progress = request.progress or OrderSweepProgress(as_of=workflow.now())
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("order-expiry-sweep")])
        while progress.phase != "done":
            step = (
                OrderSweepActivities.expire_orphaned_orders
                if progress.phase == "expire"
                else OrderSweepActivities.start_missing_order_workflows
            )
            page = await workflow.execute_activity_method(
                step,
                OrderSweepPage(
                    as_of=progress.as_of,
                    after_order_id=progress.after_order_id,
                    page_size=request.page_size,
                    max_concurrent_checks=request.max_concurrent_checks,
                    follow_up_after=request.follow_up_after,
                    messaging_task_queue=request.messaging_task_queue,
                ),
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1), maximum_attempts=30
                ),
                summary=f"{progress.phase} page after order {progress.after_order_id}",
            )
            progress.after_order_id = page.after_order_id
            progress.left_alone += page.left_alone
            if progress.phase == "expire":
                progress.expired += page.changed
            else:
                progress.started += page.changed
            if page.rows < request.page_size:
                progress.phase = "start" if progress.phase == "expire" else "done"
                progress.after_order_id = 0
            workflow.set_current_details(
                f"{progress.expired} expired, {progress.started} clocks started,"
                f" {progress.left_alone} watched rows left alone"
            )
            if progress.phase != "done" and workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(request.model_copy(update={"progress": progress}))
        return progress

    @workflow.query
    def status(self) -> OrderSweepProgress | None:
        return self._progress


def failure_notice(order_id: int, failed: OrderFailureResult) -> SendMessage:
    """The retailer's `order_failed`, one key per order whichever workflow reports the failure; for
    an order on credit (`order_failed_credit`) it says what the failure gave back."""
    message = SendMessage(
        idempotency_key=f"order-failed:{order_id}",
        recipient_type="retailer",
        recipient_id=str(failed.retailer_id),
        template="order_failed",
        params={"order_id": order_id},
    )
    if failed.reversed_amount is None:
        return message
    released, returned = failed.reversed_amount, failed.returned_to_balance or Decimal("0")
    return message.model_copy(
        update={
            "template": "order_failed_credit",
            "params": {**message.params, "credit_released": str(released), "balance_returned": str(returned)},
        }
    )


@workflow.defn
class OrderFailureWorkflow:
    """`order-failure/{order_id}`: a failure reported once the order's clock has ended (a delivery
    that failed after checkout completed). Reverses the order's debit once (the activity is
    idempotent) and tells the retailer under the same key the clock would have used, at the end
    of the hold if quiet hours or the brake hold the notice back."""

    def __init__(self) -> None:
        self._result: OrderFailureResult | None = None
        self._refused: ActivityError | None = None

    @workflow.run
    async def run(self, failure: LateOrderFailure) -> OrderFailureResult:
        try:
            result = self._result = await workflow.execute_activity_method(
                OrderActivities.handle_order_failure,
                OrderFailure(order_id=failure.order_id, reason=failure.reason),
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=DB_RETRY,
                summary=f"fail order {failure.order_id} and reverse its credit",
            )
        except ActivityError as error:  # refused (no such order): the waiting update says so too
            self._refused = error
            await workflow.wait_condition(workflow.all_handlers_finished)
            raise
        if result.changed:
            try:
                notice = failure_notice(failure.order_id, result)
                await deliver(notice, kind="order_notice", task_queue=failure.messaging_task_queue)
            except ActivityError as error:
                workflow.logger.warning(
                    "order %s: order_failed not sent (%s)", failure.order_id, permanent_failure(error)
                )
        await workflow.wait_condition(workflow.all_handlers_finished)  # no command: replays unchanged
        return result

    @workflow.update
    async def applied(self) -> OrderFailureResult:
        """The failure once written (order failed, debit reversed), before the retailer's
        `order_failed` goes: `services.orders.fail_order` answers from this, since quiet hours or
        the brake hold that message for hours and no caller waits for it (issue #33). Only the
        update that came with the start (its id is the run's `reported_by` memo) says `changed`."""
        await workflow.wait_condition(lambda: self._result is not None or self._refused is not None)
        if self._result is None:
            cause = self._refused.cause if self._refused is not None else None
            if isinstance(cause, ApplicationError):
                raise ApplicationError(cause.message, type=cause.type, non_retryable=True)
            raise ApplicationError(f"order failure not written: {cause}", type="OrderRefused", non_retryable=True)
        update = workflow.current_update_info()
        if update is None or update.id != workflow.memo_value("reported_by", default=None, type_hint=str):
            return self._result.model_copy(update={"changed": False})  # a repeat joining the run: it wrote nothing
        return self._result
