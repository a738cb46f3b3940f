"""Benchmark: N pending-order clocks on a real stack (dev server, PostgreSQL, in-process worker).

    python benchmarks/orders.py --orders 10000 --expiry-orders 600 --ttl 60 --expiry-rate 20

Prints starts/s (through `start_pending_order`: counted once the clocks' first workflow tasks have
run, as the bare clock's are once their update is answered; how
fast the callers were answered, from the database and one start RPC, is printed too), the worker
process's resident memory with
every clock asleep (bounded by the workflow cache, not by the number of clocks), and expiry
lateness p50/p99 (`expired_at - expires_at`, from the database) for clocks with a short TTL.
Last, the floor: the same starts of a clock that does no work of ours (benchmarks/bare_clock.py).
Starts print their CPU per start by process, in steady state: the worker's cache is filled
(unmeasured clocks) before the first measured start, so each start evicts a clock as production's
do, and the reading is taken once the server's deferred work for the last start is done
(`harness.after_deferred_work`).

An order's whole life, start to expiry, in Temporal actions (counted from the real histories):
`--life-orders` clocks with production's shape at a smaller scale, a follow-up due half-way
(30 s, sent through a messaging worker to the Twilio emulator in its own process, then recorded)
and the expiry at 60 s, so each wait is as long as its RE_AIM_LEAD split makes it in production
(two timers per wait). Local activities (the registration, the settling UPDATE) are not actions
here; starting the workflow and its `track` update are not counted either (harness.ACTION_EVENTS).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from activities.orders import OrderActivities
from benchmarks.bare_clock import BareClockWorkflow
from benchmarks.harness import (
    Measured,
    after_deferred_work,
    count_actions,
    count_billable,
    cpu_ms,
    cpu_per,
    cpu_seconds,
    cpu_used,
    figure,
    free_port,
    machine,
    print_load_at_end,
    require_quiet,
    serve,
    stack,
)
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from schemas import ids
from schemas.orders import PendingOrderInput, PendingOrderResult
from services.orders import start_pending_order
from workers.worker import WORKFLOW_TASK_POLLERS, WorkerOptions
from workflows.orders import PendingOrderWorkflow

CACHE = WorkerOptions().max_cached_workflows  # the production worker's cache size (and, below, its polls)

NEW_ORDERS_SQL = text(
    """
WITH shops AS (
    INSERT INTO retailers (name, phone, timezone)
    SELECT 'Bench Shop ' || g, '+1557' || lpad(g::text, 7, '0'), 'UTC' FROM generate_series(1, :shops) g
    RETURNING id
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM shops
)
INSERT INTO orders (retailer_id, status, payment_mode, total_amount)
SELECT n.id, 'PENDING', 'COD', 50 FROM generate_series(0, :orders - 1) o JOIN numbered n ON n.k = o % :shops
RETURNING id, retailer_id
"""
)


LAST_STARTED = 20
"""How many of the last clocks started `wait_first_tasks` watches."""


async def wait_first_tasks(client, order_ids: list[int], timeout: float = 600.0) -> None:  # type: ignore[no-untyped-def]
    """Until the last clocks started have had their first workflow task (or `timeout` passed).

    A start answers before that task (from the row it wrote), and the task no longer touches the
    database (the clock comes in the input), so the worker's share of a start is read from the
    histories: the server hands out workflow tasks in the order they were scheduled, so once
    the last `LAST_STARTED` have completed theirs, the rest have too (to within the worker's few
    tasks in flight)."""
    await wait_first_tasks_of(client, [ids.pending_order(o) for o in order_ids], timeout)


async def wait_first_tasks_of(client, workflow_ids: list[str], timeout: float = 600.0) -> None:  # type: ignore[no-untyped-def]
    """`wait_first_tasks` for any workflows, by id (the API benchmark's bare clocks too)."""
    deadline = time.monotonic() + timeout

    async def first_task_done(workflow_id: str) -> None:
        handle = client.get_workflow_handle(workflow_id)
        while time.monotonic() < deadline:
            async for event in handle.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                    return
            await asyncio.sleep(0.25)  # 20 histories at a time: gently, the server is measured too

    await asyncio.gather(*(first_task_done(w) for w in workflow_ids[-LAST_STARTED:]))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def new_orders(engine, count: int) -> list[tuple[int, int]]:
    async with engine.begin() as conn:
        rows = (await conn.execute(NEW_ORDERS_SQL, {"orders": count, "shops": max(1, count // 100)})).all()
    return [(row.id, row.retailer_id) for row in rows]


async def start_all(
    client, engine, orders, task_queue: str, concurrency: int, rate: float | None = None, **clock: timedelta
) -> float:
    """Start every clock with `concurrency` starts in flight, at most `rate` a second if given;
    returns the elapsed seconds until the last start was answered."""
    slots = asyncio.Semaphore(concurrency)
    begin = time.monotonic()

    async def one(i: int, order_id: int, retailer_id: int) -> None:
        if rate:
            await asyncio.sleep(max(0.0, begin + i / rate - time.monotonic()))
        async with slots:
            await start_pending_order(
                client,
                engine,
                PendingOrderInput(order_id=order_id, retailer_id=retailer_id, **clock),
                task_queue=task_queue,
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(i, o, r) for i, (o, r) in enumerate(orders)))
    return time.perf_counter() - started


async def bare_floor(client, task_queue: str, count: int, concurrency: int) -> tuple[float, str, dict[str, float]]:
    """Starts/s and CPU per start of BareClockWorkflow: Temporal's own cost of a clock here."""
    slots = asyncio.Semaphore(concurrency)
    prefix = uuid.uuid4().hex[:8]

    async def one(i: int | str) -> None:
        async with slots:
            start = WithStartWorkflowOperation(
                BareClockWorkflow.run,
                id=f"bare-clock/{prefix}/{i}",
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            await client.execute_update_with_start_workflow(BareClockWorkflow.track, start_workflow_operation=start)

    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[BareClockWorkflow],
        max_cached_workflows=CACHE,
        workflow_task_poller_behavior=WORKFLOW_TASK_POLLERS,
    ):
        # Read as jobctl's clocks are (`main`): a full cache first, and after the deferred work.
        await asyncio.gather(*(one(f"warm-{i}") for i in range(CACHE)))
        await after_deferred_work()
        cpu_before, started = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - started
        await after_deferred_work()
        cpu_after = cpu_seconds()
        return count / elapsed, cpu_per(cpu_before, cpu_after, count, "start"), cpu_ms(cpu_before, cpu_after, count)


LIFE_FOLLOW_UP, LIFE_TTL = timedelta(seconds=30), timedelta(seconds=60)


async def whole_life(s, activities: OrderActivities, count: int) -> tuple[int, int, dict[str, int]]:  # type: ignore[no-untyped-def]
    """`count` clocks from start to expiry with a follow-up sent on the way: (their actions as
    harness.ACTION_EVENTS counts them, as Temporal Cloud bills them, their end states)."""
    port = free_port()
    queue = f"life-{uuid.uuid4().hex[:8]}"
    # No quiet hours on either side: at 23:00 the follow-up would be held past the expiry, and
    # the count would be of a life without one.
    no_quiet_hours = QuietHours(0, 0)
    async with serve("twilio-emulator", port):
        gateway = TwilioGateway(
            twilio_client(f"http://127.0.0.1:{port}", DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True)
        )
        sends = MessagingActivities(
            s.engine,
            gateway,
            Senders("whatsapp:+15005550006", "+15005550006"),
            SendPolicy(daily_cap=100, quiet_hours=no_quiet_hours),
        )
        life = await new_orders(s.engine, count)
        async with (
            Worker(
                s.client,
                task_queue=queue,
                workflows=[PendingOrderWorkflow],
                activities=[
                    activities.register_pending_order,
                    activities.record_follow_up,
                    activities.settle_pending_order,
                    activities.handle_order_failure,
                ],
                max_cached_workflows=CACHE,
                workflow_task_poller_behavior=WORKFLOW_TASK_POLLERS,
            ),
            Worker(s.client, task_queue=f"{queue}-msg", activities=[sends.send_message, sends.send_messages]),
        ):
            await asyncio.gather(
                *(
                    start_pending_order(
                        s.client,
                        s.engine,
                        PendingOrderInput(
                            order_id=o,
                            retailer_id=r,
                            follow_up_after=LIFE_FOLLOW_UP,
                            ttl=LIFE_TTL,
                            messaging_task_queue=f"{queue}-msg",
                        ),
                        task_queue=queue,
                        quiet_hours=no_quiet_hours,
                    )
                    for o, r in life
                )
            )
            handles = [
                s.client.get_workflow_handle(ids.pending_order(o), result_type=PendingOrderResult) for o, _ in life
            ]
            results = await asyncio.gather(*(h.result() for h in handles))
        await gateway.close()
    if any(r.state != "EXPIRED" or r.follow_up_sent_at is None for r in results):
        raise SystemExit("the whole-life clocks did not all expire after their follow-up: not counted")
    actions = billable = 0
    for h in handles:
        first_run = (await h.describe()).raw_description.workflow_execution_info.first_run_id or ""
        actions += await count_actions(s.client, h.id, first_run)
        billable += await count_billable(s.client, h.id, first_run)
    ends: dict[str, int] = {}
    for r in results:
        key = f"{r.state}{' after a follow-up' if r.follow_up_sent_at else ''}"
        ends[key] = ends.get(key, 0) + 1
    return actions, billable, ends


async def main(
    orders: int,
    expiry_orders: int,
    ttl: float,
    concurrency: int,
    expiry_rate: float,
    compile_workflows: bool = True,
    life_orders: int = 50,
    bare: bool = True,
) -> Measured:
    """`bare=False` skips the bare clock's floor (benchmarks/scale.py needs only jobctl's own
    cost per start) and with it the two figures measured against it."""
    async with stack(compile_workflows=compile_workflows) as s:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        activities = OrderActivities(s.engine)
        rss_before = rss_mb()
        async with Worker(
            s.client,
            task_queue=queue,
            workflows=[PendingOrderWorkflow],
            activities=[
                activities.register_pending_order,
                activities.record_follow_up,
                activities.settle_pending_order,
                activities.handle_order_failure,
            ],
            max_cached_workflows=CACHE,
            workflow_task_poller_behavior=WORKFLOW_TASK_POLLERS,
        ):
            # Steady state: the cache full before the first measured start, as production's is (500
            # clocks of a day's 50,000), so every start evicts one at every size; and the CPU read
            # once the server's deferred work for the last tasks is done (`after_deferred_work`).
            warm = await new_orders(s.engine, CACHE)
            await start_all(s.client, s.engine, warm, queue, concurrency)
            await wait_first_tasks(s.client, [o for o, _ in warm])
            await after_deferred_work()
            sleeping = await new_orders(s.engine, orders)
            cpu_before, started = cpu_seconds(), time.perf_counter()
            answered = await start_all(s.client, s.engine, sleeping, queue, concurrency)
            await wait_first_tasks(s.client, [o for o, _ in sleeping])
            elapsed = time.perf_counter() - started
            await after_deferred_work()
            cpu_after = cpu_seconds()
            start_cpu, start_ms = cpu_per(cpu_before, cpu_after, orders, "start"), cpu_ms(cpu_before, cpu_after, orders)
            await asyncio.sleep(2)
            rss_sleeping = rss_mb()

            # Short clocks: no follow-up (it would be due after expiry), expiry `ttl` s after the start.
            short = await new_orders(s.engine, expiry_orders)
            short_ids = [o for o, _ in short]
            short_elapsed = await start_all(
                s.client,
                s.engine,
                short,
                queue,
                concurrency,
                expiry_rate,
                ttl=timedelta(seconds=ttl),
                follow_up_after=timedelta(hours=1),
            )
            deadline = time.monotonic() + ttl + 120
            while time.monotonic() < deadline:
                async with s.engine.connect() as conn:
                    left = await conn.scalar(
                        text("SELECT count(*) FROM pending_orders WHERE order_id = ANY(:ids) AND status = 'PENDING'"),
                        {"ids": short_ids},
                    )
                if not left:
                    break
                await asyncio.sleep(1)
            async with s.engine.connect() as conn:
                lateness = [
                    float(x)
                    for x in (
                        await conn.execute(
                            text(
                                "SELECT extract(epoch FROM expired_at - expires_at) FROM pending_orders"
                                " WHERE order_id = ANY(:ids) AND status = 'EXPIRED'"
                            ),
                            {"ids": short_ids},
                        )
                    ).scalars()
                ]

        if bare:
            floor_rate, floor_cpu, floor_ms = await bare_floor(
                s.client, f"{queue}-bare", min(orders, 3000), concurrency
            )
        life_actions, life_billable, life_ends = await whole_life(s, activities, life_orders)

    lateness.sort()
    p = lambda q: lateness[min(len(lateness) - 1, int(q * len(lateness)))] if lateness else float("nan")  # noqa: E731 - a one-line percentile
    print(f"machine: {machine()}; workflow bytecode compiled at start: {compile_workflows}")
    print(
        f"starts: {orders} clocks in {elapsed:.1f}s = {orders / elapsed:,.0f} starts/s ({concurrency} in flight),"
        f" every caller answered after {answered:.1f}s = {orders / answered:,.0f} answers/s"
    )
    print(f"  {start_cpu} (the benchmark process is the worker and the starting client)")
    if bare:
        print(f"Temporal alone (a clock that only answers its start and sleeps): {floor_rate:,.0f} starts/s")
        print(f"  {floor_cpu}")
    print(
        f"worker RSS (in-process, cache {CACHE}): {rss_before:.0f} MB before,"
        f" {rss_sleeping:.0f} MB with {orders} clocks asleep"
    )
    print(
        f"expiry ({expiry_orders} clocks, TTL {ttl:.0f}s, started at {expiry_rate:.0f}/s in {short_elapsed:.1f}s): "
        f"{len(lateness)} expired, lateness p50 {p(0.5):.3f}s, p99 {p(0.99):.3f}s,"
        f" max {lateness[-1] if lateness else float('nan'):.3f}s"
        f", mean {statistics.fmean(lateness) if lateness else float('nan'):.3f}s"
    )
    print(
        f"whole life ({life_orders} clocks, follow-up at {LIFE_FOLLOW_UP.seconds}s, expiry at {LIFE_TTL.seconds}s):"
        f" ends {life_ends}; Temporal actions {life_actions} = {life_actions / life_orders:.2f} per order"
        f" ({life_billable / life_orders:.2f} billable by Temporal Cloud's definition)"
    )
    worker = "benchmark process"
    if bare:
        figure(
            "orders: clock starts/s",
            orders / elapsed,
            "starts/s",
            floor=floor_rate,
            floor_name="bare clock",
            target=">= 0.85",
        )
        figure(
            "orders: worker CPU per start",
            start_ms[worker],
            "ms",
            floor=floor_ms[worker],
            floor_name="bare clock",
            target="<= 2",
        )
    figure(f"orders: expiry lateness p99 ({expiry_orders} clocks)", p(0.99), "s", target="< 0.1")
    figure(f"orders: worker RSS with {orders} asleep", rss_sleeping, "MB", target="< 400")
    figure(
        "orders: Temporal actions of an order's whole life, start to expiry",
        life_actions / life_orders,
        "actions",
        target="<= 8",
    )
    print_load_at_end()
    return Measured(
        orders,
        "order",
        elapsed,
        cpu_used(cpu_before, cpu_after),
        life_billable / life_orders,
        {"worker RSS MB (all asleep)": rss_sleeping, "expiry lateness p99 s": p(0.99)},
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000, help="clocks started and left asleep")
    parser.add_argument("--expiry-orders", type=int, default=600, help="short clocks whose expiry is timed")
    parser.add_argument("--ttl", type=float, default=60.0, help="seconds until the short clocks expire")
    parser.add_argument(
        "--expiry-rate",
        type=float,
        default=20.0,
        help="starts/s of the short clocks: their expiries arrive at this rate, which should be one the"
        " machine sustains (lateness above capacity is only the backlog)",
    )
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument(
        "--no-compile", action="store_true", help="skip compile_workflow_modules() (to measure what it buys)"
    )
    parser.add_argument(
        "--life-orders", type=int, default=50, help="clocks followed from start to expiry, for actions per order"
    )
    args = parser.parse_args()
    if min(args.orders, args.expiry_orders) < 1 or args.ttl <= 0 or args.expiry_rate <= 0:
        parser.error("--orders and --expiry-orders must be at least 1, --ttl and --expiry-rate positive")
    require_quiet()
    asyncio.run(
        main(
            args.orders,
            args.expiry_orders,
            args.ttl,
            args.concurrency,
            args.expiry_rate,
            not args.no_compile,
            args.life_orders,
        )
    )
