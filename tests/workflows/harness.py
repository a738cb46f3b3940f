"""The fast tier's kit: a family's real workflows on the time-skipping server, activities mocked by name.

A mock is an `@activity.defn(name=...)` with the production activity's registered name and
payload models, so the workflow cannot tell it from the real one; it records what it was
asked and answers from the test's script. No database, no Twilio, no Stripe: seconds per test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor, Worker

from devtools import binaries, temporal_config
from schemas import search_attributes
from schemas.messaging import BatchItemOutcome, SendBatch, SendBatchResult, SendMessage, SendOutcome
from workers import families


async def each_as_sent(
    batch: SendBatch, send_message: Callable[[SendMessage], Awaitable[SendOutcome]]
) -> SendBatchResult:
    """A fake `send_messages`: each message as the fake `send_message` answers it, `max_in_flight`
    at a time, a permanent error as that message's `failed` outcome (as the real batch does)."""
    slots = asyncio.Semaphore(batch.max_in_flight)

    async def one(message: SendMessage) -> BatchItemOutcome:
        key = message.idempotency_key
        async with slots:
            try:
                outcome = await send_message(message)
            except ApplicationError as error:
                return BatchItemOutcome(idempotency_key=key, status="failed", reason=error.type)
        return BatchItemOutcome(
            idempotency_key=key,
            status=outcome.status,
            duplicate=outcome.duplicate,
            reason=outcome.reason,
            retry_at=outcome.retry_at,
        )

    return SendBatchResult(outcomes=await asyncio.gather(*(one(m) for m in batch.messages)))


@asynccontextmanager
async def family_worker(
    env: WorkflowEnvironment, task_queue: str, family: str, activities: Sequence[Callable[..., Any]]
) -> AsyncIterator[Worker]:
    """One worker on `task_queue` with the family's registered workflows and the given mocks.

    Tests point the workflow's messaging queue at `task_queue` too, so one worker serves both.
    A test that fails mid-way leaves its workflow running with activities nobody will pick up,
    which would hold the session's time-skipping server still for every later test: those runs
    are terminated on the way out.
    """
    runs = _RunsSeen()
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=families.by_name(family).workflows(),
        activities=activities,
        interceptors=[runs],
    ) as worker:
        try:
            yield worker
        except BaseException:
            await runs.terminate_running(env)
            raise


class _RunsSeen(Interceptor):
    """Remembers the workflow runs whose activities this worker executed."""

    def __init__(self) -> None:
        self.runs: set[tuple[str, str]] = set()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        runs = self.runs

        class Record(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:
                info = activity.info()
                runs.add((info.workflow_id or "", info.workflow_run_id or ""))
                return await super().execute_activity(input)

        return Record(next)

    async def terminate_running(self, env: WorkflowEnvironment) -> None:
        for workflow_id, run_id in self.runs:
            handle = env.client.get_workflow_handle(workflow_id, run_id=run_id)
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("the test failed")


def started_at() -> datetime:
    """When the running attempt started, on the server's (skipped) clock: for a retry, after its back-off."""
    return activity.info().started_time


async def task_failures(handle: WorkflowHandle[Any, Any]) -> int:
    """WORKFLOW_TASK_FAILED events in the history: bad input must never produce one."""
    history = await handle.fetch_history()
    return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)


async def eventually(check: Callable[[], Awaitable[bool]], *, attempts: int = 200) -> None:
    """Poll `check` until it holds (the workflow reached a point the test waits for)."""
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the workflow never reached the expected point")


async def start_short_history_env(suggest_continue_as_new_at: int) -> WorkflowEnvironment:
    """A dev server that suggests continue-as-new after `suggest_continue_as_new_at` history events
    (Temporal's default is 4,096), so a test sees a long loop outgrow its history in seconds."""
    return await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binaries.temporal_cli(),
        search_attributes=search_attributes.ALL,
        dev_server_extra_args=temporal_config.dev_server_args(
            **{"limit.historyCount.suggestContinueAsNew": str(suggest_continue_as_new_at)}
        ),
    )
