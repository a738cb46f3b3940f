"""Benchmark: what `compile_workflow_modules()` buys, as worker CPU per sandboxed workflow, in one run.

    python benchmarks/workflow_bytecode.py --runs 1000

The workflow sandbox re-imports a workflow's module for every new workflow instance. With
PYTHONDONTWRITEBYTECODE=1 (this machine, CI) and no .pyc on disk, each of those imports compiles
the source again. The order clock (issue #14's case) runs outside the sandbox since then, so this
measures the sandboxed workflow that starts most often: a retailer's guardrails re-checked after
an adjustment or a payment (`services.credit.recheck_guardrails`, `credit-guardrails/{retailer}/
{reference}`), on healthy retailers, so each run is its start, `business_day` (the re-check asks
the business's date), one `credit_apply_guardrails` activity and its end. `--runs` re-checks run
with no workflow bytecode on disk (the floor of this comparison: the worker as it was), then the
bytecode is written as the production worker does at start and as many run again; it prints the
worker's CPU per run for both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from temporalio.worker import Worker

import workflows
from activities.business_calendar import business_day
from activities.credit.guardrails import GuardrailActivities
from benchmarks.harness import (
    cpu_ms,
    cpu_seconds,
    figure,
    machine,
    print_load_at_end,
    require_quiet,
    stack,
)
from config.settings import Settings
from services.credit import recheck_guardrails
from workers.worker import WorkerOptions, compile_workflow_modules, jobs_tuning
from workflows.credit import CreditGuardrailsWorkflow

HEALTHY = text(
    """
WITH shops AS (
    INSERT INTO retailers (name, phone, preferred_channel)
    SELECT 'Bench Shop ' || g, '+1558' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(1, :n) g
    RETURNING id
), accounts AS (
    INSERT INTO credit_accounts (retailer_id, credit_limit, available_credit, max_outstanding_days)
    SELECT id, 1000, 1000, 30 FROM shops
)
SELECT id FROM shops ORDER BY id
"""
)
WORKER = "benchmark process"  # the worker and the starting client run in it


def drop_bytecode() -> None:
    for cache in Path(workflows.__file__).parent.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


async def runs_cpu(s, retailers: list[int], concurrency: int) -> tuple[float, float]:
    """(worker CPU ms per re-check, re-checks/s) for one re-check of each retailer on a fresh
    worker, tuned as the `jobs` worker is."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(task_queue=queue, messaging_task_queue=f"{queue}-msg")
    reference = f"bench-{uuid.uuid4().hex[:8]}"
    limit = asyncio.Semaphore(concurrency)

    async def one(retailer_id: int) -> None:
        async with limit:
            result = await recheck_guardrails(s.client, settings, retailer_id, reference=reference)
            assert not result.paused and not result.resumed, f"retailer {retailer_id} is not healthy: {result}"

    async with Worker(
        s.client,
        task_queue=queue,
        workflows=[CreditGuardrailsWorkflow],
        activities=[GuardrailActivities(s.engine).apply, business_day],
        **jobs_tuning(WorkerOptions()),
    ):
        before, started = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(one(r) for r in retailers))
        return cpu_ms(before, cpu_seconds(), len(retailers))[WORKER], len(retailers) / (time.perf_counter() - started)


async def main(runs: int, concurrency: int) -> None:
    if os.environ.get("PYTHONDONTWRITEBYTECODE") != "1":
        print("note: PYTHONDONTWRITEBYTECODE is not 1 here: the sandbox may write bytecode itself")
    async with stack(compile_workflows=False) as s:
        async with s.engine.begin() as conn:
            retailers = list((await conn.execute(HEALTHY, {"n": runs})).scalars())
        drop_bytecode()
        without_ms, without_rate = await runs_cpu(s, retailers, concurrency)
        compile_workflow_modules()
        with_ms, with_rate = await runs_cpu(s, retailers, concurrency)
    print(f"machine: {machine()}; {runs} guardrails re-checks each, {concurrency} in flight")
    print(f"no workflow bytecode on disk: worker CPU {without_ms:.1f} ms per re-check, {without_rate:,.0f} re-checks/s")
    print(f"compile_workflow_modules():   worker CPU {with_ms:.1f} ms per re-check, {with_rate:,.0f} re-checks/s")
    print(f"ratio (with / without): {with_ms / without_ms:.3f}")
    figure(
        "guardrails: worker CPU per sandboxed re-check with workflow bytecode",
        with_ms,
        "ms",
        floor=without_ms,
        floor_name="no bytecode on disk",
        target="< 1",
    )
    print_load_at_end()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    require_quiet()
    asyncio.run(main(args.runs, args.concurrency))
