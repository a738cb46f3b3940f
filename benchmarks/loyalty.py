"""Benchmark: concurrent points applications on a real PostgreSQL, hot and cold customers, and
the reconciliation queue from a failed application to the points applied.

    python benchmarks/loyalty.py --applications 5000 --hot 10 --cold 1000 --queued 200

Fires N applications, `IN_FLIGHT` (1,000) at a time, through `apply_points_at_checkout` (the
checkout path's call: one transaction holding the customer's row lock), first spread over a few hot
customers (up to 1,000 / hot applications queue on each row lock), then over many cold ones
(almost no contention).
Prints applications/s, the time spent waiting for the row lock (p50/p95/max), call latency, the
CPU per application by process, and the integrity audit's verdict afterwards (balance == ledger
sum for every customer). It runs on uvloop, as `jobctl api` does. 5,000 applications take about
5 s: 1,000 took one second, in which the first burst and the tail moved the rate by ±10 %.

Then the queue: `--queued` orders, each paid with a real PaymentIntent at the Stripe sandbox,
whose inline application is taken as failed (the checkout path's fallback, which does not care
why it failed) go through `enqueue_failed_points`: one queue row and one
`loyalty-reconcile/{item}` workflow each, run by a real worker, which checks the PaymentIntent
with Stripe and applies the points. Their Temporal actions are counted from the real histories.

Figures: applications/s on the hot customers (>= 1000), customers whose balance is not the sum
of their ledger after everything (== 0), and Temporal actions per item from queue to applied (<= 6).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker

from activities.database import create_engine
from activities.loyalty.audit import audit_balances
from activities.loyalty.ledger import apply_points_at_checkout
from activities.loyalty.queue import LoyaltyQueueActivities
from activities.payments.activities import PaymentActivities
from activities.payments.client import close_stripe_client, stripe_client
from activities.payments.gateway import StripeGateway
from benchmarks.harness import (
    Measured,
    count_actions,
    count_billable,
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
from schemas.loyalty import PointsApplication, ReconcileResult
from services.loyalty import enqueue_failed_points
from workers.log import configure_logging
from workflows.loyalty import LoyaltyReconciliationWorkflow

OPENING_POINTS = 1_000_000
REDEEM = 10
ORDER_TOTAL = Decimal("25.00")

NEW_CUSTOMERS_SQL = text(
    """
WITH made AS (
    INSERT INTO customers (name, loyalty_points, earn_rate)
    SELECT 'Bench Customer ' || g, :points, 1 FROM generate_series(1, :n) g
    RETURNING id
)
INSERT INTO loyalty_transactions
    (customer_id, type, points, balance_before, balance_after, reference_type, reference_id)
SELECT id, 'adjusted', :points, 0, :points, 'opening', 'opening-' || id FROM made
RETURNING customer_id
"""
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def new_customers(engine: AsyncEngine, count: int) -> list[int]:
    async with engine.begin() as conn:
        return sorted((await conn.execute(NEW_CUSTOMERS_SQL, {"n": count, "points": OPENING_POINTS})).scalars())


IN_FLIGHT = 1_000
"""Applications outstanding at once: what a few API processes hold (each request is a task waiting
for one of the pool's connections). All of N at once was the benchmark's shape until the scale
curve: 100,000 coroutines queued on one pool made the process's CPU per application 2.2 times
1,000's (the garbage collector walking them, the pool's wait queue), a bend of the benchmark's own."""


async def run_set(engine: AsyncEngine, label: str, customers: list[int], applications: int) -> Measured:
    """Fire `applications` over `customers`, `IN_FLIGHT` at a time; returns the applications
    applied, their time and CPU (no workflow: no Temporal action)."""
    run = uuid.uuid4().hex[:6]
    latencies: list[float] = []
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> PointsApplication:
        async with slots:
            started = time.perf_counter()
            result = await apply_points_at_checkout(
                engine, customers[i % len(customers)], f"bench-{run}-{i}", REDEEM, ORDER_TOTAL
            )
            latencies.append((time.perf_counter() - started) * 1000)
            return result

    cpu_before, started = cpu_seconds(), time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(applications)), return_exceptions=True)
    elapsed = time.perf_counter() - started
    cpu_after = cpu_seconds()
    cpu = cpu_per(cpu_before, cpu_after, applications, "application")
    applied = [r for r in results if isinstance(r, PointsApplication) and r.outcome == "applied"]
    failed = [r for r in results if not isinstance(r, PointsApplication)]
    waits = [r.lock_wait_ms for r in applied]
    checked, wrong, _ = await audit_balances(engine, 10)
    print(f"{label}: {applications} applications over {len(customers)} customers")
    print(f"  applied {len(applied)}, failed {len(failed)}{' (' + repr(failed[0]) + ')' if failed else ''}")
    print(f"  {len(applied) / elapsed:,.0f} applications/s ({elapsed:.2f} s)")
    print(
        f"  row-lock wait ms: mean {statistics.fmean(waits):.1f}, p50 {pct(waits, 0.5):.1f},"
        f" p95 {pct(waits, 0.95):.1f}, max {max(waits):.1f}"
    )
    print(f"  call latency ms: p50 {pct(latencies, 0.5):.1f}, p99 {pct(latencies, 0.99):.1f}")
    print(f"  {cpu}")
    print(f"  audit: {checked} customers checked, {wrong} with balance != ledger sum")
    return Measured(len(applied), "application", elapsed, cpu_used(cpu_before, cpu_after), 0.0)


async def queue_to_applied(
    client: Client, engine: AsyncEngine, stripe_url: str, customers: list[int], items: int
) -> tuple[int, int]:
    """`items` failed applications through the queue to applied; returns their Temporal actions
    (as harness.ACTION_EVENTS counts them, and as Temporal Cloud bills them)."""
    stripe_api = stripe_client("sk_test_bench", stripe_url, timeout_s=30)
    queue = f"bench-loyalty-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:6]
    try:
        slots = asyncio.Semaphore(20)

        async def paid(i: int) -> str:  # the order's payment, made before its points failed to apply
            async with slots:
                intent = await stripe_api.v1.payment_intents.create_async(
                    {
                        "amount": int(ORDER_TOTAL * 100),
                        "currency": "usd",
                        "payment_method": "pm_card_visa",
                        "confirm": True,
                    },
                    {"idempotency_key": f"bench-pi:{run}:{i}"},
                )
                return intent.id

        intents = await asyncio.gather(*(paid(i) for i in range(items)))
        payments = PaymentActivities(StripeGateway(stripe_api, engine))
        queue_acts = LoyaltyQueueActivities(engine)
        async with Worker(
            client,
            task_queue=queue,
            workflows=[LoyaltyReconciliationWorkflow],
            activities=[
                queue_acts.load_item,
                queue_acts.apply_queued_points,
                queue_acts.mark_needs_review,
                queue_acts.resolve_item,
                queue_acts.reopen_item,
                payments.payment_intent_status,
            ],
        ):
            started = time.perf_counter()
            queued = await asyncio.gather(
                *(
                    enqueue_failed_points(
                        client,
                        engine,
                        customers[i % len(customers)],
                        f"bench-queued-{run}-{i}",
                        REDEEM,
                        ORDER_TOTAL,
                        payment_intent_id=intents[i],
                        error="bench: the inline application failed",
                        task_queue=queue,
                    )
                    for i in range(items)
                )
            )
            handles = [client.get_workflow_handle(q.workflow_id, result_type=ReconcileResult) for q in queued]
            results = await asyncio.gather(*(h.result() for h in handles))
            elapsed = time.perf_counter() - started
        outcomes: dict[str, int] = {}
        for r in results:
            outcomes[f"{r.status} {r.resolution}"] = outcomes.get(f"{r.status} {r.resolution}", 0) + 1
        actions = billable = 0
        for h in handles:
            first_run = (await h.describe()).raw_description.workflow_execution_info.first_run_id or ""
            actions += await count_actions(client, h.id, first_run)
            billable += await count_billable(client, h.id, first_run)
        print(f"queue: {items} failed applications queued, reconciled in {elapsed:.1f}s; outcomes {outcomes}")
        print(
            f"  Temporal actions: {actions} = {actions / items:.2f} per item (enqueue to applied);"
            f" {billable / items:.2f} billable by Temporal Cloud's definition"
        )
        if outcomes != {"RESOLVED applied": items}:
            raise SystemExit(f"not every queued item was applied: {outcomes}")
        return actions, billable
    finally:
        await close_stripe_client(stripe_api)


async def main(applications: int, hot: int, cold: int, pool: int, queued: int) -> Measured:
    configure_logging("json", "WARNING")
    stripe_port = free_port()
    async with stack() as s, serve("stripe-sandbox", stripe_port):
        engine = create_engine(s.database_url, pool_size=pool)
        try:
            print(f"machine: {machine()}; engine pool {pool}, no overflow")
            hot_ids = await new_customers(engine, hot)
            cold_ids = await new_customers(engine, cold)
            await run_set(engine, "warm-up", cold_ids, min(200, applications))
            hot_rate = (await run_set(engine, "hot", hot_ids, applications)).rate
            cold_set = await run_set(engine, "cold", cold_ids, applications)
            stripe_url = f"http://127.0.0.1:{stripe_port}"
            actions, billable = await queue_to_applied(s.client, engine, stripe_url, cold_ids, queued)
            checked, wrong, _ = await audit_balances(engine, 10)
            print(f"audit after everything: {checked} customers checked, {wrong} with balance != ledger sum")
        finally:
            await engine.dispose()
    figure(f"loyalty: applications/s on {hot} hot customers", hot_rate, "applications/s", target=">= 1000")
    figure("loyalty: customers with balance != ledger sum", wrong, "customers", target="== 0")
    figure("loyalty: actions per item from queue to applied", actions / queued, "actions", target="<= 6")
    print_load_at_end()
    # An application at checkout starts no workflow; only a failed one's queue item does.
    cold_set.targets = {
        f"hot set ({hot} customers) applications/s": hot_rate,
        "billable actions per queued item": billable / queued,
    }
    return cold_set


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applications", type=int, default=5000)
    parser.add_argument("--hot", type=int, default=10, help="customers in the hot set")
    parser.add_argument("--cold", type=int, default=1000, help="customers in the cold set")
    parser.add_argument("--pool", type=int, default=20, help="engine pool size (the worker's default is 20)")
    parser.add_argument(
        "--queued", type=int, default=200, help="failed applications sent through the reconciliation queue"
    )
    args = parser.parse_args()
    if min(args.applications, args.hot, args.cold, args.queued) < 1:
        parser.error("--applications, --hot, --cold and --queued must be at least 1")
    require_quiet()
    # On uvloop, as `jobctl api` serves the checkout path that makes this call.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(args.applications, args.hot, args.cold, args.pool, args.queued))
