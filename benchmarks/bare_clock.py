"""The floor for `benchmarks/orders.py`: a clock that does nothing but answer its start and sleep.

Started with update-with-start (USE_EXISTING), so a start counts once its first task has run, as
`benchmarks/orders.py` counts an order's clock once its first task has registered the row; with
none of our work (no database row, no local activity, no search attributes), its starts/s and
CPU per start are what Temporal itself costs on the machine.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta

from temporalio import workflow


@workflow.defn
class BareClockWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.sleep(timedelta(hours=24))

    @workflow.update
    async def track(self) -> str:
        return "asleep"


async def serve(address: str, task_queue: str) -> None:
    """A worker of bare clocks only, with the production worker's cache and polls, until SIGTERM; outside
    the sandbox, as `PendingOrderWorkflow` runs, so the floor's worker does no work ours skips."""
    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    from workers.heap import freeze_startup_heap
    from workers.worker import WORKFLOW_TASK_POLLERS, WorkerOptions

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = await Client.connect(address)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[BareClockWorkflow],
        max_cached_workflows=WorkerOptions().max_cached_workflows,
        workflow_runner=UnsandboxedWorkflowRunner(),
        workflow_task_poller_behavior=WORKFLOW_TASK_POLLERS,
    ):
        freeze_startup_heap()  # as `jobctl worker` does
        await stop.wait()


if __name__ == "__main__":  # python -m benchmarks.bare_clock ADDRESS TASK_QUEUE (benchmarks/api.py)
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
