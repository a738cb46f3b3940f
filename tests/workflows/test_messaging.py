"""The message batch's decisions in seconds: what happened to each message, and how many were in flight."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from schemas.messaging import (
    MessageBatch,
    MessageBatchResult,
    SendBatch,
    SendBatchResult,
    SendMessage,
    SendOutcome,
)
from tests.workflows.harness import each_as_sent, family_worker, task_failures


def message(key: str) -> SendMessage:
    return SendMessage(idempotency_key=key, recipient_type="customer", recipient_id="17", template="broadcast")


@dataclass
class FakeGateway:
    """`send_message` and `send_messages` by their registered names: answers by idempotency key,
    counts sends in flight (over all batches) and the size of each batch."""

    answers: dict[str, SendOutcome | str | list[SendOutcome]] = field(default_factory=dict)
    """key -> the outcome, or the permanent error type to raise, or the outcomes of successive sends."""
    sent: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    batches: list[int] = field(default_factory=list)

    @activity.defn(name="send_message")
    async def send_message(self, request: SendMessage) -> SendOutcome:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)  # long enough for the other sends in flight to start
            self.sent.append(request.idempotency_key)
            answer = self.answers.get(request.idempotency_key, SendOutcome(status="sent", provider_sid="SM1"))
            if isinstance(answer, list):
                answer = answer.pop(0)
            if isinstance(answer, str):
                raise ApplicationError(f"{request.idempotency_key}: {answer}", type=answer, non_retryable=True)
            return answer
        finally:
            self.in_flight -= 1

    @activity.defn(name="send_messages")
    async def send_messages(self, batch: SendBatch) -> SendBatchResult:
        self.batches.append(len(batch.messages))
        return await each_as_sent(batch, self.send_message)


async def send_batch(
    env: WorkflowEnvironment, task_queue: str, fake: FakeGateway, batch: MessageBatch
) -> MessageBatchResult:
    async with family_worker(env, task_queue, "messaging", [fake.send_message, fake.send_messages]):
        handle = await env.client.start_workflow(
            "MessageBatchWorkflow",
            batch,
            id=f"message-batch/{uuid.uuid4().hex}",
            task_queue=task_queue,
            result_type=MessageBatchResult,
        )
        result = await handle.result()
        assert await task_failures(handle) == 0
        return result


async def test_a_batch_reports_what_happened_to_every_message(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
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


async def test_a_batch_sends_a_hundred_messages_per_activity(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    """One Temporal action per hundred messages, not per message."""
    fake = FakeGateway()
    batch = MessageBatch(messages=[message(f"h:{n}") for n in range(250)], max_in_flight=50, task_queue=task_queue)
    result = await send_batch(time_skipping_env, task_queue, fake, batch)

    assert result.sent == 250
    assert sorted(fake.batches) == [50, 100, 100]
    assert sorted(fake.sent) == sorted(f"h:{n}" for n in range(250))
    assert fake.most_in_flight <= 50


async def test_held_messages_of_a_batch_go_out_together_when_their_hold_ends(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    """Quiet hours end at 08:00 for a whole zone: those messages wait on one timer and go as one batch."""
    morning = datetime.now(UTC) + timedelta(hours=9)
    held = SendOutcome(status="deferred", reason="quiet_hours", retry_at=morning)
    fake = FakeGateway(answers={f"n:{n}": [held, SendOutcome(status="sent", provider_sid=f"SM{n}")] for n in range(3)})
    batch = MessageBatch(messages=[message(f"n:{n}") for n in range(5)], task_queue=task_queue)
    result = await send_batch(time_skipping_env, task_queue, fake, batch)

    assert result == MessageBatchResult(sent=5, delivered_after_hold=3)
    assert fake.batches == [5, 3]
