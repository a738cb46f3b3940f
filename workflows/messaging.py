"""Sending from workflows: the activity options every job uses, deferred delivery, and a batch workflow.

Sends run on the `messaging` task queue, whose workers carry Temporal's task-queue rate
limit; a workflow bounds how many it has in flight so a big batch never floods the queue.

Jobs that message many recipients at once (a batch, a day's reminders, guardrail notices) send
them `BATCH_SIZE` to a `send_messages` activity: each message is still exactly-once under its own
key and paced by the cluster's rate, which the send path enforces per message (`messaging_pace`),
so Temporal's cost per message falls a hundredfold while the limit holds. A single message (a
nudge, an order's follow-up) is one `send_message`.

A message held back for later (quiet hours, the emergency brake) comes back `deferred` with
`retry_at`. `deliver` then sleeps on a durable timer in the asking workflow until then and sends
again under the same idempotency key: the wait survives worker restarts and deploys (it is a
timer in the workflow's history, not state in a process), and the job that asked learns the
outcome where it asked, so it can do its own bookkeeping (a reminder marked, a nudge recorded).

Every send names its kind (`MessageKind`), and `message_priority` alone turns that into the
activity task's Temporal priority: a person waiting on the other end (a HELP reply, an operator's
nudge, a payment or pause notice, an order's messages) goes ahead of bulk (a reminders day, the
weekly insights, automatic churn nudges) wherever both wait in the `messaging` backlog, and a
fairness key per company (per job where there is no tenant) shares each level between them, so
one company's burst never queues another's nudges behind it (docs/ARCHITECTURE.md, "Priority").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol, get_args

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from schemas.messaging import (
        BatchItemOutcome,
        MessageBatch,
        MessageBatchResult,
        MessageKind,
        SendBatch,
        SendBatchResult,
        SendMessage,
        SendOutcome,
    )

MESSAGING_QUEUE = "messaging"

MESSAGE_PRIORITY: dict[str, int] = {
    # Interactive: someone is waiting for this one.
    "help_reply": 1,  # a recipient just wrote HELP
    "manual_nudge": 1,  # an operator pressed "nudge"
    "credit_notice": 2,  # payment recorded, credit paused or resumed (guardrails, an admin)
    "order_notice": 2,  # an order's follow-up or failure
    # Bulk: a job's many messages, none of which anyone is watching for.
    "churn_nudge": 4,  # a case's automatic cadence
    "reminder": 5,  # a reminders day
    "insight": 5,  # the weekly insights
    "broadcast": 5,  # `MessageBatchWorkflow` (a backfill, a broadcast)
}
"""Temporal task priority per kind: 1 runs first, 5 last (the server's default levels; unset is 3)."""
FAIRNESS_KEY_MAX = 64
"""Temporal's limit on a fairness key's length (bytes; company ids are ASCII slugs)."""
assert set(MESSAGE_PRIORITY) == set(get_args(MessageKind))


def message_priority(kind: MessageKind, *, tenant: str | None = None, weight: float | None = None) -> Priority:
    """The activity task priority of a `kind` of send: its level from `MESSAGE_PRIORITY`, and a
    fairness key that shares the level between tenants (the churn case's company, weighted by
    `company_weight`), or between jobs where there is no tenant (a reminders day and the weekly
    insights at level 5). Keys carry company ids and kinds only: never a phone number or a name."""
    key = company_key(tenant) if tenant else kind
    return Priority(priority_key=MESSAGE_PRIORITY[kind], fairness_key=key, fairness_weight=weight)


def company_key(company_id: str) -> str:
    return f"company:{company_id}"[:FAIRNESS_KEY_MAX]


WEIGHT_SCALE = 1000.0
"""`company_weight` of a company with this many open cases is 1.0 (Temporal's default weight)."""
WEIGHT_MIN, WEIGHT_MAX = 0.001, 1000.0
"""The server clamps fairness weights to this range."""


def company_weight(open_cases: int) -> float:
    """A company's fairness weight: the inverse of its open churn cases (how much bulk it can have
    due at once). While several companies' nudges wait for the rate, each gets a share inverse to
    its size: a small company's few nudges go out at nearly the full rate beside a big company's
    burst, and the burst waits only for those few. With equal weights a small company beside a
    burst 20 times its own got half the rate (2x its time alone); weighted, 20/21 of it
    (docs/ARCHITECTURE.md, "Priority")."""
    return min(WEIGHT_MAX, max(WEIGHT_MIN, WEIGHT_SCALE / max(1, open_cases)))


def company_priority(company_id: str, weight: float | None = None) -> Priority:
    """A company's workflow (a churn case): its workflow tasks share the `jobs` queue fairly with
    other companies' at the default level, so a burst of one company's cases (a cadence tick) never
    holds up another's, weighed by `company_weight` as the case opens; its sends set their own
    level and weight (`message_priority`)."""
    return Priority(fairness_key=company_key(company_id), fairness_weight=weight)


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
    maximum_attempts=360,  # and the 6-hour schedule-to-close deadline of every send
    non_retryable_error_types=PERMANENT_ERRORS,
)


async def send_message(
    message: SendMessage,
    *,
    kind: MessageKind,
    tenant: str | None = None,
    weight: float | None = None,
    task_queue: str = MESSAGING_QUEUE,
) -> SendOutcome:
    return await workflow.execute_activity(
        "send_message",
        message,
        result_type=SendOutcome,
        task_queue=task_queue,
        # Twilio answers within the SDK's 5 s timeout; a worker that died is noticed after 15 s.
        start_to_close_timeout=timedelta(seconds=15),
        schedule_to_close_timeout=timedelta(hours=6),
        retry_policy=SEND_RETRY,
        priority=message_priority(kind, tenant=tenant, weight=weight),
        summary=f"send {message.template} ({message.idempotency_key})",
    )


DEFERRED_DELIVERY_PATCH = "messages-deferred-delivery"
"""Deprecated (docs/ARCHITECTURE.md, §4 "Patches"): `deliver` is used by churn cases, which live months."""
MIN_HOLD = timedelta(seconds=1)


async def deliver(
    message: SendMessage,
    *,
    kind: MessageKind,
    tenant: str | None = None,
    weight: float | None = None,
    task_queue: str = MESSAGING_QUEUE,
    on_deferred: Callable[[SendOutcome], Awaitable[None] | None] | None = None,
) -> SendOutcome:
    """`send_message`; a deferred message is sent again, same key, when its hold ends.

    Returns the final outcome (sent or suppressed; a permanent failure raises as ever). Each
    deferral is reported to `on_deferred` before the wait, so the caller can show it.
    """
    outcome = await send_message(message, kind=kind, tenant=tenant, weight=weight, task_queue=task_queue)
    while outcome.status == "deferred" and outcome.retry_at:
        workflow.deprecate_patch(DEFERRED_DELIVERY_PATCH)  # where `patched` was: open runs carry its marker
        if on_deferred is not None and (pending := on_deferred(outcome)) is not None:
            await pending
        await workflow.sleep(
            max(outcome.retry_at - workflow.now(), MIN_HOLD),
            summary=f"{outcome.reason}: hold {message.idempotency_key}",
        )
        outcome = await send_message(message, kind=kind, tenant=tenant, weight=weight, task_queue=task_queue)
    return outcome


BATCH_SIZE = 100
"""Messages per `send_messages` activity: one Temporal action per hundred messages."""
BATCH_IN_FLIGHT = 25
"""Sends outstanding inside one batch activity (several batches run side by side)."""
HOLD_GROUPING = timedelta(seconds=5)
"""Held messages whose holds end this close together wait on one timer and go in one batch."""
SEND_BATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=360,  # and the 6-hour schedule-to-close deadline of every batch
)
"""Permanent failures are per-message outcomes, so every failure of the activity itself is worth a retry."""
SEND_HEARTBEAT = timedelta(seconds=15)
"""A batch heartbeats as its messages go out (at most every second, `send.BEAT_EVERY`), and a wait
for a send slot beats every third of this: a dead worker's batch is retried 15 s after its last
beat. Above the Twilio client's 10 s timeout, so a stalled
call alone never ends a live attempt (it was 30 s: every killed pod cost its batches 30 s)."""


async def send_batch(
    messages: Sequence[SendMessage],
    *,
    max_in_flight: int,
    task_queue: str,
    kind: MessageKind,
    tenant: str | None = None,
) -> list[BatchItemOutcome]:
    """One `send_messages` activity; outcomes in input order (deferred ones carry `retry_at`)."""
    result = await workflow.execute_activity(
        "send_messages",
        SendBatch(messages=list(messages), max_in_flight=max_in_flight),
        result_type=SendBatchResult,
        task_queue=task_queue,
        start_to_close_timeout=timedelta(minutes=10),
        heartbeat_timeout=SEND_HEARTBEAT,
        schedule_to_close_timeout=timedelta(hours=6),
        retry_policy=SEND_BATCH_RETRY,
        priority=message_priority(kind, tenant=tenant),
        summary=f"send {len(messages)} messages ({messages[0].idempotency_key} ...)",
    )
    return result.outcomes


def batch_lanes(max_in_flight: int) -> asyncio.Semaphore:
    """The batches that may run at once so that at most `max_in_flight` sends are outstanding.
    Share one between several `send_batches` calls to keep the bound over all of them."""
    return asyncio.Semaphore(max(1, max_in_flight // min(max_in_flight, BATCH_IN_FLIGHT)))


async def send_batches(
    messages: Sequence[SendMessage],
    *,
    max_in_flight: int,
    kind: MessageKind,
    tenant: str | None = None,
    task_queue: str = MESSAGING_QUEUE,
    on_batch: Callable[[Sequence[SendMessage], list[BatchItemOutcome]], None] | None = None,
    lanes: asyncio.Semaphore | None = None,
) -> list[BatchItemOutcome]:
    """Every message once, `BATCH_SIZE` to an activity and at most `max_in_flight` sends
    outstanding over all the batches; outcomes in input order, deferred ones included.
    `on_batch` sees each batch's outcomes as it ends (for a live status). `lanes` (from
    `batch_lanes(max_in_flight)`) when the bound holds over several calls at once: a batch of the
    next call then starts as soon as one of this call's ends, not after its last."""
    per_batch = min(max_in_flight, BATCH_IN_FLIGHT)
    if lanes is None:
        lanes = batch_lanes(max_in_flight)

    async def one(chunk: Sequence[SendMessage]) -> list[BatchItemOutcome]:
        async with lanes:
            outcomes = await send_batch(chunk, max_in_flight=per_batch, task_queue=task_queue, kind=kind, tenant=tenant)
        if on_batch is not None:
            on_batch(chunk, outcomes)
        return outcomes

    chunks = [messages[i : i + BATCH_SIZE] for i in range(0, len(messages), BATCH_SIZE)]
    return [outcome for outcomes in await asyncio.gather(*(one(c) for c in chunks)) for outcome in outcomes]


def hold_groups(held: list[tuple[datetime, int]]) -> list[tuple[datetime, list[int]]]:
    """(retry_at, position) pairs as groups whose holds end within `HOLD_GROUPING` of the group's
    first: each group waits on one timer, until its last hold ends, and goes out as one batch."""
    groups: list[tuple[datetime, list[datetime], list[int]]] = []  # (first, [last], positions)
    for retry_at, position in sorted(held):
        if groups and retry_at - groups[-1][0] <= HOLD_GROUPING:
            groups[-1][1][0] = retry_at
            groups[-1][2].append(position)
        else:
            groups.append((retry_at, [retry_at], [position]))
    return [(last[0], members) for _, last, members in groups]


async def deliver_all(
    messages: Sequence[SendMessage],
    *,
    max_in_flight: int,
    kind: MessageKind,
    tenant: str | None = None,
    task_queue: str = MESSAGING_QUEUE,
    on_done: Callable[[SendMessage, BatchItemOutcome], None] | None = None,
    on_deferred: Callable[[SendMessage, BatchItemOutcome], None] | None = None,
) -> list[BatchItemOutcome]:
    """`send_batches`, then each group of held messages again, same keys, when its hold ends
    (a durable timer); final outcomes (sent, suppressed, failed) in input order."""
    final: dict[int, BatchItemOutcome] = {}

    def settle(positions: Sequence[int], outcomes: list[BatchItemOutcome]) -> list[tuple[datetime, int]]:
        held = []
        for position, outcome in zip(positions, outcomes, strict=True):
            if outcome.status == "deferred" and outcome.retry_at:
                held.append((outcome.retry_at, position))
                if on_deferred is not None:
                    on_deferred(messages[position], outcome)
            else:
                final[position] = outcome
                if on_done is not None:
                    on_done(messages[position], outcome)
        return held

    def send(batch: Sequence[SendMessage]) -> Awaitable[list[BatchItemOutcome]]:
        return send_batches(batch, max_in_flight=max_in_flight, kind=kind, tenant=tenant, task_queue=task_queue)

    held = settle(range(len(messages)), await send(messages))
    while held:
        until, group = hold_groups(held)[0]
        going = set(group)
        held = [h for h in held if h[1] not in going]
        await workflow.sleep(max(until - workflow.now(), MIN_HOLD), summary=f"hold {len(group)} messages")
        outcomes = await send([messages[p] for p in group])
        held += settle(group, outcomes)
    return [final[p] for p in range(len(messages))]


class SendCounts(Protocol):
    """What a job counts of its sends (`RemindersStatus`, `MessageBatchResult`)."""

    sent: int
    duplicates: int
    failed: dict[str, int]


def tally(counts: SendCounts, held_back: dict[str, int], outcome: BatchItemOutcome) -> bool:
    """Count one message's final outcome: a new send in `sent`, one that went out before under its
    key in `duplicates`, a permanent failure in `failed` by error type, a message the outbox held
    back (opted out, daily cap, ...) in `held_back` by reason. True if it went out, now or before."""
    if outcome.status == "sent":
        if outcome.duplicate:
            counts.duplicates += 1
        else:
            counts.sent += 1
        return True
    into = counts.failed if outcome.status == "failed" else held_back
    reason = outcome.reason or outcome.status
    into[reason] = into.get(reason, 0) + 1
    return False


def permanent_failure(error: BaseException) -> str | None:
    """The error type of a send that failed for good (None for anything else)."""
    if isinstance(error, ActivityError) and isinstance(error.cause, ApplicationError):
        return error.cause.type
    return None


@workflow.defn(sandboxed=False)
class MessageBatchWorkflow:
    """Send a batch of messages (a broadcast, a backfill) and report what happened to each.

    Runs outside the sandbox: a batch schedules thousands of sends, and in the sandbox the SDK
    compiles and runs a snippet inside it for each payload it visits, to fetch the serialization
    context, a cost paid on every send (docs/BENCHMARKS.md, messaging). What the
    sandbox would catch is held as for the other unsandboxed workflows (tests/unit/
    test_workflow_determinism.py, the import rules, the replay tests)."""

    def __init__(self) -> None:
        self._result = MessageBatchResult()
        self._waiting: set[str] = set()

    @workflow.run
    async def run(self, batch: MessageBatch) -> MessageBatchResult:
        workflow.set_current_details(f"sending {len(batch.messages)} messages")
        await deliver_all(
            batch.messages,
            max_in_flight=batch.max_in_flight,
            kind=batch.kind,
            tenant=batch.tenant,
            task_queue=batch.task_queue,
            on_done=self._count,
            on_deferred=self._held,
        )
        return self._result

    def _held(self, message: SendMessage, outcome: BatchItemOutcome) -> None:
        """Deferred: shown as waiting until the message's final outcome arrives."""
        self._waiting.add(message.idempotency_key)
        self._result.deferred = len(self._waiting)

    def _count(self, message: SendMessage, outcome: BatchItemOutcome) -> None:
        result = self._result
        if message.idempotency_key in self._waiting:
            self._waiting.discard(message.idempotency_key)
            result.deferred = len(self._waiting)
            result.delivered_after_hold += outcome.status == "sent"
        if outcome.status == "deferred":  # deferred with no end to wait for: shown as held
            result.deferred += 1
        else:
            tally(result, result.suppressed, outcome)

    @workflow.query
    def status(self) -> MessageBatchResult:
        return self._result
