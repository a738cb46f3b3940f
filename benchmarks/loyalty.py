"""Benchmark: concurrent points applications on a real PostgreSQL, hot and cold customers.

    python benchmarks/loyalty.py --applications 1000 --hot 10 --cold 1000

Fires N applications at once through `apply_points_at_checkout` (the checkout path's call: one
transaction holding the customer's row lock), first spread over a few hot customers (up to
N / hot applications queue on each row lock), then over many cold ones (almost no contention).
Prints applications/s, the time spent waiting for the row lock (p50/p95/max), call latency, and
the integrity audit's verdict afterwards (balance == ledger sum for every customer).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from activities.database import create_engine  # noqa: E402
from activities.loyalty.audit import audit_balances  # noqa: E402
from activities.loyalty.ledger import apply_points_at_checkout  # noqa: E402
from benchmarks.harness import machine  # noqa: E402
from schemas.loyalty import PointsApplication  # noqa: E402
from workers import migrate  # noqa: E402
from devtools.embedded_db import EmbeddedPostgres  # noqa: E402
from workers.log import configure_logging  # noqa: E402

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
INSERT INTO loyalty_transactions (customer_id, type, points, balance_before, balance_after, reference_type, reference_id)
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


async def run_set(engine: AsyncEngine, label: str, customers: list[int], applications: int) -> None:
    run = uuid.uuid4().hex[:6]
    latencies: list[float] = []

    async def one(i: int) -> PointsApplication:
        started = time.perf_counter()
        result = await apply_points_at_checkout(engine, customers[i % len(customers)], f"bench-{run}-{i}", REDEEM, ORDER_TOTAL)
        latencies.append((time.perf_counter() - started) * 1000)
        return result

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(applications)), return_exceptions=True)
    elapsed = time.perf_counter() - started
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
    print(f"  audit: {checked} customers checked, {wrong} with balance != ledger sum")


async def main(applications: int, hot: int, cold: int, pool: int) -> None:
    configure_logging("json", "WARNING")
    root = Path(tempfile.mkdtemp(prefix="jobctl-bench-"))
    pg = EmbeddedPostgres(root / "pg", delete_on_stop=True)
    try:
        url = pg.create_database("bench")
        migrate.upgrade(url)
        engine = create_engine(url, pool_size=pool)
        try:
            print(f"machine: {machine()}; engine pool {pool} + {pool} overflow")
            hot_ids = await new_customers(engine, hot)
            cold_ids = await new_customers(engine, cold)
            await run_set(engine, "warm-up", cold_ids, min(200, applications))
            await run_set(engine, "hot", hot_ids, applications)
            await run_set(engine, "cold", cold_ids, applications)
        finally:
            await engine.dispose()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applications", type=int, default=1000)
    parser.add_argument("--hot", type=int, default=10, help="customers in the hot set")
    parser.add_argument("--cold", type=int, default=1000, help="customers in the cold set")
    parser.add_argument("--pool", type=int, default=10, help="engine pool size (the worker's default is 10)")
    args = parser.parse_args()
    asyncio.run(main(args.applications, args.hot, args.cold, args.pool))
