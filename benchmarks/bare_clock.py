"""The floor for `benchmarks/orders.py`: a clock that does nothing but answer its start and sleep.

Started with update-with-start (USE_EXISTING), so a start counts once its first task has run, as
`benchmarks/orders.py` counts an order's clock once its first task has registered the row; with
none of our work (no database row, no local activity, no search attributes), its starts/s and
CPU per start are what Temporal itself costs on the machine.
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
