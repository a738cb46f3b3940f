"""Order recovery on the time-skipping server: a real PostgreSQL, the messaging activity against the
Twilio emulator, and the whole 24-hour clock in seconds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import aiohttp
import pydantic
import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.credit import ledger
from activities.credit.orders import place_order
from activities.credit.payments import record_payment
from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway
from activities.orders import OrderActivities, register_pending
from devtools.twilio_emulator import TwilioEmulator
from schemas import ids, search_attributes
from schemas.credit import RecordPayment
from schemas.orders import OrderFailure, PendingOrderInput, PendingOrderResult, PendingOrderStatus, RegisterPendingOrder
from schemas.tables import AuditLog, CreditAccount, CreditTransaction, Order, PendingOrder, Retailer
from services.orders import OrderNotPending, OrderRefused, UnknownOrder, complete_order, fail_order, start_pending_order
from tests.activities.test_credit import new_retailer
from workflows.orders import OrderFailureWorkflow, PendingOrderWorkflow

SENDERS = Senders(whatsapp="whatsapp:+15005550006", sms="+15005550006")
# The outbox's own quiet-hours check reads the wall clock, which the time-skipping server does
# not move: the workflow's follow-up time is what these tests check, so the outbox's is off.
NO_QUIET_HOURS = QuietHours(0, 0)


# --------------------------------------------------------------------------- fixtures and helpers


@asynccontextmanager
async def order_workers(
    client: Client, engine: AsyncEngine, gateway: TwilioGateway, task_queue: str
) -> AsyncIterator[str]:
    """The jobs worker (order workflows and activities) and a messaging worker; yields the messaging queue."""
    orders = OrderActivities(engine)
    messaging = MessagingActivities(engine, gateway, SENDERS, SendPolicy(quiet_hours=NO_QUIET_HOURS))
    async with (
        Worker(
            client,
            task_queue=task_queue,
            workflows=[PendingOrderWorkflow, OrderFailureWorkflow],
            activities=[
                orders.register_pending_order,
                orders.record_follow_up,
                orders.settle_pending_order,
                orders.handle_order_failure,
            ],
        ),
        Worker(client, task_queue=f"{task_queue}-msg", activities=[messaging.send_message, messaging.send_messages]),
    ):
        yield f"{task_queue}-msg"


def unique_phone() -> str:
    return "+1555" + str(uuid.uuid4().int)[:7]


def zone_where(instant: datetime, local_hour: int) -> str:
    """A fixed-offset zone in which `instant` falls in `local_hour` (Etc/GMT signs are inverted)."""
    offset = (local_hour - instant.astimezone(UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return f"Etc/GMT{-offset:+d}" if offset else "UTC"


async def new_order(
    engine: AsyncEngine, *, tz: str = "UTC", phone: str | None = None, on_credit: Decimal | None = None
) -> tuple[int, int, str]:
    """A retailer (SMS, given zone) with a PENDING order; with `on_credit`, a DEBIT for it. (order, retailer, phone)"""
    phone = phone or unique_phone()
    async with engine.begin() as conn:
        rid = await conn.scalar(
            insert(Retailer)
            .values(name="Ada Stores", phone=phone, preferred_channel="sms", timezone=tz)
            .returning(Retailer.id)
        )
        limit = Decimal("1000.00")
        await conn.execute(
            insert(CreditAccount).values(retailer_id=rid, credit_limit=limit, available_credit=limit - (on_credit or 0))
        )
        oid = await conn.scalar(
            insert(Order)
            .values(
                retailer_id=rid,
                status="PENDING",
                payment_mode="CREDIT" if on_credit else "COD",
                total_amount=on_credit or Decimal("80.00"),
            )
            .returning(Order.id)
        )
        if on_credit:
            await conn.execute(
                insert(CreditTransaction).values(
                    retailer_id=rid,
                    type="DEBIT",
                    amount=on_credit,
                    order_id=oid,
                    due_date=(datetime.now(UTC) + timedelta(days=30)).date(),
                    reference=f"order:{oid}",
                )
            )
    return oid, rid, phone


async def sent_to(emulator: TwilioEmulator, phone: str) -> list[dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/messages", params={"to": phone}) as response:
            return await response.json()


async def pending_row(engine: AsyncEngine, order_id: int):
    async with engine.connect() as conn:
        return (await conn.execute(select(PendingOrder.__table__).where(PendingOrder.order_id == order_id))).one()


async def task_failures(handle: WorkflowHandle) -> int:
    """Workflow tasks our code failed. UNHANDLED_COMMAND is the server turning down a completion
    because a signal arrived while the task ran (the SDK re-runs the task with it): not a failure."""
    history = await handle.fetch_history()
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        and e.workflow_task_failed_event_attributes.cause
        != WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
    )


async def start(
    env: WorkflowEnvironment,
    engine: AsyncEngine,
    order_id: int,
    retailer_id: int | None,
    task_queue: str,
    messaging: str,
    **kw,
):
    # The server's clock, not the wall clock: time skipping moves only the former.
    created = kw.pop("created_at", None) or await env.get_current_time()
    status = await start_pending_order(
        env.client,
        engine,
        PendingOrderInput(
            order_id=order_id, retailer_id=retailer_id, created_at=created, messaging_task_queue=messaging, **kw
        ),
        task_queue=task_queue,
    )
    return status, env.client.get_workflow_handle(ids.pending_order(order_id), result_type=PendingOrderResult), created


async def registered(handle: WorkflowHandle, timeout: float = 10) -> PendingOrderStatus:
    """The clock's status once its first task has read the row (a start no longer waits for that)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            status = await handle.query(PendingOrderWorkflow.status)
        except (RPCError, WorkflowQueryFailedError):  # before the first workflow task completes
            status = None
        if status is not None and status.expires_at is not None:
            return status
        assert asyncio.get_running_loop().time() < deadline, f"{handle.id} never registered its row"
        await asyncio.sleep(0.05)


async def result_of(env: WorkflowEnvironment, handle: WorkflowHandle) -> PendingOrderResult:
    """`handle.result()` with time skipping on (only handles from `start_workflow` do that by themselves)."""
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        return await handle.result()


def near(actual: datetime | None, expected: datetime, slack: timedelta = timedelta(minutes=1)) -> bool:
    return actual is not None and expected <= actual <= expected + slack


# --------------------------------------------------------------------------- the clock


async def test_follow_up_at_two_hours_then_expiry_at_twenty_four(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    now = await env.get_current_time()
    oid, rid, phone = await new_order(engine, tz=zone_where(now + timedelta(hours=2), 12))
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        status, handle, created = await start(env, engine, oid, rid, task_queue, messaging)
        assert status.state == "PENDING"
        assert status.expires_at == created + timedelta(hours=24)
        assert status.follow_up_at == created + timedelta(hours=2)

        await env.sleep(timedelta(hours=1, minutes=59))
        assert (await handle.query(PendingOrderWorkflow.status)).follow_up_sent_at is None
        assert await sent_to(emulator, phone) == []

        await env.sleep(timedelta(minutes=2))
        assert near((await handle.query(PendingOrderWorkflow.status)).follow_up_sent_at, created + timedelta(hours=2))
        (message,) = await sent_to(emulator, phone)
        assert f"order #{oid} is still waiting" in message["body"]

        result = await result_of(env, handle)
        await record_history(handle, "pending_order_expired")
    assert result.state == "EXPIRED"
    assert near(result.settled_at, created + timedelta(hours=24))
    row = await pending_row(engine, oid)
    assert (row.status, row.follow_up_sent_at is not None, row.expired_at is not None) == ("EXPIRED", True, True)
    assert len(await sent_to(emulator, phone)) == 1
    assert await task_failures(handle) == 0


async def test_completion_before_the_follow_up_is_completed_and_sends_nothing(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    oid, rid, phone = await new_order(engine, tz=zone_where(await env.get_current_time() + timedelta(hours=2), 12))
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        _, handle, _ = await start(env, engine, oid, rid, task_queue, messaging)
        await env.sleep(timedelta(hours=1))
        await complete_order(env.client, oid)
        result = await result_of(env, handle)
    assert (result.state, result.follow_up_sent_at) == ("COMPLETED", None)
    row = await pending_row(engine, oid)
    assert (row.status, row.completed_at is not None) == ("COMPLETED", True)
    assert await sent_to(emulator, phone) == []


async def test_completion_after_the_follow_up_is_recovered(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    oid, rid, phone = await new_order(engine, tz=zone_where(await env.get_current_time() + timedelta(hours=2), 12))
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        _, handle, _ = await start(env, engine, oid, rid, task_queue, messaging)
        await env.sleep(timedelta(hours=3))
        await complete_order(env.client, oid)
        result = await result_of(env, handle)
    assert result.state == "RECOVERED" and result.follow_up_sent_at is not None
    assert (await pending_row(engine, oid)).status == "RECOVERED"
    assert len(await sent_to(emulator, phone)) == 1


async def test_a_follow_up_due_at_23_local_goes_out_at_08_local(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    now = await env.get_current_time()
    zone = zone_where(now + timedelta(hours=2), 23)
    local_due = (now + timedelta(hours=2)).astimezone(ZoneInfo(zone))
    assert local_due.hour == 23
    eight = (local_due + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0).astimezone(UTC)
    oid, rid, phone = await new_order(engine, tz=zone)
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        status, handle, created = await start(env, engine, oid, rid, task_queue, messaging, created_at=now)
        assert status.follow_up_at == eight

        await env.sleep(eight - created - timedelta(minutes=1))
        assert await sent_to(emulator, phone) == []
        await env.sleep(timedelta(minutes=2))
        sent_at = (await handle.query(PendingOrderWorkflow.status)).follow_up_sent_at
        assert near(sent_at, eight)
        assert sent_at is not None and sent_at.astimezone(ZoneInfo(zone)).hour == 8
        assert len(await sent_to(emulator, phone)) == 1
        await handle.terminate("test done")


# --------------------------------------------------------------------------- failure


async def test_failure_reverses_the_credit_debit_and_tells_the_retailer(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    oid, rid, phone = await new_order(engine, on_credit=Decimal("250.00"))
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        _, handle, _ = await start(env, engine, oid, rid, task_queue, messaging)
        await fail_order(env.client, oid, "card declined by the bank")
        result = await result_of(env, handle)
    assert result.state == "FAILED"

    async with engine.connect() as conn:
        order = (await conn.execute(select(Order.__table__).where(Order.id == oid))).one()
        ledger = (
            await conn.execute(select(CreditTransaction.__table__).where(CreditTransaction.order_id == oid))
        ).all()
        available = await conn.scalar(select(CreditAccount.available_credit).where(CreditAccount.retailer_id == rid))
        audits = (await conn.execute(select(AuditLog.__table__).where(AuditLog.reference == f"order:{oid}"))).all()
    assert (order.status, order.failure_reason, order.failed_at is not None) == (
        "FAILED",
        "card declined by the bank",
        True,
    )
    assert (await pending_row(engine, oid)).status == "FAILED"
    by_type = {t.type: t for t in ledger}
    assert (by_type["CREDIT"].amount, by_type["CREDIT"].due_date) == (Decimal("250.00"), None)
    assert by_type["DEBIT"].status == "CLEARED"
    assert available == Decimal("1000.00")
    (audit,) = audits
    assert (audit.action, audit.new_value["reversed_amount"], audit.old_value["available_credit"]) == (
        "order_failed",
        "250.00",
        "750.00",
    )
    (message,) = await sent_to(emulator, phone)
    assert f"could not complete order #{oid}" in message["body"]
    assert "$250.00 of credit is available to you again and $0.00 is back on your account balance" in message["body"]

    again = await ActivityEnvironment().run(
        OrderActivities(engine).handle_order_failure, OrderFailure(order_id=oid, reason="again")
    )
    assert (again.changed, again.reversed_amount) == (False, None)
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM credit_transactions WHERE order_id = :o"), {"o": oid}) == 2
        assert (
            await conn.scalar(text("SELECT count(*) FROM audit_log WHERE reference = :r"), {"r": f"order:{oid}"}) == 1
        )
        assert (
            await conn.scalar(select(CreditAccount.available_credit).where(CreditAccount.retailer_id == rid))
            == available
        )


async def _money(engine: AsyncEngine, rid: int) -> tuple[Decimal, Decimal]:
    """(available credit, credit balance) as the retailer's profile shows them."""
    async with engine.connect() as conn:
        available = await conn.scalar(select(CreditAccount.available_credit).where(CreditAccount.retailer_id == rid))
        return available, await ledger.credit_balance(conn, rid)


async def test_a_failed_order_paid_from_the_credit_balance_gives_the_balance_back(engine: AsyncEngine) -> None:
    """Paid 100.00 ahead, an order of 100.00 spent it, the order failed: the 100.00 is the
    retailer's again (it was destroyed: the reversal gave back only the unpaid part, 0.00)."""
    rid, _ = await new_retailer(engine, limit=Decimal("1000.00"))
    await record_payment(engine, RecordPayment(retailer_id=rid, amount=Decimal("100.00"), reference="ahead", actor="t"))
    oid = 7_000_000_000 + rid
    placed = await place_order(engine, rid, oid, Decimal("100.00"), "CREDIT", today=datetime.now(UTC).date())
    assert placed.cleared_from_balance == Decimal("100.00")

    failed = await ActivityEnvironment().run(
        OrderActivities(engine).handle_order_failure, OrderFailure(order_id=oid, reason="out of stock")
    )

    assert (failed.reversed_amount, failed.returned_to_balance) == (Decimal("0.00"), Decimal("100.00"))
    assert await _money(engine, rid) == (Decimal("1000.00"), Decimal("100.00"))
    async with engine.connect() as conn:
        audit = (
            await conn.execute(
                select(AuditLog.__table__).where(
                    AuditLog.reference == f"order:{oid}", AuditLog.action == "order_failed"
                )
            )
        ).one()
    assert (audit.new_value["reversed_amount"], audit.new_value["returned_to_balance"]) == ("0.00", "100.00")


async def test_a_failed_partly_paid_order_releases_the_rest_and_returns_the_paid_part(engine: AsyncEngine) -> None:
    """An order of 400.00 with 50.00 paid fails: 350.00 of credit released and the 50.00 back on
    the balance, which clears the retailer's other open debit at once (oldest first)."""
    rid, _ = await new_retailer(engine, limit=Decimal("1000.00"))
    today = datetime.now(UTC).date()
    oid, other = 7_100_000_000 + rid, 7_200_000_000 + rid
    await place_order(engine, rid, oid, Decimal("400.00"), "CREDIT", today=today)
    await record_payment(engine, RecordPayment(retailer_id=rid, amount=Decimal("50.00"), reference="part", actor="t"))
    await place_order(engine, rid, other, Decimal("30.00"), "CREDIT", today=today)
    assert await _money(engine, rid) == (Decimal("620.00"), Decimal("0"))

    failed = await ActivityEnvironment().run(
        OrderActivities(engine).handle_order_failure, OrderFailure(order_id=oid, reason="damaged")
    )
    again = await ActivityEnvironment().run(
        OrderActivities(engine).handle_order_failure, OrderFailure(order_id=oid, reason="damaged")
    )

    assert (failed.reversed_amount, failed.returned_to_balance) == (Decimal("350.00"), Decimal("50.00"))
    assert (again.changed, again.returned_to_balance) == (False, None)
    # the 50.00 cleared the other order's 30.00; 20.00 stays on the balance; nothing is owed
    assert await _money(engine, rid) == (Decimal("1000.00"), Decimal("20.00"))


async def test_failure_of_an_order_not_on_credit_changes_no_money(engine: AsyncEngine) -> None:
    oid, rid, _ = await new_order(engine)
    failed = await ActivityEnvironment().run(
        OrderActivities(engine).handle_order_failure, OrderFailure(order_id=oid, reason="out of stock")
    )
    assert (failed.changed, failed.reversed_amount, failed.retailer_id) == (True, None, rid)
    async with engine.connect() as conn:
        assert await conn.scalar(
            select(CreditAccount.available_credit).where(CreditAccount.retailer_id == rid)
        ) == Decimal("1000.00")


async def test_failure_recomputes_available_credit_by_the_ledgers_rule_rather_than_adding_to_it(
    engine: AsyncEngine,
) -> None:
    """An account whose stored available credit is not limit minus outstanding, as the demo seed
    writes an over-limit retailer's (clamped at 0): the reversal recomputes it. Adding the
    reversed amount back, as the reversal did before the ledger, gave 300.00 here."""
    oid, rid, _ = await new_order(engine, on_credit=Decimal("300.00"))
    async with engine.begin() as conn:
        await conn.execute(
            insert(CreditTransaction).values(
                retailer_id=rid,
                type="DEBIT",
                amount=Decimal("900.00"),
                due_date=datetime.now(UTC).date(),
                reference=f"invoice-{oid}",
            )
        )
        await conn.execute(text("UPDATE credit_accounts SET available_credit = 0 WHERE retailer_id = :r"), {"r": rid})
    failed = await ActivityEnvironment().run(
        OrderActivities(engine).handle_order_failure, OrderFailure(order_id=oid, reason="delivery failed")
    )
    assert failed.reversed_amount == Decimal("300.00")
    async with engine.connect() as conn:
        available = await conn.scalar(select(CreditAccount.available_credit).where(CreditAccount.retailer_id == rid))
        audit = (await conn.execute(select(AuditLog.__table__).where(AuditLog.reference == f"order:{oid}"))).one()
    assert available == Decimal("1000.00") - Decimal("900.00")
    assert (audit.old_value["available_credit"], audit.new_value["available_credit"]) == ("0.00", "100.00")


async def test_two_failures_of_one_retailers_orders_at_once_give_back_both_debits(engine: AsyncEngine) -> None:
    """Two orders of a retailer fail at the same time. Each failure recomputes available credit
    from the open debits, so the second waits for the first's lock on the retailer (taken before
    the order's) and counts its reversal. Without that lock the second would recompute from a
    snapshot in which the first debit is still open: 750.00, not 1000.00."""
    first, rid, _ = await new_order(engine, on_credit=Decimal("250.00"))
    second = first + 1_000_000
    await place_order(engine, rid, second, Decimal("150.00"), "CREDIT", today=datetime.now(UTC).date())
    async with engine.connect() as failing_first:
        transaction = await failing_first.begin()
        await ledger.lock_retailer(failing_first, rid)  # as a failure takes it, before its order
        reversal = await ledger.reverse_order_debit(failing_first, first, actor="test")
        assert reversal is not None and reversal.amount == Decimal("250.00")
        failing_second = asyncio.create_task(
            ActivityEnvironment().run(
                OrderActivities(engine).handle_order_failure, OrderFailure(order_id=second, reason="delivery failed")
            )
        )
        for _ in range(250):  # until the second failure waits for a lock the first holds
            async with engine.connect() as conn:
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            if waiting or failing_second.done():
                break
            await asyncio.sleep(0.02)
        assert waiting
        await transaction.commit()
    assert (await failing_second).reversed_amount == Decimal("150.00")
    async with engine.connect() as conn:
        available = await conn.scalar(select(CreditAccount.available_credit).where(CreditAccount.retailer_id == rid))
    assert available == Decimal("1000.00")


# --------------------------------------------------------------------------- bad input


async def test_concurrent_checkout_starts_of_one_order_all_get_the_one_clock(engine: AsyncEngine) -> None:
    """A shop backend retrying a checkout call races itself: every start answers the same row
    (the one that won the insert), and there is one row."""
    oid, _, _ = await new_order(engine, tz="UTC")
    base = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    answers = await asyncio.gather(
        *(
            register_pending(
                engine,
                RegisterPendingOrder(
                    order_id=oid,
                    created_at=base + timedelta(seconds=n),
                    follow_up_after=timedelta(hours=2),
                    ttl=timedelta(hours=24),
                ),
                QuietHours(0, 0),
            )
            for n in range(20)
        )
    )
    assert len({(a.created_at, a.expires_at, a.follow_up_at) for a in answers}) == 1
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM pending_orders WHERE order_id = :o"), {"o": oid}) == 1


async def test_registering_keeps_an_existing_rows_clock_and_refuses_for_good(engine: AsyncEngine) -> None:
    """What the starter and the workflow's first task both run: the same row, the same answer;
    a refusal reaches the workflow as a non-retryable error of the refusal's type."""
    oid, rid, _ = await new_order(engine, tz="UTC")
    created = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    request = RegisterPendingOrder(
        order_id=oid, created_at=created, follow_up_after=timedelta(hours=2), ttl=timedelta(hours=24)
    )
    first = await register_pending(engine, request, QuietHours(0, 0))
    assert (first.state, first.retailer_id, first.created_at) == ("PENDING", rid, created)
    assert (first.follow_up_at, first.expires_at) == (created + timedelta(hours=2), created + timedelta(hours=24))
    later = request.model_copy(update={"created_at": created + timedelta(hours=1)})
    assert (
        await ActivityEnvironment().run(OrderActivities(engine, QuietHours(0, 0)).register_pending_order, later)
        == first
    )
    quiet = await register_pending(engine, request, QuietHours(10, 12))  # 11:00 UTC falls in them
    assert quiet.follow_up_at == created.replace(hour=12)

    missing = 10_000_000 + int(uuid.uuid4().int % 1_000_000)
    with pytest.raises(UnknownOrder, match=f"order {missing} does not exist"):
        await register_pending(engine, request.model_copy(update={"order_id": missing}))
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(
            OrderActivities(engine).register_pending_order, request.model_copy(update={"order_id": missing})
        )
    assert (refused.value.type, refused.value.non_retryable) == ("UnknownOrder", True)
    cancelled, _, _ = await new_order(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE orders SET status = 'CANCELLED' WHERE id = :o"), {"o": cancelled})
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(
            OrderActivities(engine).register_pending_order, request.model_copy(update={"order_id": cancelled})
        )
    assert (refused.value.type, refused.value.message) == (
        "OrderNotPending",
        f"order {cancelled} is CANCELLED, not a pending checkout",
    )


async def test_malformed_signals_are_logged_and_ignored_never_failing_a_task(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    oid, rid, phone = await new_order(engine, on_credit=Decimal("40.00"))
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        _, handle, _ = await start(env, engine, oid, rid, task_queue, messaging)
        for payload in ({}, {"reason": ""}, {"reason": 42}, "oops", [1, 2], None):
            await handle.signal("failed", payload)
        await handle.signal("failed")  # no payload at all
        await handle.signal("completed", "not an object")
        await handle.signal("completed", {"actor_id": ["x"]})
        await handle.signal("failed", b"raw bytes")  # binary/plain: reaches the handler undecoded
        await handle.signal("completed", b"raw bytes")
        with pytest.raises(pydantic.ValidationError):
            await fail_order(env.client, oid, "")  # refused before it leaves the client
        assert (await handle.query(PendingOrderWorkflow.status)).state == "PENDING"
        await complete_order(env.client, oid)
        await handle.signal("failed", {"reason": "too late"})  # after the end: ignored
        result = await result_of(env, handle)
    assert result.state == "COMPLETED"
    assert await task_failures(handle) == 0
    async with engine.connect() as conn:
        assert await conn.scalar(select(Order.status).where(Order.id == oid)) == "PENDING"
    assert await sent_to(emulator, phone) == []


async def test_starting_an_order_twice_makes_one_clock_and_one_follow_up(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    oid, rid, phone = await new_order(engine, tz=zone_where(await env.get_current_time() + timedelta(hours=2), 12))
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        first, handle, created = await start(env, engine, oid, rid, task_queue, messaging)
        run_id = (await handle.describe()).run_id
        second, _, _ = await start(
            env, engine, oid, rid, task_queue, messaging, created_at=created + timedelta(minutes=5)
        )
        assert second == first
        await env.sleep(timedelta(hours=3))
        third, _, _ = await start(env, engine, oid, rid, task_queue, messaging)
        assert third.follow_up_sent_at is not None and third.expires_at == first.expires_at
        assert (await handle.describe()).run_id == run_id
        assert (await result_of(env, handle)).state == "EXPIRED"

        with pytest.raises(OrderNotPending, match=f"order {oid} is already EXPIRED"):
            await start(env, engine, oid, rid, task_queue, messaging)  # the row says so
        async with engine.begin() as conn:  # a row put back by hand: the clock that ended normally says so
            await conn.execute(text("UPDATE pending_orders SET status = 'PENDING' WHERE order_id = :o"), {"o": oid})
        with pytest.raises(OrderNotPending, match=f"order {oid} is already EXPIRED"):
            await start(env, engine, oid, rid, task_queue, messaging)
        assert (await handle.describe()).run_id == run_id
    assert len(await sent_to(emulator, phone)) == 1


async def test_a_clocks_retailer_id_is_the_order_rows_never_the_callers(
    time_skipping_env: WorkflowEnvironment, engine: AsyncEngine, gateway: TwilioGateway, task_queue: str
) -> None:
    """Issue #33: `checkout-started` took the RetailerId search attribute from the request body, so
    a caller could file an order under another retailer. Naming another retailer is refused, no
    clock started; naming none gives the clock the order row's retailer."""
    env = time_skipping_env
    oid, rid, _ = await new_order(engine)
    _, other, _ = await new_order(engine)
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        with pytest.raises(OrderRefused, match=f"order {oid} is not retailer {other}'s"):
            await start(env, engine, oid, other, task_queue, messaging)
        with pytest.raises(RPCError) as not_found:
            await env.client.get_workflow_handle(ids.pending_order(oid)).describe()
        assert not_found.value.status == RPCStatusCode.NOT_FOUND

        _, handle, _ = await start(env, engine, oid, None, task_queue, messaging)  # None: the order's
        await registered(handle)
        described = await handle.describe()
        assert described.typed_search_attributes.get(search_attributes.RETAILER_ID) == str(rid)
        await complete_order(env.client, oid)  # ends the clock: nothing left on the shared server
        assert (await result_of(env, handle)).state == "COMPLETED"


async def test_starts_and_signals_that_cannot_apply_are_refused_with_a_clear_message(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    task_queue: str,
) -> None:
    env = time_skipping_env
    settled, rid, _ = await new_order(engine)
    async with engine.begin() as conn:
        await conn.execute(
            insert(PendingOrder).values(
                order_id=settled,
                retailer_id=rid,
                amount=80,
                status="COMPLETED",
                expires_at=datetime.now(UTC) + timedelta(hours=20),
                completed_at=datetime.now(UTC),
            )
        )
    missing = 10_000_000 + int(uuid.uuid4().int % 1_000_000)
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        with pytest.raises(OrderNotPending, match=f"order {settled} is already COMPLETED"):
            await start(env, engine, settled, rid, task_queue, messaging)
        with pytest.raises(UnknownOrder, match=f"order {missing} does not exist"):
            await start(env, engine, missing, rid, task_queue, messaging)
        with pytest.raises(UnknownOrder, match=f"order {missing + 1} has no running clock"):
            await complete_order(env.client, missing + 1)
        # A failure after the clock ended is not refused: tests/activities/test_money_loop.py.
    for order_id in (settled, missing):  # refused from the database: no workflow was started
        with pytest.raises(RPCError) as not_found:
            await env.client.get_workflow_handle(ids.pending_order(order_id)).describe()
        assert not_found.value.status == RPCStatusCode.NOT_FOUND
    assert (await pending_row(engine, settled)).status == "COMPLETED"
