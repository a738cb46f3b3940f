"""Credit's decisions in seconds: reminder pages and their sends, guardrails, payments."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest_asyncio
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

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
)
from schemas.insights import BusinessDay
from schemas.messaging import SendBatch, SendBatchResult, SendMessage, SendOutcome
from tests.workflows.harness import each_as_sent, eventually, family_worker, start_short_history_env, started_at

BUSINESS_DAY = date(2026, 11, 23)
"""What the calendar activity answers: not today, so a test sees the workflow used its answer."""


def page(
    day: date,
    retailers: list[int],
    *,
    last: bool,
    skipped: dict[str, int] | None = None,
    link_failures: dict[str, int] | None = None,
) -> ReminderPage:
    """A page as `credit_reminder_page` builds it: one payment_reminder per due retailer."""
    return ReminderPage(
        after_retailer_id=max(retailers, default=0),
        last_page=last,
        due=[
            DueRetailer(
                retailer_id=r, debit_ids=[r * 100], amount_due=Decimal("10.00"), payment_link=f"https://pay.example/{r}"
            )
            for r in retailers
        ],
        skipped=skipped or {},
        link_failures=link_failures or {},
    )


@dataclass
class FakeCredit:
    """The credit activities, the calendar and the messaging gateway, by their registered names."""

    pages: list[ReminderPage] = field(default_factory=list)
    changes: list[GuardrailChange] = field(default_factory=list)
    refuse_send: dict[str, str] = field(default_factory=dict)
    """idempotency key -> the permanent error `send_message` raises for it."""
    answers: dict[str, list[SendOutcome | timedelta]] = field(default_factory=dict)
    """idempotency key -> what the outbox answers its first sends (a timedelta: deferred that long); then sent."""
    hang: dict[str, asyncio.Event] = field(default_factory=dict)
    """idempotency key -> its send answers only once the event is set (a call that hangs)."""
    days_asked: list[BusinessDay] = field(default_factory=list)
    page_requests: list[ReminderPageRequest] = field(default_factory=list)
    marked: list[RemindersSent] = field(default_factory=list)
    checks: list[GuardrailsCheck] = field(default_factory=list)
    payments: list[RecordPayment] = field(default_factory=list)
    sends: list[SendMessage] = field(default_factory=list)
    send_times: list[datetime] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    batches: list[int] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    """"read after N", "send N..." and "sent N..." (N: a batch's first retailer), "mark N...", in order."""

    @activity.defn(name="business_day")
    async def business_day(self, request: BusinessDay) -> date:
        self.days_asked.append(request)
        return BUSINESS_DAY

    @activity.defn(name="credit_reminder_page")
    async def reminder_page(self, request: ReminderPageRequest) -> ReminderPage:
        self.page_requests.append(request)
        if request.retailer_ids is not None:  # what a run handed on: all still due, none reminded
            self.timeline.append(f"read {request.retailer_ids[0]}... handed on")
            return page(request.reminder_date, request.retailer_ids, last=True)
        self.timeline.append(f"read after {request.after_retailer_id}")
        return self.pages.pop(0)

    @activity.defn(name="credit_mark_reminders_sent")
    async def mark_reminders_sent(self, request: RemindersSent) -> int:
        self.marked.append(request)
        self.timeline.append(f"mark {request.due[0].retailer_id}...")
        return sum(len(r.debit_ids) for r in request.due)

    @activity.defn(name="credit_apply_guardrails")
    async def apply(self, check: GuardrailsCheck) -> list[GuardrailChange]:
        self.checks.append(check)
        return self.changes

    @activity.defn(name="credit_record_payment")
    async def record(self, payment: RecordPayment) -> PaymentRecorded:
        self.payments.append(payment)
        return PaymentRecorded(
            retailer_id=payment.retailer_id, reference=payment.reference, amount=payment.amount, credit_transaction_id=9
        )

    @activity.defn(name="send_message")
    async def send_message(self, message: SendMessage) -> SendOutcome:
        self.sends.append(message)
        self.send_times.append(started_at())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)  # long enough for the page's other sends to be in flight beside it
            if hung := self.hang.pop(message.idempotency_key, None):  # the first send only
                await hung.wait()
        finally:
            self.in_flight -= 1
        if error := self.refuse_send.get(message.idempotency_key):
            raise ApplicationError(f"{message.idempotency_key}: {error}", type=error, non_retryable=True)
        if answers := self.answers.get(message.idempotency_key):
            answer = answers.pop(0)
            if isinstance(answer, timedelta):
                return SendOutcome(status="deferred", reason="quiet_hours", retry_at=started_at() + answer)
            return answer
        return SendOutcome(status="sent", provider_sid="SM1", channel="whatsapp")

    @activity.defn(name="send_messages")
    async def send_messages(self, batch: SendBatch) -> SendBatchResult:
        """The batch activity: each message as `send_message` answers it, `max_in_flight` at a time."""
        self.batches.append(len(batch.messages))
        first = batch.messages[0].recipient_id
        self.timeline.append(f"send {first}...")
        result = await each_as_sent(batch, self.send_message)
        self.timeline.append(f"sent {first}...")
        return result

    def activities(self) -> list:
        return [
            self.business_day,
            self.reminder_page,
            self.mark_reminders_sent,
            self.apply,
            self.record,
            self.send_message,
            self.send_messages,
        ]


def start_reminders(env: WorkflowEnvironment, task_queue: str, request: RemindersRequest):
    """A `payment-reminders` run of its own on the test's queue (the fakes' messaging queue too)."""
    return env.client.start_workflow(
        "PaymentRemindersWorkflow",
        request.model_copy(update={"messaging_task_queue": task_queue}),
        id=f"payment-reminders/{uuid.uuid4().hex}",
        task_queue=task_queue,
        result_type=RemindersStatus,
    )


async def test_reminders_page_through_bounded_sends_and_mark_only_what_went_out(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    day = date(2026, 12, 1)
    hold = timedelta(hours=9)
    fake = FakeCredit(
        pages=[
            page(day, [1, 2, 3, 4], last=False, skipped={"no_phone": 1}, link_failures={"InvalidAmount": 1}),
            page(day, [5], last=True),
        ],
        answers={
            f"reminder:2:{day}": [SendOutcome(status="sent", duplicate=True)],
            f"reminder:4:{day}": [SendOutcome(status="suppressed", reason="opted_out")],
            f"reminder:5:{day}": [hold],
        },
        refuse_send={f"reminder:3:{day}": "InvalidRecipient"},
    )
    async with family_worker(time_skipping_env, task_queue, "credit", fake.activities()):
        handle = await start_reminders(
            time_skipping_env, task_queue, RemindersRequest(reminder_date=day, page_size=4, max_in_flight=2)
        )

        async def held() -> bool:
            return (await handle.query("status", result_type=RemindersStatus)).deferred == 1

        await eventually(held)
        while_held = await handle.query("status", result_type=RemindersStatus)
        status = await handle.result()

    assert [(r.reminder_date, r.after_retailer_id, r.page_size) for r in fake.page_requests] == [
        (day, 0, 4),
        (day, 4, 4),
    ]
    # One batch activity per page, never more than max_in_flight sends at once; retailer 5 twice:
    # deferred, then after its hold.
    assert fake.batches == [4, 1, 1]
    ids = [m.recipient_id for m in fake.sends]
    assert sorted(ids[:4]) == ["1", "2", "3", "4"] and ids[4:] == ["5", "5"]  # a page's sends run side by side
    assert fake.most_in_flight <= 2
    assert fake.send_times[-1] - fake.send_times[-2] >= hold
    # Marked: the new send and the earlier one (a re-run) with the page; the deferred one once it
    # went out, for the day it was due. Never the failed or opted-out retailer.
    assert [([r.retailer_id for r in m.due], m.reminder_date) for m in fake.marked] == [([1, 2], day), ([5], day)]
    assert fake.days_asked == []  # the day was given
    assert (while_held.deferred, while_held.sent, while_held.pages) == (1, 1, 2)
    assert status == RemindersStatus(
        reminder_date=day,
        after_retailer_id=5,
        pages=2,
        due=7,
        sent=2,
        duplicates=1,
        deferred=0,
        skipped={"no_phone": 1, "opted_out": 1},
        failed={"InvalidAmount": 1, "InvalidRecipient": 1},
        finished=True,
    )


async def test_the_next_page_is_read_while_a_page_sends_and_pages_go_out_in_order(
    time_skipping_env: WorkflowEnvironment, task_queue: str, record_history
) -> None:
    day = date(2026, 12, 2)
    fake = FakeCredit(pages=[page(day, [1, 2], last=False), page(day, [3, 4], last=False), page(day, [5], last=True)])
    async with family_worker(time_skipping_env, task_queue, "credit", fake.activities()):
        handle = await start_reminders(
            time_skipping_env, task_queue, RemindersRequest(reminder_date=day, page_size=2, max_in_flight=2)
        )
        status = await handle.result()
        await record_history(handle, "credit_payment_reminders_pages")

    # Each page's read overlaps the page before it sending; the sends and marks keep page order,
    # one batch at a time (max_in_flight 2 is one lane), each page marked once it went out.
    at = fake.timeline.index
    assert at("read after 0") < at("send 1...") and at("read after 2") < at("sent 1...")
    assert at("sent 1...") < at("send 3...") and at("read after 4") < at("sent 3...")
    assert at("sent 3...") < at("send 5...")
    assert [e for e in fake.timeline if e.startswith("send")] == ["send 1...", "send 3...", "send 5..."]
    assert [e for e in fake.timeline if e.startswith("mark")] == ["mark 1...", "mark 3...", "mark 5..."]
    assert at("sent 1...") < at("mark 1...") and at("sent 3...") < at("mark 3...") and at("sent 5...") < at("mark 5...")
    assert [r.after_retailer_id for r in fake.page_requests] == [0, 2, 4]  # each page read once
    assert (status.sent, status.pages, status.after_retailer_id, status.finished) == (5, 3, 5, True)


async def test_a_page_sends_on_the_lanes_the_page_before_frees_never_above_max_in_flight(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    day = date(2026, 12, 3)
    # max_in_flight 50: two batches of 25 sends at once. Page one is a batch of 100 and one of 50.
    first, second = list(range(1, 151)), list(range(151, 251))
    fake = FakeCredit(pages=[page(day, first, last=False), page(day, second, last=True)])
    async with family_worker(time_skipping_env, task_queue, "credit", fake.activities()):
        handle = await start_reminders(
            time_skipping_env, task_queue, RemindersRequest(reminder_date=day, page_size=150, max_in_flight=50)
        )
        status = await handle.result()

    # The second page's batch takes the lane the short batch freed, while the long one still sends.
    at = fake.timeline.index
    assert at("sent 101...") < at("send 151...") < at("sent 1...")
    assert fake.most_in_flight <= 50
    assert at("sent 1...") < at("mark 1...") < at("mark 151...")  # each page marked once all of it went out
    assert sorted(r.retailer_id for m in fake.marked for r in m.due) == first + second
    assert (status.sent, status.pages, status.after_retailer_id, status.finished) == (250, 2, 250, True)


async def test_a_batch_that_hangs_holds_one_lane_while_the_pages_after_it_send_on_the_others(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    """A batch on a killed worker holds its lane until its heartbeat timeout; the day goes on."""
    day = date(2026, 12, 4)
    released = asyncio.Event()
    pages = [page(day, list(range(n, n + 100)), last=n == 401) for n in (1, 101, 201, 301, 401)]
    fake = FakeCredit(pages=pages, hang={f"reminder:1:{day}": released})
    async with family_worker(time_skipping_env, task_queue, "credit", fake.activities()):
        handle = await start_reminders(
            time_skipping_env, task_queue, RemindersRequest(reminder_date=day, page_size=100, max_in_flight=50)
        )

        async def later_pages_marked() -> bool:
            return {"mark 101...", "mark 201...", "mark 301...", "mark 401..."} <= set(fake.timeline)

        try:
            await eventually(later_pages_marked)
        finally:
            released.set()
        status = await handle.result()

    # Each page after the hung batch's sent and marked on the other lane before that batch ended.
    assert fake.timeline.index("mark 401...") < fake.timeline.index("sent 1...") < fake.timeline.index("mark 1...")
    assert sorted(r.retailer_id for m in fake.marked for r in m.due) == list(range(1, 501))
    assert fake.most_in_flight <= 50
    assert (status.sent, status.pages, status.finished) == (500, 5, True)


SUGGEST_CONTINUE_AS_NEW_AT = 40
"""Events after which `short_history_env` suggests continuing as new (Temporal's default is 4,096)."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def short_history_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continue-as-new after a few pages of a reminders day."""
    env = await start_short_history_env(SUGGEST_CONTINUE_AS_NEW_AT)
    yield env
    await env.shutdown()


async def test_a_run_continues_as_new_past_a_hung_batch_and_hands_its_retailers_to_the_next(
    short_history_env: WorkflowEnvironment, task_queue: str
) -> None:
    """A batch on a killed worker holds its lane 15-35 s: a run that drained every page before it
    continued as new waited for it with every other lane idle (the scale-out drill)."""
    day = date(2026, 12, 5)
    released = asyncio.Event()  # never set while the day runs: the batch of retailers 1-100 hangs
    pages = [page(day, list(range(n, n + 100)), last=n == 901) for n in range(1, 1000, 100)]
    fake = FakeCredit(pages=pages, hang={f"reminder:1:{day}": released})
    async with family_worker(short_history_env, task_queue, "credit", fake.activities()):
        handle = await start_reminders(
            short_history_env, task_queue, RemindersRequest(reminder_date=day, page_size=100, max_in_flight=50)
        )
        try:
            status = await asyncio.wait_for(handle.result(), timeout=120)
        finally:
            released.set()
        runs = [r async for r in short_history_env.client.list_workflows(f"WorkflowId = '{handle.id}'")]

    assert len(runs) > 1, "the day never continued as new"
    handed_on = [r.retailer_ids for r in fake.page_requests if r.retailer_ids is not None]
    assert handed_on and list(range(1, 101)) == handed_on[0]  # the hung batch's retailers, read again
    # Every retailer marked exactly once, and counted once over the runs (the hung batch's outcome,
    # had it come, would have been the next run's to count).
    assert sorted(r.retailer_id for m in fake.marked for r in m.due) == list(range(1, 1001))
    assert (status.due, status.sent, status.duplicates, status.deferred, status.finished) == (1000, 1000, 0, 0, True)


async def test_a_run_continues_as_new_without_waiting_for_a_held_reminder_and_the_next_run_holds_it(
    short_history_env: WorkflowEnvironment, task_queue: str
) -> None:
    """Quiet hours hold a reminder till 08:00: the run that held it hands it on, not waits for it."""
    day = date(2026, 12, 6)
    pages = [page(day, list(range(n, n + 100)), last=n == 901) for n in range(1, 1000, 100)]
    # Held for hours by the first run (the next run's send, during the hold, is held again: 2 s here).
    fake = FakeCredit(pages=pages, answers={f"reminder:5:{day}": [timedelta(hours=10), timedelta(seconds=2)]})
    async with family_worker(short_history_env, task_queue, "credit", fake.activities()):
        handle = await start_reminders(
            short_history_env, task_queue, RemindersRequest(reminder_date=day, page_size=100, max_in_flight=50)
        )
        status = await asyncio.wait_for(handle.result(), timeout=120)
        client = short_history_env.client
        events = [
            e
            async for run in client.list_workflows(f"WorkflowId = '{handle.id}'")
            async for e in client.get_workflow_handle(handle.id, run_id=run.run_id).fetch_history_events()
        ]

    assert any(5 in r.retailer_ids for r in fake.page_requests if r.retailer_ids is not None)
    assert [m.recipient_id for m in fake.sends].count("5") == 3  # held, held again by the next run, sent
    assert any(e.event_type == EventType.EVENT_TYPE_TIMER_CANCELED for e in events)  # the 10 h hold
    assert sorted(r.retailer_id for m in fake.marked for r in m.due) == list(range(1, 1001))
    assert (status.due, status.sent, status.duplicates, status.deferred, status.finished) == (1000, 1000, 0, 0, True)


async def test_reminders_run_for_the_business_day_and_send_nothing_for_a_page_of_skips(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeCredit(pages=[page(BUSINESS_DAY, [], last=True, skipped={"opted_out": 2})])
    async with family_worker(time_skipping_env, task_queue, "credit", fake.activities()):
        handle = await start_reminders(
            time_skipping_env, task_queue, RemindersRequest(business_timezone="Africa/Accra")
        )
        status = await handle.result()

    assert [d.timezone for d in fake.days_asked] == ["Africa/Accra"]
    assert [r.reminder_date for r in fake.page_requests] == [BUSINESS_DAY]
    assert fake.sends == [] and fake.marked == []
    assert (status.reminder_date, status.due, status.sent, status.skipped) == (BUSINESS_DAY, 2, 0, {"opted_out": 2})


async def test_guardrails_pause_and_resume_and_tell_each_retailer_once(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeCredit(
        changes=[
            GuardrailChange(
                retailer_id=1,
                change="paused",
                audit_id=10,
                reason="debit 30 days overdue",
                amount_due=Decimal("1234.5"),
            ),
            GuardrailChange(retailer_id=2, change="resumed", audit_id=11),
        ],
        refuse_send={"credit_resumed:11": "RecipientOptedOut"},
    )
    async with family_worker(time_skipping_env, task_queue, "credit", fake.activities()):
        result = await time_skipping_env.client.execute_workflow(
            "CreditGuardrailsWorkflow",
            GuardrailsRequest(messaging_task_queue=task_queue),
            id=f"credit-guardrails/{uuid.uuid4().hex}",
            task_queue=task_queue,
            result_type=GuardrailsResult,
        )

    assert fake.checks == [GuardrailsCheck(check_date=BUSINESS_DAY)]  # every retailer, today's business day
    sent = {m.idempotency_key: m for m in fake.sends}  # sent concurrently: in any order
    assert len(fake.sends) == 2
    assert {(k, m.template, m.recipient_id) for k, m in sent.items()} == {
        ("credit_paused:10", "credit_paused", "1"),
        ("credit_resumed:11", "credit_resumed", "2"),
    }
    # a plain amount: the message writes it at send time, in the account's currency (issue #35)
    assert sent["credit_paused:10"].params == {"reason": "debit 30 days overdue", "amount_due": "1234.5"}
    # A message that cannot go out (opted out) is counted, and never retried or fatal.
    assert result == GuardrailsResult(check_date=BUSINESS_DAY, paused=[1], resumed=[2], messages_failed=1)


async def test_recording_a_payment_rechecks_that_retailers_guardrails_at_once(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeCredit(changes=[GuardrailChange(retailer_id=5, change="resumed", audit_id=21)])
    payment = RecordPayment(
        retailer_id=5,
        amount=Decimal("250.00"),
        reference="bank:tx-778",
        actor="admin-1",
        messaging_task_queue=task_queue,
    )
    async with family_worker(time_skipping_env, task_queue, "credit", fake.activities()):
        result = await time_skipping_env.client.execute_workflow(
            "RecordPaymentWorkflow",
            payment,
            id=f"payment/{uuid.uuid4().hex}",
            task_queue=task_queue,
            result_type=PaymentResult,
        )

    assert fake.payments == [payment]
    assert fake.checks == [GuardrailsCheck(check_date=BUSINESS_DAY, retailer_ids=[5], reference="payment:bank:tx-778")]
    assert [m.idempotency_key for m in fake.sends] == ["credit_resumed:21"]
    assert result.payment.credit_transaction_id == 9
    assert result.guardrails.resumed == [5]
