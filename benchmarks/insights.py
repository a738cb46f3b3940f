"""Benchmark: nightly insight regeneration over N retailers, end to end on a real stack.

    python benchmarks/insights.py --retailers 10000

Prints retailers/s for the workflow (set-based pages) and, in the same process, for a
baseline that does what a per-retailer cron job does (one query and one upsert per
retailer), plus Temporal actions per retailer counted from the workflow's histories.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from temporalio.worker import Worker

from activities.insights import PAGE_STATS_SQL, InsightActivities, _insight_row, _stats_from_row, window
from benchmarks.harness import (
    Measured,
    count_actions,
    count_billable,
    cpu_per,
    cpu_seconds,
    cpu_used,
    figure,
    machine,
    print_load_at_end,
    require_quiet,
    stack,
)
from devtools.seed import seed_retailers
from schemas.insights import InsightsRequest
from schemas.tables import Retailer, RetailerInsight
from workflows.insights import InsightsRegenerationWorkflow

DAY = date(2026, 11, 23)


async def baseline(engine, insight_date: date, limit: int) -> tuple[int, float]:
    """Per-retailer loop: one stats query and one upsert per retailer, sequentially."""
    prev_start, window_start, as_of = window(insight_date, "UTC")
    started = time.perf_counter()
    async with engine.connect() as conn:
        ids = (await conn.execute(select(Retailer.id).order_by(Retailer.id).limit(limit))).scalars().all()
    for rid in ids:
        async with engine.begin() as conn:
            row = (
                await conn.execute(
                    PAGE_STATS_SQL,
                    {
                        "after_id": rid - 1,
                        "page_size": 1,
                        "prev_start": prev_start,
                        "window_start": window_start,
                        "as_of": as_of,
                        "insight_date": insight_date,
                        "tz": "UTC",
                        "top_n": 3,
                    },
                )
            ).one()
            values = _insight_row(_stats_from_row(row), insight_date)
            stmt = insert(RetailerInsight).values(values)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[RetailerInsight.retailer_id, RetailerInsight.insight_date],
                    set_={"message": stmt.excluded.message, "generation": RetailerInsight.generation + 1},
                )
            )
    return len(ids), time.perf_counter() - started


async def main(retailers: int, baseline_sample: int) -> Measured:
    async with stack() as s:
        seed_started = time.perf_counter()
        report = await seed_retailers(s.engine, retailers, today=DAY)
        print(
            f"seeded {report.retailers} retailers, {report.orders} orders, {report.debits} debits "
            f"in {time.perf_counter() - seed_started:.1f}s"
        )
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        async with Worker(
            s.client,
            task_queue=queue,
            workflows=[InsightsRegenerationWorkflow],
            activities=[InsightActivities(s.engine).regenerate_insights_chunk],
        ):
            workflow_id = f"insights/bench-{uuid.uuid4().hex[:8]}"
            cpu_before, started = cpu_seconds(), time.perf_counter()
            handle = await s.client.start_workflow(
                InsightsRegenerationWorkflow.run, InsightsRequest(insight_date=DAY), id=workflow_id, task_queue=queue
            )
            result = await handle.result()
            elapsed = time.perf_counter() - started
            cpu_after = cpu_seconds()
        actions = await count_actions(s.client, workflow_id, handle.result_run_id or handle.run_id or "")
        billable = await count_billable(s.client, workflow_id, handle.first_execution_run_id or handle.run_id or "")
        async with s.engine.connect() as conn:
            rows = await conn.scalar(text("SELECT count(*) FROM retailer_insights WHERE insight_date = :d"), {"d": DAY})
        base_n, base_s = await baseline(s.engine, date(2026, 11, 24), baseline_sample)

    rate = result.retailers_done / elapsed
    base_rate = base_n / base_s
    print(f"machine: {machine()}")
    print(f"workflow: {result.retailers_done} retailers, {result.pages_done} pages, {rows} rows in {elapsed:.2f}s")
    print(f"retailers/s: {rate:,.0f}")
    print(f"baseline (one query + one upsert per retailer, {base_n} retailers): {base_rate:,.0f} retailers/s")
    print(f"speed-up vs baseline: {rate / base_rate:.1f}x")
    print(f"temporal actions: {actions} ({actions / result.retailers_done:.5f} per retailer)")
    cpu_line = cpu_per(cpu_before, cpu_after, result.retailers_done, "retailer")
    print(f"  {cpu_line} (the benchmark process is the worker)")
    figure(f"insights: retailers/s ({retailers} retailers)", rate, "retailers/s", target=">= 5000")
    figure("insights: Temporal actions per retailer", actions / result.retailers_done, "actions", target="<= 0.01")
    print_load_at_end()
    return Measured(
        result.retailers_done,
        "retailer",
        elapsed,
        cpu_used(cpu_before, cpu_after),
        billable / max(result.retailers_done, 1),
        {"retailers/s": rate},
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retailers", type=int, default=10_000)
    parser.add_argument("--baseline-sample", type=int, default=1_000)
    args = parser.parse_args()
    if args.retailers < 1:
        parser.error("--retailers must be at least 1")
    require_quiet()
    asyncio.run(main(args.retailers, args.baseline_sample))
