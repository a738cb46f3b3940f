"""Sending from workflows: the activity options every job uses, and a batch workflow.

Sends run on the `messaging` task queue, whose workers carry Temporal's task-queue rate
limit; a workflow bounds how many it has in flight so a big batch never floods the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from schemas.messaging import MessageBatch, MessageBatchResult, SendMessage, SendOutcome

MESSAGING_QUEUE = "messaging"
PERMANENT_ERRORS = [
    "InvalidRecipient",
    "InvalidSender",
    "RecipientOptedOut",
    "UnknownRecipient",
    "UnknownTemplate",
    "InvalidTemplateParams",
    "ProviderRejected",
]
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=PERMANENT_ERRORS,
)


async def send_message(message: SendMessage, *, task_queue: str = MESSAGING_QUEUE) -> SendOutcome:
    return await workflow.execute_activity(
        "send_message",
        message,
        result_type=SendOutcome,
        task_queue=task_queue,
        # Twilio answers within the SDK's 5 s timeout; a worker that died is noticed after 15 s.
        start_to_close_timeout=timedelta(seconds=15),
        schedule_to_close_timeout=timedelta(hours=6),
        retry_policy=SEND_RETRY,
        summary=f"send {message.template} ({message.idempotency_key})",
    )


def permanent_failure(error: BaseException) -> str | None:
    """The error type of a send that failed for good (None for anything else)."""
    if isinstance(error, ActivityError) and isinstance(error.cause, ApplicationError):
        return error.cause.type
    return None


async def send_all(
    messages: Iterable[SendMessage],
    *,
    max_in_flight: int,
    task_queue: str = MESSAGING_QUEUE,
    on_done: Callable[[SendOutcome | BaseException], None] | None = None,
) -> list[SendOutcome | BaseException]:
    """Send every message with at most `max_in_flight` outstanding; results in input order."""
    slots = asyncio.Semaphore(max_in_flight)

    async def one(message: SendMessage) -> SendOutcome | BaseException:
        async with slots:
            try:
                outcome: SendOutcome | BaseException = await send_message(message, task_queue=task_queue)
            except ActivityError as error:
                outcome = error
        if on_done:
            on_done(outcome)
        return outcome

    return await asyncio.gather(*(one(m) for m in messages))


@workflow.defn
class MessageBatchWorkflow:
    """Send a batch of messages (a broadcast, a backfill) and report what happened to each."""

    def __init__(self) -> None:
        self._result = MessageBatchResult()

    @workflow.run
    async def run(self, batch: MessageBatch) -> MessageBatchResult:
        workflow.set_current_details(f"sending {len(batch.messages)} messages")
        await send_all(
            batch.messages, max_in_flight=batch.max_in_flight, task_queue=batch.task_queue, on_done=self._count
        )
        return self._result

    def _count(self, outcome: SendOutcome | BaseException) -> None:
        result = self._result
        if isinstance(outcome, BaseException):
            kind = permanent_failure(outcome) or type(outcome).__name__
            result.failed[kind] = result.failed.get(kind, 0) + 1
        elif outcome.status == "sent":
            result.duplicates += outcome.duplicate
            result.sent += not outcome.duplicate
        elif outcome.status == "suppressed":
            reason = outcome.reason or "unknown"
            result.suppressed[reason] = result.suppressed.get(reason, 0) + 1
        else:
            result.deferred += 1

    @workflow.query
    def status(self) -> MessageBatchResult:
        return self._result
