"""The message batch's decisions in seconds: what happened to each message, and how many were in flight."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from schemas.messaging import MessageBatch, MessageBatchResult, SendMessage, SendOutcome
from tests.workflows.harness import family_worker, task_failures


def message(key: str) -> SendMessage:
    return SendMessage(idempotency_key=key, recipient_type="customer", recipient_id="17", template="broadcast")


@dataclass
class FakeGateway:
    """`send_message` by its registered name: answers by idempotency key, counts sends in flight."""

    answers: dict[str, SendOutcome | str] = field(default_factory=dict)
    """key -> the outcome, or the permanent error type to raise."""
    sent: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    @activity.defn(name="send_message")
    async def send_message(self, request: SendMessage) -> SendOutcome:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)  # long enough for the other sends in flight to start
            self.sent.append(request.idempotency_key)
            answer = self.answers.get(request.idempotency_key, SendOutcome(status="sent", provider_sid="SM1"))
            if isinstance(answer, str):
                raise ApplicationError(f"{request.idempotency_key}: {answer}", type=answer, non_retryable=True)
            return answer
        finally:
            self.in_flight -= 1


async def send_batch(env: WorkflowEnvironment, task_queue: str, fake: FakeGateway, batch: MessageBatch) -> MessageBatchResult:
    async with family_worker(env, task_queue, "messaging", [fake.send_message]):
        handle = await env.client.start_workflow(
            "MessageBatchWorkflow", batch, id=f"message-batch/{uuid.uuid4().hex}", task_queue=task_queue,
            result_type=MessageBatchResult,
        )
        result = await handle.result()
        assert await task_failures(handle) == 0
        return result


async def test_a_batch_reports_what_happened_to_every_message(time_skipping_env: WorkflowEnvironment, task_queue: str) -> None:
    fake = FakeGateway(
        answers={
            "b:2": SendOutcome(status="sent", provider_sid="SM0", duplicate=True),
            "b:3": SendOutcome(status="suppressed", reason="opted_out"),
            "b:4": SendOutcome(status="suppressed", reason="opted_out"),
            "b:5": SendOutcome(status="suppressed", reason="daily_cap"),
            "b:6": SendOutcome(status="deferred", reason="quiet_hours"),
            "b:7": "InvalidRecipient",
            "b:8": "UnknownTemplate",
        }
    )
    batch = MessageBatch(messages=[message(f"b:{n}") for n in range(1, 9)], task_queue=task_queue)
    result = await send_batch(time_skipping_env, task_queue, fake, batch)

    assert sorted(fake.sent) == [f"b:{n}" for n in range(1, 9)]  # a permanent failure is not retried
    assert result == MessageBatchResult(
        sent=1,
        duplicates=1,
        suppressed={"opted_out": 2, "daily_cap": 1},
        deferred=1,
        failed={"InvalidRecipient": 1, "UnknownTemplate": 1},
    )


async def test_a_batch_never_has_more_than_max_in_flight_sends_outstanding(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeGateway()
    batch = MessageBatch(messages=[message(f"m:{n}") for n in range(12)], max_in_flight=3, task_queue=task_queue)
    result = await send_batch(time_skipping_env, task_queue, fake, batch)

    assert result.sent == 12
    assert 1 <= fake.most_in_flight <= 3
