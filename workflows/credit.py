"""Credit operations: payment reminders, guardrails (auto-pause / auto-unpause), payments.

`payment-reminders/{date}` (10:00): page by page, the retailers with debits due a reminder today
get one `payment_reminder` with one stable pay link for their total; the debits are marked
reminded once the message went out. A page is its read, one `send_messages` per hundred reminders
and the mark; the next page is read while a page sends, and its batches take the lanes the page
before frees.

`credit-guardrails/{date}` (11:00): pauses retailers past their limits and lifts the pauses the
system made whose conditions cleared; each retailer is told. `credit-guardrails/{retailer}/{reference}`:
the same check for one retailer after an admin's adjustment in its favour, so it lifts a pause at once.

`payment/{retailer}/{reference}`: records a payment (oldest debits first), then re-checks that retailer's
guardrails at once, so paying lifts a system pause within seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date, datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows._common import db_retry, scheduled_day
from workflows.messaging import (
    MIN_HOLD,
    deliver_all,
    hold_groups,
    permanent_failure,
    send_all,
    batch_lanes,
    send_batches,
    send_message,
)

with workflow.unsafe.imports_passed_through():
    from activities.credit.guardrails import GuardrailActivities
    from activities.credit.payments import PaymentRecordingActivities
    from activities.credit.reminders import ReminderActivities
    from schemas import search_attributes
    from schemas.credit import (
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
        DueRetailer,
        reminder_key,
    )
    from schemas.messaging import BatchItemOutcome, SendBatch, SendBatchResult, SendMessage, SendOutcome

DB_RETRY = db_retry("UnknownRetailer", "StripeNotConfigured")
SEND_BATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=1), maximum_attempts=30
)
REMINDERS_PER_MESSAGE_PATCH = "reminders-per-message-delivery"
"""One `send_message` per reminder on the rate-limited messaging queue (was one `send_messages`
batch activity pacing itself), and a deferred reminder sent, then marked, when its hold ends."""
REMINDERS_BATCHED_PATCH = "reminders-batched-sends"
"""A page's reminders a hundred to a `send_messages` activity (`send_batches`), each message paced
by the cluster's rate on its own; held reminders wait in groups, one timer per hold's end."""
REMINDERS_PIPELINED_PATCH = "reminders-pipelined-pages"
"""The next page is read (and its links written) while the current page's reminders go out."""
REMINDERS_OVERLAPPED_PATCH = "reminders-overlapped-sends"
"""One set of send lanes for the whole day: a page's batches start as the page before frees its
lanes, not after that page's last batch and its mark."""
GUARDRAIL_NOTICES_BATCHED_PATCH = "guardrail-notices-batched"
"""The notices of a guardrails run a hundred to a `send_messages` activity (`deliver_all`)."""


def _add(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


# --------------------------------------------------------------------------- reminders


@workflow.defn
class PaymentRemindersWorkflow:
    def __init__(self) -> None:
        self._status = RemindersStatus()
        self._held: list[asyncio.Task[None]] = []

    @workflow.run
    async def run(self, request: RemindersRequest) -> RemindersStatus:
        day = request.reminder_date or await scheduled_day(request.business_timezone)
        self._status = request.progress or RemindersStatus(reminder_date=day)
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("payment-reminders")])

        pipelined = workflow.patched(REMINDERS_PIPELINED_PATCH)
        # At most two pages send at once, on one set of lanes (so `max_in_flight` holds over both):
        # the page before's last batches and this page's first.
        lanes = batch_lanes(request.max_in_flight) if pipelined and workflow.patched(REMINDERS_OVERLAPPED_PATCH) else None
        sending: asyncio.Task[None] | None = None
        next_page: asyncio.Task[ReminderPage] | None = None
        while not self._status.finished:
            page = await (next_page or self._page(day, self._status.after_retailer_id, request))
            next_page = None
            status = self._status
            status.due += len(page.due) + sum(page.skipped.values()) + sum(page.link_failures.values())
            for reason, n in page.skipped.items():
                _add(status.skipped, reason, n)
            for error, n in page.link_failures.items():
                _add(status.failed, error, n)
            if pipelined and not page.last_page and not workflow.info().is_continue_as_new_suggested():
                # The next page's read and links run while this page sends: the database and the
                # messaging worker are busy at the same time, not in turn.
                next_page = asyncio.create_task(self._page(day, page.after_retailer_id, request))
            if page.messages and lanes is not None:
                before, sending = sending, asyncio.create_task(
                    self._deliver_batched(page.messages, page.due, day, request, lanes)
                )
                if before is not None:
                    await before
            elif page.messages and workflow.patched(REMINDERS_BATCHED_PATCH):
                await self._deliver_batched(page.messages, page.due, day, request)
            elif page.messages and workflow.patched(REMINDERS_PER_MESSAGE_PATCH):
                await self._deliver(page.messages, page.due, day, request)
            elif page.messages:
                sent_keys = await self._send(page.messages, request)
                sent = [r for r in page.due if reminder_key(r.retailer_id, day) in sent_keys]
                await workflow.execute_activity_method(
                    ReminderActivities.mark_reminders_sent,
                    RemindersSent(reminder_date=day, business_timezone=request.business_timezone, due=sent),
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=DB_RETRY,
                    summary=f"mark {len(sent)} retailers' debits reminded",
                )
            status.after_retailer_id = page.after_retailer_id
            status.pages += 1
            if page.last_page and sending is not None:
                await sending  # the day is finished once its last page went out
            status.finished = page.last_page
            self._show()
            if not status.finished and next_page is None and workflow.info().is_continue_as_new_suggested():
                if sending is not None:
                    await sending
                await self._held_delivered()  # a new run would not know of them
                workflow.continue_as_new(request.model_copy(update={"reminder_date": day, "progress": status}))
        await self._held_delivered()
        return self._status

    async def _deliver_batched(
        self, messages: list[SendMessage], due: list[DueRetailer], day: date, request: RemindersRequest,
        lanes: asyncio.Semaphore | None = None,
    ) -> None:
        """Send the page's reminders in batches; mark the sent retailers reminded.

        Held reminders (quiet hours in the retailer's zone, the brake) wait beside the pages that
        follow, one durable timer per group whose holds end together, then go out and are marked
        for `day`, the day they were due, so the cadence's next step still comes on its own day.
        """
        retailers = {reminder_key(r.retailer_id, day): r for r in due}
        outcomes = await send_batches(
            messages, max_in_flight=request.max_in_flight, task_queue=request.messaging_task_queue, lanes=lanes
        )
        sent: list[DueRetailer] = []
        held: list[tuple[datetime, int]] = []
        for position, outcome in enumerate(outcomes):
            if outcome.status == "deferred" and outcome.retry_at:
                held.append((outcome.retry_at, position))
            elif self._tally(outcome):
                sent.append(retailers[outcome.idempotency_key])
        await self._mark(day, request, sent)
        self._status.deferred += len(held)
        for until, group in hold_groups(held):
            waiting = [messages[p] for p in group]
            self._held.append(asyncio.create_task(self._after_group_hold(waiting, until, retailers, day, request)))

    async def _after_group_hold(
        self, messages: list[SendMessage], until: datetime, retailers: dict[str, DueRetailer], day: date,
        request: RemindersRequest,
    ) -> None:
        await workflow.sleep(max(until - workflow.now(), MIN_HOLD), summary=f"hold {len(messages)} reminders")
        outcomes = await deliver_all(messages, max_in_flight=request.max_in_flight, task_queue=request.messaging_task_queue)
        self._status.deferred -= len(messages)
        await self._mark(day, request, [retailers[o.idempotency_key] for o in outcomes if self._tally(o)])
        self._show()

    async def _deliver(
        self, messages: list[SendMessage], due: list[DueRetailer], day: date, request: RemindersRequest
    ) -> None:
        """Send the page's reminders, `max_in_flight` at a time; mark the sent retailers reminded.

        A deferred reminder (quiet hours in the retailer's zone, the brake) waits for its hold
        on a durable timer beside the pages that follow, then goes out and is marked for `day`,
        the day it was due, so the cadence's next step still comes on its own day.
        """
        retailers = {reminder_key(r.retailer_id, day): r for r in due}
        slots = asyncio.Semaphore(request.max_in_flight)

        async def first_try(message: SendMessage) -> SendOutcome | ActivityError:
            async with slots:
                try:
                    return await send_message(message, task_queue=request.messaging_task_queue)
                except ActivityError as error:
                    return error

        outcomes = await asyncio.gather(*(first_try(m) for m in messages))
        sent: list[DueRetailer] = []
        for message, outcome in zip(messages, outcomes, strict=True):
            retailer = retailers[message.idempotency_key]
            if isinstance(outcome, SendOutcome) and outcome.status == "deferred" and outcome.retry_at:
                self._status.deferred += 1
                self._held.append(asyncio.create_task(self._after_hold(message, outcome, retailer, day, request)))
            elif self._tally(outcome):
                sent.append(retailer)
        await self._mark(day, request, sent)

    async def _after_hold(
        self, message: SendMessage, outcome: SendOutcome, retailer: DueRetailer, day: date, request: RemindersRequest
    ) -> None:
        final: SendOutcome | ActivityError = outcome
        while isinstance(final, SendOutcome) and final.status == "deferred" and final.retry_at:
            await workflow.sleep(max(final.retry_at - workflow.now(), MIN_HOLD), summary=f"{final.reason}: hold reminder")
            try:
                final = await send_message(message, task_queue=request.messaging_task_queue)
            except ActivityError as error:
                final = error
        self._status.deferred -= 1
        if self._tally(final):
            await self._mark(day, request, [retailer])
        self._show()

    async def _held_delivered(self) -> None:
        if self._held:
            await asyncio.gather(*self._held)
            self._held = []

    def _tally(self, outcome: SendOutcome | BatchItemOutcome | ActivityError) -> bool:
        """Count one reminder's final outcome; True if it went out (now or before, under its key)."""
        status = self._status
        if isinstance(outcome, ActivityError):
            _add(status.failed, permanent_failure(outcome) or type(outcome.cause).__name__)
            return False
        if outcome.status == "failed":
            _add(status.failed, outcome.reason or "failed")
            return False
        if outcome.status == "sent":
            if outcome.duplicate:
                status.duplicates += 1
            else:
                status.sent += 1
                workflow.metric_meter().create_counter(
                    "reminders_sent_total", "Payment reminders sent (one per retailer and day)"
                ).add(1)
            return True
        _add(status.skipped, outcome.reason or outcome.status)
        return False

    async def _mark(self, day: date, request: RemindersRequest, sent: list[DueRetailer]) -> None:
        if not sent:
            return
        await workflow.execute_activity_method(
            ReminderActivities.mark_reminders_sent,
            RemindersSent(reminder_date=day, business_timezone=request.business_timezone, due=sent),
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=DB_RETRY,
            summary=f"mark {len(sent)} retailers' debits reminded",
        )

    async def _send(self, messages: list[SendMessage], request: RemindersRequest) -> set[str]:
        """One batch activity on the messaging queue; returns the keys that went out (now or before)."""
        result: SendBatchResult = await workflow.execute_activity(
            "send_messages",
            SendBatch(messages=messages, max_in_flight=request.max_in_flight),
            result_type=SendBatchResult,
            task_queue=request.messaging_task_queue,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=SEND_BATCH_RETRY,
            summary=f"send {len(messages)} payment reminders",
        )
        status = self._status
        sent: set[str] = set()
        new = sum(1 for o in result.outcomes if o.status == "sent" and not o.duplicate)
        # Replay-safe: the workflow meter records nothing while a history is replayed.
        workflow.metric_meter().create_counter(
            "reminders_sent_total", "Payment reminders sent (one per retailer and day)"
        ).add(new)
        for outcome in result.outcomes:
            if outcome.status == "sent":
                sent.add(outcome.idempotency_key)
                if outcome.duplicate:
                    status.duplicates += 1
                else:
                    status.sent += 1
            elif outcome.status == "failed":
                _add(status.failed, outcome.reason or "failed")
            else:  # suppressed by the outbox (opted out, daily cap) or deferred (quiet hours)
                _add(status.skipped, outcome.reason or outcome.status)
        return sent

    async def _page(self, day: date, after_retailer_id: int, request: RemindersRequest) -> ReminderPage:
        return await workflow.execute_activity_method(
            ReminderActivities.reminder_page,
            ReminderPageRequest(
                reminder_date=day,
                business_timezone=request.business_timezone,
                after_retailer_id=after_retailer_id,
                page_size=request.page_size,
                currency=request.currency,
            ),
            start_to_close_timeout=timedelta(minutes=5),
            # A read prefetched beside the sends may be in flight when its worker dies: retried
            # after 30 s without a heartbeat, not after the whole 5 minutes.
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
            summary=f"due retailers after {after_retailer_id}, with payment links",
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
            params={"reason": c.reason or "", "amount_due": f"{c.amount_due:,.2f}"} if c.change == "paused" else {},
        )
        for c in changes
    ]
    if workflow.patched(GUARDRAIL_NOTICES_BATCHED_PATCH):
        delivered = await deliver_all(messages, max_in_flight=50, task_queue=messaging_task_queue)
        reasons = [o.reason or "failed" for o in delivered if o.status == "failed"]
    else:
        outcomes = await send_all(messages, max_in_flight=50, task_queue=messaging_task_queue)
        reasons = [
            permanent_failure(o) or type(o).__name__ for o in outcomes if not isinstance(o, SendOutcome)
        ]
    for reason in reasons:
        workflow.logger.warning("credit message not sent: %s", reason)
    return len(reasons)


async def apply_guardrails(check: GuardrailsCheck, messaging_task_queue: str) -> GuardrailsResult:
    changes = await workflow.execute_activity_method(
        GuardrailActivities.apply,
        check,
        start_to_close_timeout=timedelta(minutes=5),
        retry_policy=DB_RETRY,
        summary="pause past-limit retailers, lift cleared system pauses",
    )
    failed = await tell_retailers(changes, messaging_task_queue)
    return GuardrailsResult(
        check_date=check.check_date,
        paused=[c.retailer_id for c in changes if c.change == "paused"],
        resumed=[c.retailer_id for c in changes if c.change == "resumed"],
        messages_failed=failed,
    )


@workflow.defn
class CreditGuardrailsWorkflow:
    @workflow.run
    async def run(self, request: GuardrailsRequest) -> GuardrailsResult:
        day = request.check_date or await scheduled_day(request.business_timezone)
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("credit-guardrails")])
        result = await apply_guardrails(
            GuardrailsCheck(check_date=day, retailer_ids=request.retailer_ids, reference=request.reference),
            request.messaging_task_queue,
        )
        workflow.set_current_details(f"{day}: {len(result.paused)} paused, {len(result.resumed)} resumed")
        return result


# --------------------------------------------------------------------------- payments


@workflow.defn
class RecordPaymentWorkflow:
    def __init__(self) -> None:
        self._recorded: PaymentRecorded | None = None

    @workflow.run
    async def run(self, payment: RecordPayment) -> PaymentResult:
        workflow.upsert_search_attributes([search_attributes.RETAILER_ID.value_set(str(payment.retailer_id))])
        self._recorded = await workflow.execute_activity_method(
            PaymentRecordingActivities.record,
            payment,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
            summary=f"record {payment.amount} from retailer {payment.retailer_id}, oldest debits first",
        )
        guardrails = await apply_guardrails(
            GuardrailsCheck(
                check_date=await scheduled_day(payment.business_timezone),
                retailer_ids=[payment.retailer_id],
                reference=f"payment:{payment.reference}",
            ),
            payment.messaging_task_queue,
        )
        workflow.set_current_details(
            f"{len(self._recorded.allocations)} debits paid"
            + (", credit resumed" if guardrails.resumed else "")
            + (" (already recorded)" if self._recorded.duplicate else "")
        )
        return PaymentResult(payment=self._recorded, guardrails=guardrails)

    @workflow.query
    def recorded(self) -> PaymentRecorded | None:
        return self._recorded
