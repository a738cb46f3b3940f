"""`messaging-brake`: the emergency brake in the Temporal Web UI.

A long-lived singleton whose signals an operator sends from the UI (or any client):
`pause {"reason", "actor"}` and `resume {"actor"}`; the `status` query shows the brake as the
workflow last read it. The handlers write the same `messaging_brake` row as
`jobctl messaging pause|resume`: that row stays the one source of truth the outbox's claim reads,
and this workflow is only a door to it (the CLI's `status` reads the row itself, so it also
shows a change made from the other door).

A malformed signal (no reason, no actor, not an object) fails to convert and the SDK drops it
with a warning: it changes nothing and never fails a workflow task.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

from workflows._common import DB_TIMEOUT, db_retry

with workflow.unsafe.imports_passed_through():
    from activities.messaging.brake import BrakeActivities
    from schemas.messaging import BrakeChange, BrakePause, BrakeResume, BrakeView

BRAKE_WORKFLOW_ID = "messaging-brake"


@workflow.defn
class MessagingBrakeWorkflow:
    def __init__(self) -> None:
        self._view = BrakeView()
        self._applying = asyncio.Lock()  # signals apply in the order they arrived

    @workflow.run
    async def run(self, view: BrakeView | None = None) -> None:
        self._view = view or self._view
        workflow.set_current_details(self._details())
        await workflow.wait_condition(
            lambda: workflow.info().is_continue_as_new_suggested() and workflow.all_handlers_finished()
        )
        workflow.continue_as_new(self._view)

    @workflow.signal
    async def pause(self, request: BrakePause) -> None:
        """Hold every outbound message as `deferred` (reason `paused`) until `resume`."""
        await self._apply(BrakeChange(paused=True, reason=request.reason.strip(), actor=request.actor.strip()))

    @workflow.signal
    async def resume(self, request: BrakeResume) -> None:
        """Release the brake: the held messages go out as their jobs try them again."""
        reason = (request.reason or "").strip() or None
        await self._apply(BrakeChange(paused=False, reason=reason, actor=request.actor.strip()))

    @workflow.query
    def status(self) -> BrakeView:
        return self._view

    async def _apply(self, change: BrakeChange) -> None:
        async with self._applying:
            self._view = await workflow.execute_activity_method(
                BrakeActivities.set_messaging_brake,
                change,
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=db_retry(),
                summary=f"{'pause' if change.paused else 'resume'} messaging ({change.actor})",
            )
        workflow.set_current_details(self._details())

    def _details(self) -> str:
        view = self._view
        if view.paused:
            return f'**paused** by {view.actor}: {view.reason}. Signal `resume` {{"actor": ...}} to release.'
        return 'sending. Signal `pause` {"reason": ..., "actor": ...} to hold every outbound message.'
