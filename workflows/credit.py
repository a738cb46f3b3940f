"""Credit operations: payment reminders, guardrails (auto-pause / auto-unpause), payments.

`payment-reminders/{date}` (10:00): page by page, the retailers with debits due a reminder today
get one `payment_reminder` with one stable pay link for their total; the debits are marked
reminded once the message went out. A page is its read, one `send_messages` per hundred reminders
and the mark; the next page is read while a page sends, and its batches take the lanes the pages
before free (up to `PAGES_IN_FLIGHT` pages at once, each marked as it ends). When the server
suggests continuing as new, the run hands the retailers whose reminders had not ended to the next
run (`_hand_on`) instead of waiting for them.

`credit-guardrails/{date}` (11:00): pauses retailers past their limits and lifts the pauses the
system made whose conditions cleared; each retailer is told. `credit-guardrails/{retailer}/{reference}`:
the same check for one retailer after an admin's adjustment in its favour or change of limits, so it
lifts a pause at once; its `applied` update answers once the changes are written, before the messages.

`payment/{retailer}/{reference}`: records a payment (oldest debits first), then re-checks that retailer's
guardrails at once, so paying lifts a system pause within seconds; its `applied` update answers once
both are written, before the messages (issue #33).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import cast

from temporalio import workflow
from temporalio.common import MetricCounter
from temporalio.exceptions import ActivityError, ApplicationError

from workflows._common import db_retry, scheduled_day
from workflows.messaging import MIN_HOLD, batch_lanes, deliver_all, hold_groups, send_batches, tally

with workflow.unsafe.imports_passed_through():
    from activities.credit.guardrails import GuardrailActivities
    from activities.credit.payments import PaymentRecordingActivities
    from activities.credit.reminders import ReminderActivities
    from schemas import search_attributes
    from schemas.credit import (
        DueRetailer,
        GuardrailChange,
        GuardrailsCheck,
        GuardrailsRequest,
        GuardrailsResult,
        PaymentRecorded,
        PaymentResult,
        RecordPayment,
        ReminderPage,
        ReminderPageRequest,
        RemindersRequest,
        RemindersSent,
        RemindersStatus,
        reminder_key,
    )
    from schemas.messaging import BatchItemOutcome, SendMessage

DB_RETRY = db_retry("UnknownRetailer", "StripeNotConfigured")
HANDOFF_WAIT = timedelta(seconds=3)
"""Before a continue-as-new, how long the batches still out may take once no batch waits for a lane
(a batch of 100 at 200 msg/s takes about a second); the rest are handed to the next run."""
PAGES_IN_FLIGHT = 8
"""Pages of a reminders day sending at once (their batches share the day's lanes, so this bounds the
workflow's memory, not the sends): enough that the other lanes keep sending for the 15-20 s a batch
on a killed worker holds its lane (a page is about 2.5 s of sends at 200 msg/s)."""


def _add(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


# --------------------------------------------------------------------------- reminders


class _Page:
    """A page while its reminders go out: what each batch decided, as it ended."""

    def __init__(self, page: ReminderPage, day: date) -> None:
        self.page = page
        self.messages = page.messages(day)
        self.retailers = {reminder_key(r.retailer_id, day): r for r in page.due}
        self.position = {m.idempotency_key: p for p, m in enumerate(self.messages)}
        self.open = {r.retailer_id for r in page.due}  # no final outcome yet: not sent yet, or held
        self.sent: list[DueRetailer] = []
        self.held: list[tuple[datetime, int]] = []  # (until, position in messages)
        self.marking = False  # every batch ended: its sent retailers are being marked
        self.handed_on = False  # its open retailers went to the next run (`_hand_on`)
        self.task: asyncio.Task[None] | None = None

    def done(self) -> bool:
        return self.task is not None and self.task.done()


class _Hold:
    """Reminders held together (quiet hours, the brake, another attempt's lease) until one timer ends."""

    def __init__(self, messages: list[SendMessage], retailers: dict[str, DueRetailer]) -> None:
        self.messages = messages
        self.retailers = retailers
        self.delivering = False  # its timer ended: the messages are going out
        self.task: asyncio.Task[None] | None = None


@workflow.defn
class PaymentRemindersWorkflow:
    def __init__(self) -> None:
        self._status = RemindersStatus()
        self._held: list[_Hold] = []
        self._sent_counter: MetricCounter | None = None

    @workflow.run
    async def run(self, request: RemindersRequest) -> RemindersStatus:
        """Page by page: read the retailers due a reminder (the next page while this one sends),
        send their reminders, mark those that went out; held reminders go out when their hold ends."""
        day = request.reminder_date or await scheduled_day(request.business_timezone)
        status = self._status = request.progress or RemindersStatus(reminder_date=day)
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("payment-reminders")])
        # One set of send lanes for the day, so `max_in_flight` holds over every page: a page's
        # first batches start as the pages before free lanes.
        lanes = batch_lanes(request.max_in_flight)
        sending: list[_Page] = []
        for start in range(0, len(request.redo), request.page_size):  # what the run before handed on
            ids = request.redo[start : start + request.page_size]
            await self._send(await self._read_page(day, 0, request, ids), day, request, lanes, sending)
        next_page: asyncio.Task[ReminderPage] | None = None
        while not status.finished:
            page = await (next_page or self._read_page(day, status.after_retailer_id, request))
            next_page = None
            if not page.last_page and not workflow.info().is_continue_as_new_suggested():
                # Read (and its links written) while this page sends: the database and the
                # messaging worker are busy at the same time, not in turn.
                next_page = asyncio.create_task(self._read_page(day, page.after_retailer_id, request))
            await self._send(page, day, request, lanes, sending)
            status.after_retailer_id = page.after_retailer_id
            status.pages += 1
            status.finished = page.last_page
            if status.finished:
                await self._fewer_sending_than(1, sending)  # the day is finished once its last page went out
            self._show()
            if not status.finished and next_page is None:  # continue-as-new was suggested: no page read ahead
                redo = await self._hand_on(sending, lanes, day, request)
                await self._held_sent()  # those going out now: a new run would not know of them
                workflow.continue_as_new(
                    request.model_copy(update={"reminder_date": day, "progress": status, "redo": redo})
                )
        await self._fewer_sending_than(1, sending)
        await self._held_sent()
        return status

    async def _send(
        self, page: ReminderPage, day: date, request: RemindersRequest, lanes: asyncio.Semaphore, sending: list[_Page]
    ) -> None:
        """Count the page's retailers and start its sends; on once fewer than `PAGES_IN_FLIGHT` send."""
        self._count_due(page)
        if page.due:
            going = _Page(page, day)
            going.task = asyncio.create_task(self._send_page(going, day, request, lanes))
            sending.append(going)
            await self._fewer_sending_than(PAGES_IN_FLIGHT, sending)

    @staticmethod
    async def _fewer_sending_than(limit: int, sending: list[_Page]) -> None:
        """Until fewer than `limit` pages are sending, whichever ended: a page whose batch waits out a
        killed worker's heartbeat timeout holds one lane, while the pages after it take the others
        (waiting for pages in order, that one batch stopped the whole day for 20 s: the scale-out
        drill). A page that failed raises here."""
        await workflow.wait_condition(lambda: sum(not p.done() for p in sending) < limit)
        for page in [p for p in sending if p.done()]:
            sending.remove(page)
            cast(asyncio.Task[None], page.task).result()

    def _count_due(self, page: ReminderPage) -> None:
        status = self._status
        status.due += len(page.due) + sum(page.skipped.values()) + sum(page.link_failures.values())
        for reason, n in page.skipped.items():
            _add(status.skipped, reason, n)
        for error, n in page.link_failures.items():
            _add(status.failed, error, n)

    async def _send_page(self, page: _Page, day: date, request: RemindersRequest, lanes: asyncio.Semaphore) -> None:
        """Send the page's reminders in batches on the day's lanes; mark the sent retailers reminded.

        Held reminders (quiet hours in the retailer's zone, the brake, another attempt's lease) wait
        beside the pages that follow, one durable timer per group whose holds end together, then go
        out and are marked for `day`, the day they were due, so the cadence's next step still comes
        on its own day.
        """
        await send_batches(
            page.messages,
            max_in_flight=request.max_in_flight,
            kind="reminder",
            task_queue=request.messaging_task_queue,
            lanes=lanes,
            on_batch=lambda _, outcomes: self._batch_ended(page, outcomes),
        )
        if page.handed_on:
            return
        page.marking = True
        await self._mark(day, request, page.sent)
        self._status.deferred += len(page.held)
        for until, group in hold_groups(page.held):
            hold = _Hold([page.messages[p] for p in group], page.retailers)
            hold.task = asyncio.create_task(self._after_group_hold(hold, until, day, request))
            self._held.append(hold)

    def _batch_ended(self, page: _Page, outcomes: list[BatchItemOutcome]) -> None:
        """Count a batch's outcomes as it ends (a live status, and what a hand-on keeps)."""
        if page.handed_on:  # a batch that outlived its run: the next run sends (or finds) its messages
            return
        for outcome in outcomes:
            if outcome.status == "deferred" and outcome.retry_at:
                page.held.append((outcome.retry_at, page.position[outcome.idempotency_key]))
                continue
            retailer = page.retailers[outcome.idempotency_key]
            page.open.discard(retailer.retailer_id)
            if self._tally(outcome):
                page.sent.append(retailer)

    async def _hand_on(
        self, sending: list[_Page], lanes: asyncio.Semaphore, day: date, request: RemindersRequest
    ) -> list[int]:
        """Before a continue-as-new: the retailers of the pages still sending, for the next run.

        The pages' queued batches go out first (the lanes are busy meanwhile); then the batches still
        out get `HANDOFF_WAIT`. A batch on a killed worker waits out its heartbeat timeout and its
        leases, 15-35 s, and a run that drained every page waited for it with every other lane idle
        (the scale-out drill). What ended is counted and its sent retailers marked; the rest, and
        the held whose timers have not ended (quiet hours: till 08:00), are read again by the next
        run, and a message that went out meanwhile is found by the outbox, not sent twice.
        """
        await workflow.wait_condition(lambda: all(p.done() for p in sending) or not lanes.locked())
        try:
            await workflow.wait_condition(lambda: all(p.done() for p in sending), timeout=HANDOFF_WAIT)
        except TimeoutError:
            pass
        redo: list[int] = []
        sent: list[DueRetailer] = []
        for page in list(sending):
            if page.marking or page.done():  # only its mark is left
                await cast(asyncio.Task[None], page.task)
                continue
            page.handed_on = True
            redo += page.open
            sent += page.sent
        sending.clear()
        for hold in [h for h in self._held if not h.delivering]:  # still waiting for its hold to end
            self._held.remove(hold)
            cast(asyncio.Task[None], hold.task).cancel()
            redo += [hold.retailers[m.idempotency_key].retailer_id for m in hold.messages]
            self._status.deferred -= len(hold.messages)
        await self._mark(day, request, sent)
        self._status.due -= len(redo)  # the next run counts them when it reads them
        return sorted(redo)

    async def _after_group_hold(self, hold: _Hold, until: datetime, day: date, request: RemindersRequest) -> None:
        await workflow.sleep(max(until - workflow.now(), MIN_HOLD), summary=f"hold {len(hold.messages)} reminders")
        hold.delivering = True
        outcomes = await deliver_all(
            hold.messages, max_in_flight=request.max_in_flight, kind="reminder", task_queue=request.messaging_task_queue
        )
        self._status.deferred -= len(hold.messages)
        await self._mark(day, request, [hold.retailers[o.idempotency_key] for o in outcomes if self._tally(o)])
        self._show()

    async def _held_sent(self) -> None:
        """Wait for every held reminder."""
        if self._held:
            await asyncio.gather(*(cast(asyncio.Task[None], h.task) for h in self._held))
            self._held = []

    def _tally(self, outcome: BatchItemOutcome) -> bool:
        """Count one reminder's final outcome; True if it went out (now or before, under its key)."""
        went_out = tally(self._status, self._status.skipped, outcome)
        if went_out and not outcome.duplicate:
            # Replay-safe: the workflow meter records nothing while a history is replayed.
            if self._sent_counter is None:  # one per run, not one per reminder
                self._sent_counter = workflow.metric_meter().create_counter(
                    "reminders_sent_total", "Payment reminders sent (one per retailer and day)"
                )
            self._sent_counter.add(1)
        return went_out

    async def _mark(self, day: date, request: RemindersRequest, sent: list[DueRetailer]) -> None:
        if not sent:
            return
        # In retailer order (not as the batches ended), without the links: a mark needs the debits.
        sent = [r.model_copy(update={"payment_link": None}) for r in sorted(sent, key=lambda r: r.retailer_id)]
        await workflow.execute_activity_method(
            ReminderActivities.mark_reminders_sent,
            RemindersSent(reminder_date=day, business_timezone=request.business_timezone, due=sent),
            # One UPDATE of at most a page's debits (milliseconds), idempotent for the day: a worker
            # killed while it ran is retried after 15 s, not a minute.
            start_to_close_timeout=timedelta(seconds=15),
            retry_policy=DB_RETRY,
            summary=f"mark {len(sent)} retailers' debits reminded",
        )

    async def _read_page(
        self, day: date, after_retailer_id: int, request: RemindersRequest, retailer_ids: list[int] | None = None
    ) -> ReminderPage:
        return await workflow.execute_activity_method(
            ReminderActivities.reminder_page,
            ReminderPageRequest(
                reminder_date=day,
                business_timezone=request.business_timezone,
                after_retailer_id=after_retailer_id,
                page_size=request.page_size,
                currency=request.currency,
                retailer_ids=retailer_ids,
            ),
            start_to_close_timeout=timedelta(minutes=5),
            # A read prefetched beside the sends may be in flight when its worker dies: retried
            # after 15 s without a heartbeat, not after the whole 5 minutes.
            heartbeat_timeout=timedelta(seconds=15),
            retry_policy=DB_RETRY,
            summary=(
                f"due retailers after {after_retailer_id}, with payment links"
                if retailer_ids is None
                else f"{len(retailer_ids)} retailers handed on, with payment links"
            ),
        )

    def _show(self) -> None:
        status = self._status
        workflow.set_current_details(
            f"{status.reminder_date}: {status.sent} reminders sent, {status.deferred} deferred,"
            f" {sum(status.skipped.values())} skipped, {sum(status.failed.values())} failed, {status.pages} pages"
        )
        workflow.upsert_memo({"reminders_sent": status.sent, "reminders_skipped": sum(status.skipped.values())})

    @workflow.query
    def status(self) -> RemindersStatus:
        return self._status


# --------------------------------------------------------------------------- guardrails


async def tell_retailers(changes: Sequence[GuardrailChange], messaging_task_queue: str) -> int:
    """`credit_paused` / `credit_resumed`, keyed by the change's audit row; returns how many failed."""
    messages = [
        SendMessage(
            idempotency_key=f"credit_{c.change}:{c.audit_id}",
            recipient_type="retailer",
            recipient_id=str(c.retailer_id),
            template=f"credit_{c.change}",
            params={"reason": c.reason or "", "amount_due": str(c.amount_due)} if c.change == "paused" else {},
        )
        for c in changes
    ]
    delivered = await deliver_all(messages, max_in_flight=50, kind="credit_notice", task_queue=messaging_task_queue)
    reasons = [o.reason or "failed" for o in delivered if o.status == "failed"]
    for reason in reasons:
        workflow.logger.warning("credit message not sent: %s", reason)
    return len(reasons)


async def apply_guardrails(
    check: GuardrailsCheck,
    messaging_task_queue: str,
    on_applied: Callable[[GuardrailsResult], None] | None = None,
) -> GuardrailsResult:
    """Apply, then tell each retailer changed; `on_applied` sees the changes before the messages go
    (which quiet hours may hold until morning)."""
    changes = await workflow.execute_activity_method(
        GuardrailActivities.apply,
        check,
        start_to_close_timeout=timedelta(minutes=5),
        retry_policy=DB_RETRY,
        summary="pause past-limit retailers, lift cleared system pauses",
    )
    result = GuardrailsResult(
        check_date=check.check_date,
        paused=[c.retailer_id for c in changes if c.change == "paused"],
        resumed=[c.retailer_id for c in changes if c.change == "resumed"],
    )
    if on_applied is not None:
        on_applied(result.model_copy())
    result.messages_failed = await tell_retailers(changes, messaging_task_queue)
    return result


@workflow.defn
class CreditGuardrailsWorkflow:
    def __init__(self) -> None:
        self._applied: GuardrailsResult | None = None

    @workflow.run
    async def run(self, request: GuardrailsRequest) -> GuardrailsResult:
        day = request.check_date or await scheduled_day(request.business_timezone)
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("credit-guardrails")])
        result = await apply_guardrails(
            GuardrailsCheck(check_date=day, retailer_ids=request.retailer_ids, reference=request.reference),
            request.messaging_task_queue,
            on_applied=self._set_applied,
        )
        workflow.set_current_details(f"{day}: {len(result.paused)} paused, {len(result.resumed)} resumed")
        return result

    def _set_applied(self, result: GuardrailsResult) -> None:
        self._applied = result

    @workflow.update
    async def applied(self) -> GuardrailsResult:
        """The changes once written, before the retailers' messages go: an admin's re-check
        (`services.credit.recheck_guardrails`) answers from this, never waiting on a held message.
        `messages_failed` is 0 here; the run's result counts them."""
        await workflow.wait_condition(lambda: self._applied is not None)
        return cast(GuardrailsResult, self._applied)


# --------------------------------------------------------------------------- payments


@workflow.defn
class RecordPaymentWorkflow:
    def __init__(self) -> None:
        self._recorded: PaymentRecorded | None = None
        self._settled: PaymentResult | None = None
        self._refused: ActivityError | None = None

    @workflow.run
    async def run(self, payment: RecordPayment) -> PaymentResult:
        workflow.upsert_search_attributes([search_attributes.RETAILER_ID.value_set(str(payment.retailer_id))])
        try:
            self._recorded = await workflow.execute_activity_method(
                PaymentRecordingActivities.record,
                payment,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
                summary=f"record {payment.amount} from retailer {payment.retailer_id}, oldest debits first",
            )
        except ActivityError as error:  # refused (no such retailer): the waiting update says so too
            self._refused = error
            await workflow.wait_condition(workflow.all_handlers_finished)
            raise
        guardrails = await apply_guardrails(
            GuardrailsCheck(
                check_date=await scheduled_day(payment.business_timezone),
                retailer_ids=[payment.retailer_id],
                reference=f"payment:{payment.reference}",
            ),
            payment.messaging_task_queue,
            on_applied=self._set_applied,
        )
        workflow.set_current_details(
            f"{len(self._recorded.allocations)} debits paid"
            + (", credit resumed" if guardrails.resumed else "")
            + (" (already recorded)" if self._recorded.duplicate else "")
        )
        await workflow.wait_condition(workflow.all_handlers_finished)  # no command: replays unchanged
        return PaymentResult(payment=self._recorded, guardrails=guardrails)

    def _set_applied(self, guardrails: GuardrailsResult) -> None:
        assert self._recorded is not None
        self._settled = PaymentResult(payment=self._recorded, guardrails=guardrails)

    @workflow.update
    async def applied(self) -> PaymentResult:
        """The payment once written and the guardrails applied, before the retailer's
        `credit_resumed` goes: `services.credit.record_payment` answers from this, since quiet
        hours hold that message until morning and no caller waits for it (issue #33).
        `messages_failed` is 0 here; the run's result counts them.

        `payment.duplicate` is true unless this update came with the start that ran the recording
        (its id is the run's `recorded_for` memo): a caller joining a recording already made (a
        retry, the Stripe webhook's) is told it changed nothing."""
        await workflow.wait_condition(lambda: self._settled is not None or self._refused is not None)
        if self._settled is None:
            cause = self._refused.cause if self._refused is not None else None
            if isinstance(cause, ApplicationError):
                raise ApplicationError(cause.message, type=cause.type, non_retryable=True)
            raise ApplicationError(f"payment not recorded: {cause}", type="PaymentNotRecorded", non_retryable=True)
        settled = self._settled.model_copy(deep=True)
        update = workflow.current_update_info()
        starter = workflow.memo_value("recorded_for", default=None, type_hint=str)
        if update is None or update.id != starter:
            settled.payment.duplicate = True
        return settled

    @workflow.query
    def recorded(self) -> PaymentRecorded | None:
        return self._recorded
