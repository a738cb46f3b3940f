"""Order recovery's decisions in seconds: the clock, its follow-up, expiry, the signals that end it."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from schemas.messaging import SendMessage, SendOutcome
from schemas.orders import (
    FollowUpSent,
    LateOrderFailure,
    OrderFailure,
    OrderFailureResult,
    OrderState,
    OrderSweepPage,
    OrderSweepPageResult,
    OrderSweepProgress,
    OrderSweepRequest,
    PendingOrderInput,
    PendingOrderRecord,
    PendingOrderResult,
    PendingOrderStatus,
    RegisterPendingOrder,
    SettleOrder,
)
from tests.workflows.harness import eventually, family_worker, started_at, task_failures

RETAILER = 7
QUIET_SHIFT = timedelta(hours=6)
"""The activity moved the +2h follow-up out of the retailer's quiet hours by this much."""


@dataclass
class FakeOrders:
    """The order activities and the messaging gateway, by their registered names."""

    refuse: str | None = None
    state: OrderState = "PENDING"
    """The row's state the register activity answers."""
    outcomes: list[SendOutcome] = field(default_factory=list)
    registered: list[RegisterPendingOrder] = field(default_factory=list)
    records: dict[int, PendingOrderRecord] = field(default_factory=dict)
    sends: list[tuple[datetime, SendMessage]] = field(default_factory=list)
    follow_ups: list[FollowUpSent] = field(default_factory=list)
    settled: list[SettleOrder] = field(default_factory=list)
    failures: list[OrderFailure] = field(default_factory=list)

    @activity.defn(name="register_pending_order")
    async def register_pending_order(self, request: RegisterPendingOrder) -> PendingOrderRecord:
        self.registered.append(request)
        if self.refuse:
            raise ApplicationError(f"order {request.order_id}: {self.refuse}", type=self.refuse, non_retryable=True)
        record = PendingOrderRecord(
            order_id=request.order_id,
            retailer_id=RETAILER,
            state=self.state,
            created_at=request.created_at,
            expires_at=request.created_at + request.ttl,
            follow_up_at=request.created_at + request.follow_up_after + QUIET_SHIFT,
        )
        self.records[request.order_id] = record
        return record

    @activity.defn(name="send_message")
    async def send_message(self, message: SendMessage) -> SendOutcome:
        self.sends.append((started_at(), message))
        return self.outcomes.pop(0) if self.outcomes else SendOutcome(status="sent", provider_sid="SM1", channel="sms")

    @activity.defn(name="record_follow_up")
    async def record_follow_up(self, sent: FollowUpSent) -> None:
        self.follow_ups.append(sent)

    @activity.defn(name="settle_pending_order")
    async def settle_pending_order(self, request: SettleOrder) -> OrderState:
        self.settled.append(request)
        return request.state

    @activity.defn(name="handle_order_failure")
    async def handle_order_failure(self, failure: OrderFailure) -> OrderFailureResult:
        self.failures.append(failure)
        return OrderFailureResult(order_id=failure.order_id, retailer_id=RETAILER, changed=True)

    def activities(self) -> list:
        return [
            self.register_pending_order,
            self.send_message,
            self.record_follow_up,
            self.settle_pending_order,
            self.handle_order_failure,
        ]

    def templates(self) -> list[str]:
        return [m.template for _, m in self.sends]


async def start_order(env: WorkflowEnvironment, task_queue: str) -> tuple[int, WorkflowHandle]:
    order_id = random.randint(1, 2**31)
    handle = await env.client.start_workflow(
        "PendingOrderWorkflow",
        PendingOrderInput(order_id=order_id, messaging_task_queue=task_queue),
        id=f"pending-order/{order_id}",
        task_queue=task_queue,
        result_type=PendingOrderResult,
    )
    return order_id, handle


async def status(handle: WorkflowHandle) -> PendingOrderStatus:
    return await handle.query("status", result_type=PendingOrderStatus)


async def test_an_unanswered_order_gets_its_follow_up_when_due_and_expires_at_24h(
    time_skipping_env: WorkflowEnvironment, task_queue: str, record_history
) -> None:
    fake = FakeOrders()
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        order_id, handle = await start_order(time_skipping_env, task_queue)
        result = await handle.result()
        await record_history(handle, "pending_order_unregistered")  # as the sweep starts a clock

    record = fake.records[order_id]
    assert record.follow_up_at - record.created_at == timedelta(hours=2) + QUIET_SHIFT
    [(sent_at, message)] = fake.sends
    assert message.template == "order_followup"
    assert message.idempotency_key == f"followup:{order_id}"
    assert message.recipient_id == str(RETAILER)  # an id, never a phone number
    assert record.follow_up_at <= sent_at < record.follow_up_at + timedelta(minutes=1)
    assert [f.order_id for f in fake.follow_ups] == [order_id]
    assert fake.settled == [SettleOrder(order_id=order_id, state="EXPIRED")]
    assert result.state == "EXPIRED"
    assert record.expires_at <= result.settled_at < record.expires_at + timedelta(minutes=1)
    assert record.expires_at - record.created_at == timedelta(hours=24)
    assert await task_failures(handle) == 0


async def test_a_clock_registered_by_its_starter_keeps_the_times_told_without_reading_the_row(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    """`start_pending_order` answers the shop from the row it wrote and passes that row in: the
    workflow runs on exactly those times and never calls `register_pending_order` again."""
    fake = FakeOrders()
    order_id = random.randint(1, 2**31)
    created = (await time_skipping_env.get_current_time()).replace(microsecond=0)  # the env skips ahead
    told = PendingOrderRecord(
        order_id=order_id,
        retailer_id=RETAILER,
        state="PENDING",
        created_at=created,
        expires_at=created + timedelta(hours=24),
        follow_up_at=created + timedelta(hours=3),
    )
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        handle = await time_skipping_env.client.start_workflow(
            "PendingOrderWorkflow",
            PendingOrderInput(order_id=order_id, created_at=created, messaging_task_queue=task_queue, registered=told),
            id=f"pending-order/{order_id}",
            task_queue=task_queue,
            result_type=PendingOrderResult,
        )

        async def running() -> bool:
            return (await status(handle)).expires_at is not None

        await eventually(running)
        shown = await status(handle)
        result = await handle.result()

    assert fake.registered == []  # no second read of the row
    history = await handle.fetch_history()
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert "core_patch" not in markers  # such a clock began after the precise clock: no patch marker
    assert (shown.follow_up_at, shown.expires_at) == (told.follow_up_at, told.expires_at)
    [(sent_at, _)] = fake.sends
    assert told.follow_up_at <= sent_at < told.follow_up_at + timedelta(minutes=1)
    assert result.state == "EXPIRED" and told.expires_at <= result.settled_at < told.expires_at + timedelta(minutes=1)
    assert await task_failures(handle) == 0


async def test_completed_before_the_follow_up_ends_the_order_without_message_or_expiry(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeOrders()
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        order_id, handle = await start_order(time_skipping_env, task_queue)
        await time_skipping_env.sleep(timedelta(hours=1))
        await handle.signal("completed", {"actor_id": "shop"})
        result = await handle.result()

    assert result.state == "COMPLETED"
    assert fake.sends == []
    assert fake.settled == [SettleOrder(order_id=order_id, state="COMPLETED")]
    assert result.settled_at < fake.records[order_id].follow_up_at


async def test_completed_after_the_follow_up_counts_as_recovered(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeOrders()
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        order_id, handle = await start_order(time_skipping_env, task_queue)
        await time_skipping_env.sleep(timedelta(hours=12))
        await handle.signal("completed")
        result = await handle.result()

    assert fake.templates() == ["order_followup"]
    assert result.state == "RECOVERED"
    assert fake.settled == [SettleOrder(order_id=order_id, state="RECOVERED")]
    assert result.settled_at < fake.records[order_id].expires_at


async def test_failed_reverses_the_order_and_tells_the_retailer(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeOrders()
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        order_id, handle = await start_order(time_skipping_env, task_queue)
        await eventually(lambda: _registered(handle))
        await handle.signal("failed", {"reason": "card declined"})
        result = await handle.result()

    assert result.state == "FAILED"
    assert [(f.order_id, f.reason) for f in fake.failures] == [(order_id, "card declined")]
    assert fake.templates() == ["order_failed"]
    assert fake.settled == []  # the failure activity closes the row itself


HOLD = timedelta(hours=9)


@pytest.mark.parametrize("late", [False, True], ids=["on-the-clock", "after-the-clock"])
async def test_an_order_failed_notice_held_by_quiet_hours_goes_out_when_the_hold_ends(
    time_skipping_env: WorkflowEnvironment, task_queue: str, late: bool
) -> None:
    fake = FakeOrders()
    now = await time_skipping_env.get_current_time()
    fake.outcomes = [SendOutcome(status="deferred", channel="sms", reason="quiet_hours", retry_at=now + HOLD)]
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        if late:
            result = await time_skipping_env.client.execute_workflow(
                "OrderFailureWorkflow",
                LateOrderFailure(order_id=41, reason="not delivered", messaging_task_queue=task_queue),
                id=f"order-failure/{uuid.uuid4()}",
                task_queue=task_queue,
                result_type=OrderFailureResult,
            )
            assert result.changed
        else:
            order_id, handle = await start_order(time_skipping_env, task_queue)
            await eventually(lambda: _registered(handle))
            await handle.signal("failed", {"reason": "card declined"})
            assert (await handle.result()).state == "FAILED"
            assert await task_failures(handle) == 0

    assert fake.templates() == ["order_failed", "order_failed"]
    (_, first), (second_at, second) = fake.sends
    assert second.idempotency_key == first.idempotency_key
    assert second_at >= now + HOLD


@pytest.mark.parametrize(
    ("signal", "payload"),
    [("failed", {}), ("failed", {"reason": ""}), ("completed", "not an object"), ("completed", {"actor_id": "x" * 65})],
)
async def test_a_malformed_signal_is_dropped_and_the_clock_keeps_running(
    time_skipping_env: WorkflowEnvironment, task_queue: str, signal: str, payload: object
) -> None:
    fake = FakeOrders()
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        order_id, handle = await start_order(time_skipping_env, task_queue)
        await eventually(lambda: _registered(handle))
        await handle.signal(signal, payload)
        await time_skipping_env.sleep(timedelta(minutes=30))
        still = await status(handle)
        assert still.state == "PENDING"
        assert still.expires_at == fake.records[order_id].expires_at
        assert await task_failures(handle) == 0
        await handle.signal("completed")  # a good signal after the bad one still counts
        result = await handle.result()

    assert result.state == "COMPLETED"
    assert fake.failures == []


async def test_a_deferred_follow_up_is_retried_when_the_outbox_says(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeOrders()
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        order_id, handle = await start_order(time_skipping_env, task_queue)
        await eventually(lambda: _registered(handle))
        retry_at = fake.records[order_id].follow_up_at + timedelta(hours=3)
        fake.outcomes = [SendOutcome(status="deferred", reason="quiet_hours", retry_at=retry_at)]
        result = await handle.result()

    assert fake.templates() == ["order_followup", "order_followup"]
    assert retry_at <= fake.sends[1][0] < retry_at + timedelta(minutes=1)
    assert fake.sends[0][1].idempotency_key == fake.sends[1][1].idempotency_key  # the same message, once
    assert len(fake.follow_ups) == 1
    assert result.state == "EXPIRED"


async def test_a_suppressed_follow_up_is_not_recorded_as_sent(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeOrders(outcomes=[SendOutcome(status="suppressed", reason="opted_out")])
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        _, handle = await start_order(time_skipping_env, task_queue)
        result = await handle.result()

    assert fake.templates() == ["order_followup"]
    assert fake.follow_ups == []
    assert result.follow_up_sent_at is None
    assert result.state == "EXPIRED"


async def test_an_unknown_order_is_refused_without_a_task_failure(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeOrders(refuse="UnknownOrder")
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        _, handle = await start_order(time_skipping_env, task_queue)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()

    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "UnknownOrder"
    assert len(fake.registered) == 1  # a refusal is not retried
    assert fake.sends == [] and fake.settled == []
    assert await task_failures(handle) == 0


async def test_a_clock_its_starter_did_not_register_is_read_from_the_status_query(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    """A starter other than `start_pending_order` (the sweep) passes no row: the run registers it,
    and the clock is what `status` answers (as `jobctl orders status` asks it), the row's times."""
    fake = FakeOrders()
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        order_id, handle = await start_order(time_skipping_env, task_queue)
        await eventually(lambda: _registered(handle))
        shown = await status(handle)
        await handle.terminate("test done")

    record = fake.records[order_id]
    assert [r.order_id for r in fake.registered] == [order_id]
    assert (shown.order_id, shown.state) == (order_id, "PENDING")
    assert (shown.expires_at, shown.follow_up_at) == (record.expires_at, record.follow_up_at)


async def test_an_order_no_longer_pending_ends_its_run_at_once(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeOrders(state="COMPLETED")
    async with family_worker(time_skipping_env, task_queue, "orders", fake.activities()):
        _, handle = await start_order(time_skipping_env, task_queue)
        result = await handle.result()

    assert result.state == "COMPLETED"
    assert fake.sends == [] and fake.settled == [] and fake.failures == []  # nothing touched
    assert await task_failures(handle) == 0


async def _registered(handle: WorkflowHandle) -> bool:
    return (await status(handle)).expires_at is not None


# --------------------------------------------------------------------------- the safety-net sweep


@dataclass
class FakeSweep:
    pages: dict[str, list[OrderSweepPageResult]]
    asked: list[tuple[str, OrderSweepPage]] = field(default_factory=list)

    @activity.defn(name="expire_orphaned_orders")
    async def expire_orphaned_orders(self, page: OrderSweepPage) -> OrderSweepPageResult:
        self.asked.append(("expire", page))
        return self.pages["expire"].pop(0)

    @activity.defn(name="start_missing_order_workflows")
    async def start_missing_order_workflows(self, page: OrderSweepPage) -> OrderSweepPageResult:
        self.asked.append(("start", page))
        return self.pages["start"].pop(0)


async def test_the_sweep_expires_then_starts_page_by_page_and_totals_both(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeSweep(
        pages={
            "expire": [
                OrderSweepPageResult(after_order_id=20, rows=2, changed=1, left_alone=1),
                OrderSweepPageResult(after_order_id=25, rows=1, changed=1, left_alone=0),
            ],
            "start": [OrderSweepPageResult(after_order_id=40, rows=1, changed=1, left_alone=0)],
        }
    )
    async with family_worker(
        time_skipping_env, task_queue, "orders", [fake.expire_orphaned_orders, fake.start_missing_order_workflows]
    ):
        progress = await time_skipping_env.client.execute_workflow(
            "OrderExpirySweepWorkflow",
            OrderSweepRequest(page_size=2, messaging_task_queue="msgs"),
            id=f"order-expiry-sweep/{task_queue}",
            task_queue=task_queue,
            result_type=OrderSweepProgress,
        )

    assert [(phase, page.after_order_id) for phase, page in fake.asked] == [("expire", 0), ("expire", 20), ("start", 0)]
    assert {page.as_of for _, page in fake.asked} == {progress.as_of}  # one instant for the whole sweep
    assert all(page.messaging_task_queue == "msgs" for _, page in fake.asked)
    assert (progress.phase, progress.expired, progress.started, progress.left_alone) == ("done", 2, 1, 1)
