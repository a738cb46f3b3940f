"""Loyalty reconciliation on the time-skipping server: a real PostgreSQL (faults injected by a
trigger), the Stripe sandbox through the real SDK, and 24 hours of back-off in seconds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal

import pydantic
import pytest
import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.loyalty.errors import UnknownCustomer
from activities.loyalty.queue import LoyaltyQueueActivities, LoyaltySweepActivities
from activities.payments.activities import PaymentActivities
from activities.payments.gateway import StripeGateway
from schemas import ids, search_attributes
from schemas.loyalty import LoyaltySweepRequest, LoyaltySweepResult, ReconcileResult, ReconcileStatus
from services.loyalty import LoyaltyRefused, enqueue_failed_points, resolve_manually, retry_now
from tests.loyalty_factories import balance_and_ledger, new_customer, order_ref, order_rows
from workers import families
from workflows.loyalty import LoyaltyReconcileSweepWorkflow, LoyaltyReconciliationWorkflow

# --------------------------------------------------------------------------- harness


@pytest.fixture(autouse=True)
async def _no_reconciliation_left_running(
    time_skipping_env: WorkflowEnvironment, engine: AsyncEngine
) -> AsyncIterator[None]:
    """The time-skipping server is shared by the session: a run left with work outstanding and no
    worker would stop its clock from skipping for every later test, so each test ends its runs."""
    yield
    async with engine.connect() as conn:
        item_ids = (await conn.scalars(text("SELECT id FROM loyalty_reconciliation_queue"))).all()
    for item_id in item_ids:
        handle = handle_of(time_skipping_env.client, item_id)
        try:
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test over")
        except RPCError:
            pass  # no workflow for this item


@asynccontextmanager
async def loyalty_worker(
    client: Client, engine: AsyncEngine, stripe_api: stripe.StripeClient, task_queue: str
) -> AsyncIterator[None]:
    queue = LoyaltyQueueActivities(engine)
    sweep = LoyaltySweepActivities(engine, client, task_queue)
    payments = PaymentActivities(StripeGateway(stripe_api, engine))
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=families.by_name("loyalty").workflows(),
        activities=[
            queue.load_item,
            queue.apply_queued_points,
            queue.mark_needs_review,
            queue.resolve_item,
            queue.reopen_item,
            sweep.start_missing_reconciliations,
            payments.payment_intent_status,
        ],
    ):
        yield


async def paid_intent(stripe_api: stripe.StripeClient, *, refund: bool = False) -> str:
    """A PaymentIntent that succeeded (and, with `refund`, was then refunded in full)."""
    key = uuid.uuid4().hex
    intent = await stripe_api.v1.payment_intents.create_async(
        {"amount": 4200, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True},
        {"idempotency_key": f"test-loyalty-pi:{key}"},
    )
    if refund:
        await stripe_api.v1.refunds.create_async(
            {"payment_intent": intent.id, "amount": 4200}, {"idempotency_key": f"test-loyalty-refund:{key}"}
        )
    return intent.id


@asynccontextmanager
async def failing_inserts(engine: AsyncEngine, order_id: str, failures: int) -> AsyncIterator[None]:
    """A real database fault: the first `failures` ledger inserts for `order_id` raise (a trigger).

    The count is a sequence, which a failed transaction does not roll back.
    """
    name = f"loyalty_fault_{uuid.uuid4().hex[:10]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE SEQUENCE {name}"))
        await conn.execute(
            text(
                f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.reference_id = '{order_id}' AND nextval('{name}') <= {failures} THEN
        RAISE EXCEPTION 'injected fault on the ledger';
    END IF;
    RETURN NEW;
END $$"""
            )
        )
        await conn.execute(
            text(f"CREATE TRIGGER {name} BEFORE INSERT ON loyalty_transactions FOR EACH ROW EXECUTE FUNCTION {name}()")
        )
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {name} ON loyalty_transactions"))
            await conn.execute(text(f"DROP FUNCTION {name}()"))
            await conn.execute(text(f"DROP SEQUENCE {name}"))


async def queue_row(engine: AsyncEngine, item_id: int):
    async with engine.connect() as conn:
        return (
            await conn.execute(text("SELECT * FROM loyalty_reconciliation_queue WHERE id = :id"), {"id": item_id})
        ).one()


def handle_of(client: Client, item_id: int) -> WorkflowHandle:
    return client.get_workflow_handle(ids.loyalty_reconcile(item_id), result_type=ReconcileResult)


async def result_of(env: WorkflowEnvironment, handle: WorkflowHandle) -> ReconcileResult:
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        return await handle.result()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


async def in_review(handle: WorkflowHandle) -> ReconcileStatus:
    async def waiting() -> bool:
        return (await handle.query(LoyaltyReconciliationWorkflow.status)).phase == "waiting for review"

    await eventually(waiting)
    return await handle.query(LoyaltyReconciliationWorkflow.status)


async def run_time(handle: WorkflowHandle) -> timedelta:
    """From the workflow's start to its end, by the server's (skipped) clock in the history."""
    events = (await handle.fetch_history()).events
    return events[-1].event_time.ToDatetime() - events[0].event_time.ToDatetime()


async def task_failures(handle: WorkflowHandle) -> int:
    history = await handle.fetch_history()
    return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)


# --------------------------------------------------------------------------- retries with back-off


async def test_three_database_faults_then_the_fourth_attempt_applies_the_points(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    stripe_api: stripe.StripeClient,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    cid = await new_customer(engine, 500)
    order = order_ref()
    intent = await paid_intent(stripe_api)
    async with failing_inserts(engine, order, 3), loyalty_worker(env.client, engine, stripe_api, task_queue):
        queued = await enqueue_failed_points(
            env.client,
            engine,
            cid,
            order,
            100,
            Decimal("42.00"),
            payment_intent_id=intent,
            error="checkout: database timeout",
            task_queue=task_queue,
        )
        assert (queued.created, queued.started, queued.status) == (True, True, "PENDING")
        handle = handle_of(env.client, queued.item_id)
        result = await result_of(env, handle)
        await record_history(handle, "loyalty_reconcile_applied")

    assert (result.status, result.resolution, result.attempts) == ("RESOLVED", "applied", 4)
    assert (result.points_redeemed, result.points_earned) == (100, 42)
    # Back-off 1 + 2 + 4 minutes between the four attempts, skipped by the test server.
    assert timedelta(minutes=7) <= await run_time(handle) < timedelta(minutes=8)
    row = await queue_row(engine, queued.item_id)
    assert (row.status, row.attempts, row.resolved_by) == ("RESOLVED", 4, "system")
    assert row.last_error == "RaiseException: injected fault on the ledger"
    assert await order_rows(engine, order) == [("spent", -100, 500, 400), ("earned", 42, 400, 442)]
    assert await balance_and_ledger(engine, cid) == (442, 442)
    described = await handle.describe()
    assert described.typed_search_attributes.get(search_attributes.CASE_STATUS) == "RESOLVED"
    assert described.typed_search_attributes.get(search_attributes.CUSTOMER_ID) == str(cid)
    assert await task_failures(handle) == 0


async def test_a_failure_that_outlasts_the_retries_goes_to_review_with_the_last_error(
    time_skipping_env: WorkflowEnvironment, engine: AsyncEngine, stripe_api: stripe.StripeClient, task_queue: str
) -> None:
    env = time_skipping_env
    cid = await new_customer(engine, 500)
    order = order_ref()
    async with failing_inserts(engine, order, 10_000), loyalty_worker(env.client, engine, stripe_api, task_queue):
        queued = await enqueue_failed_points(env.client, engine, cid, order, 0, Decimal("10"), task_queue=task_queue)
        handle = handle_of(env.client, queued.item_id)
        # The back-off, skipped (a workflow waiting for a person has no timer: time stays locked).
        await env.sleep(timedelta(hours=8))
        status = await in_review(handle)
        assert status.reason is not None and status.reason.startswith(
            "GaveUp: no success in 12 attempts (last error RaiseException: injected fault"
        )
        row = await queue_row(engine, queued.item_id)
        # 1, 2, 4, ..., 32 minutes, then hourly: 12 attempts, about 7 hours, inside Stripe's 24 h key window.
        assert row.status == "NEEDS_REVIEW" and row.attempts == 12, row.attempts
        assert row.last_error.startswith("GaveUp")
        await handle.terminate("test done")
    assert await balance_and_ledger(engine, cid) == (500, 500)


async def test_retry_now_cuts_a_back_off_short(
    time_skipping_env: WorkflowEnvironment, engine: AsyncEngine, stripe_api: stripe.StripeClient, task_queue: str
) -> None:
    env = time_skipping_env
    cid = await new_customer(engine, 0)
    order = order_ref()
    async with failing_inserts(engine, order, 5), loyalty_worker(env.client, engine, stripe_api, task_queue):
        queued = await enqueue_failed_points(env.client, engine, cid, order, 0, Decimal("3"), task_queue=task_queue)
        handle = handle_of(env.client, queued.item_id)
        await env.sleep(timedelta(minutes=8))  # attempts at 0, 1, 3 and 7 min; the next is due at 15 min
        assert (await queue_row(engine, queued.item_id)).attempts == 4
        await retry_now(env.client, queued.item_id, "admin-3")  # attempt 5 at once (fails), 6 a minute later
        result = await result_of(env, handle)
    assert (result.status, result.resolution, result.attempts, result.points_earned) == ("RESOLVED", "applied", 6, 3)
    assert timedelta(minutes=9) <= await run_time(handle) < timedelta(minutes=10)  # not 15 min
    assert await task_failures(handle) == 0
    assert await balance_and_ledger(engine, cid) == (3, 3)


# --------------------------------------------------------------------------- Stripe says refunded


async def test_a_refunded_order_is_resolved_without_points(
    time_skipping_env: WorkflowEnvironment, engine: AsyncEngine, stripe_api: stripe.StripeClient, task_queue: str
) -> None:
    env = time_skipping_env
    cid = await new_customer(engine, 500)
    order = order_ref()
    intent = await paid_intent(stripe_api, refund=True)
    async with loyalty_worker(env.client, engine, stripe_api, task_queue):
        queued = await enqueue_failed_points(
            env.client, engine, cid, order, 100, Decimal("42.00"), payment_intent_id=intent, task_queue=task_queue
        )
        result = await result_of(env, handle_of(env.client, queued.item_id))
    assert (result.status, result.resolution, result.attempts, result.points_earned) == (
        "RESOLVED",
        "refunded",
        0,
        None,
    )
    assert await order_rows(engine, order) == []
    assert await balance_and_ledger(engine, cid) == (500, 500)


# --------------------------------------------------------------------------- people


async def test_insufficient_points_goes_to_review_and_resolve_manually_closes_it_recording_the_actor(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    stripe_api: stripe.StripeClient,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    cid = await new_customer(engine, 50)
    order = order_ref()
    intent = await paid_intent(stripe_api)
    async with loyalty_worker(env.client, engine, stripe_api, task_queue):
        queued = await enqueue_failed_points(
            env.client, engine, cid, order, 100, Decimal("10"), payment_intent_id=intent, task_queue=task_queue
        )
        handle = handle_of(env.client, queued.item_id)
        status = await in_review(handle)
        assert status.status == "NEEDS_REVIEW"
        assert status.reason == f"InsufficientPoints: customer {cid} has 50 points, 100 were to be redeemed"
        row = await queue_row(engine, queued.item_id)
        assert (row.status, row.attempts) == ("NEEDS_REVIEW", 1)
        described = await handle.describe()
        assert described.typed_search_attributes.get(search_attributes.CASE_STATUS) == "NEEDS_REVIEW"

        # Malformed payloads (from the UI or `temporal workflow signal`): logged and ignored.
        await handle.signal("retry_now", {"who": "someone"})
        await handle.signal("retry_now", "please")
        await handle.signal("resolve_manually", {"actor_id": "admin-7"})  # no note
        await handle.signal("resolve_manually", {"actor_id": "  ", "note": "x"})
        await handle.signal("resolve_manually")
        await handle.signal("retry_now", b"raw bytes")  # binary/plain: reaches the handler undecoded
        await handle.signal("resolve_manually", b"raw bytes")
        assert (await handle.query(LoyaltyReconciliationWorkflow.status)).phase == "waiting for review"
        assert (await queue_row(engine, queued.item_id)).status == "NEEDS_REVIEW"

        await resolve_manually(env.client, queued.item_id, "admin-7", "points given at the till")
        result = await result_of(env, handle)
        await record_history(handle, "loyalty_reconcile_review")
        with pytest.raises(LoyaltyRefused, match=f"item {queued.item_id} is already RESOLVED"):
            await retry_now(env.client, queued.item_id, "admin-7")

    assert (result.status, result.resolved_by) == ("RESOLVED", "admin-7")
    assert result.resolution == "manual: points given at the till"
    row = await queue_row(engine, queued.item_id)
    assert (row.status, row.resolved_by, row.resolution) == ("RESOLVED", "admin-7", "manual: points given at the till")
    assert row.resolved_at is not None
    assert await order_rows(engine, order) == []
    assert await balance_and_ledger(engine, cid) == (50, 50)
    assert await task_failures(handle) == 0


async def test_retry_now_after_the_balance_was_topped_up_applies_the_points(
    time_skipping_env: WorkflowEnvironment, engine: AsyncEngine, stripe_api: stripe.StripeClient, task_queue: str
) -> None:
    env = time_skipping_env
    cid = await new_customer(engine, 50)
    order = order_ref()
    async with loyalty_worker(env.client, engine, stripe_api, task_queue):
        queued = await enqueue_failed_points(env.client, engine, cid, order, 100, Decimal("0"), task_queue=task_queue)
        handle = handle_of(env.client, queued.item_id)
        await in_review(handle)
        async with engine.begin() as conn:  # a person adds the missing points (through the ledger)
            await conn.execute(
                text(
                    "INSERT INTO loyalty_transactions (customer_id, type, points, balance_before, balance_after,"
                    " reference_type, reference_id) VALUES (:c, 'adjusted', 50, 50, 100, 'manual', :r)"
                ),
                {"c": cid, "r": f"topup-{order}"},
            )
            await conn.execute(text("UPDATE customers SET loyalty_points = 100 WHERE id = :c"), {"c": cid})
        await retry_now(env.client, queued.item_id, "admin-9")
        result = await result_of(env, handle)
    assert (result.status, result.resolution, result.attempts, result.points_redeemed) == (
        "RESOLVED",
        "applied",
        2,
        100,
    )
    assert await balance_and_ledger(engine, cid) == (0, 0)


# --------------------------------------------------------------------------- enqueue and sweep


async def test_enqueue_is_idempotent_by_order_and_refuses_bad_input(
    time_skipping_env: WorkflowEnvironment, engine: AsyncEngine, stripe_api: stripe.StripeClient, task_queue: str
) -> None:
    env = time_skipping_env
    cid = await new_customer(engine, 0)
    order = order_ref()
    with pytest.raises(pydantic.ValidationError, match="points_redeemed"):
        await enqueue_failed_points(env.client, engine, cid, order, -10, Decimal("5"), task_queue=task_queue)
    with pytest.raises(pydantic.ValidationError, match="payment_intent_id"):
        await enqueue_failed_points(
            env.client, engine, cid, order, 0, Decimal("5"), payment_intent_id="ch_123", task_queue=task_queue
        )
    with pytest.raises(UnknownCustomer, match="no customer 987654321"):
        await enqueue_failed_points(env.client, engine, 987654321, order, 0, Decimal("5"), task_queue=task_queue)
    async with engine.connect() as conn:
        assert (
            await conn.scalar(
                text("SELECT count(*) FROM loyalty_reconciliation_queue WHERE order_reference = :o"), {"o": order}
            )
            == 0
        )

    async with loyalty_worker(env.client, engine, stripe_api, task_queue):
        first = await enqueue_failed_points(env.client, engine, cid, order, 0, Decimal("5"), task_queue=task_queue)
        second = await enqueue_failed_points(env.client, engine, cid, order, 0, Decimal("5"), task_queue=task_queue)
        assert second.item_id == first.item_id and not second.created
        result = await result_of(env, handle_of(env.client, first.item_id))
        third = await enqueue_failed_points(env.client, engine, cid, order, 0, Decimal("5"), task_queue=task_queue)
    assert (third.item_id, third.status, third.started) == (first.item_id, "RESOLVED", False)
    assert (result.status, result.points_earned) == ("RESOLVED", 5)
    assert await balance_and_ledger(engine, cid) == (5, 5)


async def test_the_sweep_starts_a_workflow_for_each_pending_item_that_has_none(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    stripe_api: stripe.StripeClient,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    cid = await new_customer(engine, 100)
    orphan_order, busy_order = order_ref(), order_ref()
    async with engine.begin() as conn:  # written by SQL, no workflow
        orphan = await conn.scalar(
            text(
                "INSERT INTO loyalty_reconciliation_queue (customer_id, order_reference, points_redeemed, order_total)"
                " VALUES (:c, :o, 10, 20) RETURNING id"
            ),
            {"c": cid, "o": orphan_order},
        )
    async with loyalty_worker(env.client, engine, stripe_api, task_queue):
        async with failing_inserts(engine, busy_order, 10_000):
            busy = await enqueue_failed_points(
                env.client, engine, cid, busy_order, 0, Decimal("1"), task_queue=task_queue
            )
            sweeps: list[LoyaltySweepResult] = []
            for run in range(2):
                sweep = await env.client.start_workflow(
                    LoyaltyReconcileSweepWorkflow.run,
                    LoyaltySweepRequest(page_size=1),  # pages of one: the cursor is exercised too
                    id=f"loyalty-reconcile-sweep/{uuid.uuid4().hex[:8]}",
                    task_queue=task_queue,
                )
                sweeps.append(await sweep.result())
                if run == 0:
                    await record_history(sweep, "loyalty_reconcile_sweep")
                    orphan_result = await result_of(env, handle_of(env.client, orphan))
            busy_described = await handle_of(env.client, busy.item_id).describe()
        # The fault is gone: the busy item's next attempt applies it (no terminate with an attempt
        # in flight, which the time-skipping server never releases its clock for).
        busy_result = await result_of(env, handle_of(env.client, busy.item_id))

    first, second = sweeps
    assert (first.pending_seen, first.started, first.already_running) == (2, 1, 1)
    assert (second.pending_seen, second.started, second.already_running) == (1, 0, 1)  # nothing started twice
    assert (orphan_result.status, orphan_result.resolution, orphan_result.points_earned) == ("RESOLVED", "applied", 20)
    assert busy_described.status == WorkflowExecutionStatus.RUNNING
    assert (busy_result.status, busy_result.resolution, busy_result.points_earned) == ("RESOLVED", "applied", 1)
    assert await balance_and_ledger(engine, cid) == (111, 111)
