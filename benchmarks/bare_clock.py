"""The floor for `benchmarks/orders.py`: a clock that does nothing but answer its start and sleep.

Started exactly as an order's clock is (update-with-start, USE_EXISTING), with none of our work
(no database row, no local activity, no search attributes), so its starts/s and CPU per start
are what Temporal itself costs on the machine.
"""

from __future__ import annotations

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
