"""Benchmark: what `compile_workflow_modules()` buys, as worker CPU per order start, in one run.

    python benchmarks/workflow_bytecode.py --orders 1500

The workflow sandbox re-imports a workflow's module for every new workflow instance. With
PYTHONDONTWRITEBYTECODE=1 (this machine, CI) and no .pyc on disk, each of those imports compiles
the source again. This starts `--orders` pending-order clocks with no workflow bytecode on disk
(the floor of this comparison: the worker as it was), then writes the bytecode as the production
worker does at start and starts as many again, and prints the worker's CPU per start for both.
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

from temporalio.worker import Worker  # noqa: E402

import workflows  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    cpu_ms, cpu_seconds, figure, machine, print_load_at_end, require_quiet, stack,
)
from activities.orders import OrderActivities  # noqa: E402
from benchmarks.orders import CACHE, new_orders, start_all, wait_first_tasks  # noqa: E402
from workers.worker import compile_workflow_modules  # noqa: E402
from workflows.orders import PendingOrderWorkflow  # noqa: E402

WORKER = "benchmark process"  # the worker and the starting client run in it


def drop_bytecode() -> None:
    for cache in Path(workflows.__file__).parent.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


async def starts_cpu(s, orders: int, concurrency: int) -> tuple[float, float]:
    """(worker CPU ms per start, starts/s) for `orders` new clocks on a fresh worker."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    activities = OrderActivities(s.engine)
    async with Worker(
        s.client, task_queue=queue, workflows=[PendingOrderWorkflow],
        activities=[activities.register_pending_order, activities.record_follow_up,
                    activities.settle_pending_order, activities.handle_order_failure],
        max_cached_workflows=CACHE,
    ):
        batch = await new_orders(s.engine, orders)
        before, started = cpu_seconds(), time.perf_counter()
        await start_all(s.client, s.engine, batch, queue, concurrency)
        await wait_first_tasks(s.client, [o for o, _ in batch])  # a start answers before its first task
        return cpu_ms(before, cpu_seconds(), orders)[WORKER], orders / (time.perf_counter() - started)


async def main(orders: int, concurrency: int) -> None:
    if os.environ.get("PYTHONDONTWRITEBYTECODE") != "1":
        print("note: PYTHONDONTWRITEBYTECODE is not 1 here: the sandbox may write bytecode itself")
    async with stack(compile_workflows=False) as s:
        drop_bytecode()
        without_ms, without_rate = await starts_cpu(s, orders, concurrency)
        compile_workflow_modules()
        with_ms, with_rate = await starts_cpu(s, orders, concurrency)
    print(f"machine: {machine()}; {orders} clocks each, {concurrency} starts in flight")
    print(f"no workflow bytecode on disk: worker CPU {without_ms:.1f} ms per start, {without_rate:,.0f} starts/s")
    print(f"compile_workflow_modules():   worker CPU {with_ms:.1f} ms per start, {with_rate:,.0f} starts/s")
    print(f"ratio (with / without): {with_ms / without_ms:.3f}")
    figure("orders: worker CPU per start with workflow bytecode", with_ms, "ms", floor=without_ms,
           floor_name="no bytecode on disk", target="< 1")
    print_load_at_end()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    require_quiet()
    asyncio.run(main(args.orders, args.concurrency))
