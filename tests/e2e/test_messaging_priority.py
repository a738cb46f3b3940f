"""Interactive messages ahead of bulk, and one company's burst shared with another's, on the dev
server as `jobctl dev` starts it (task priority and fairness on: devtools/temporal_config.py).

Each test first builds a backlog on a messaging queue nobody polls (every send's activity task
scheduled, read from the histories), then starts one messaging worker with a single activity
slot: the order in which the Twilio emulator receives the messages is the order in which Temporal
handed out the tasks. Order and counts only, never timings.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway
from devtools.twilio_emulator import TwilioEmulator
from schemas.messaging import MessageBatch, MessageKind, SendMessage
from tests.e2e.test_messaging_crash import wait_until
from tests.factories import sms_retailers
from workflows.messaging import MESSAGE_PRIORITY, MessageBatchWorkflow, company_weight, deliver

SENDERS = Senders(whatsapp="whatsapp:+15005550006", sms="+15005550006")
BULK = 6


def one_message(rid: int, key: str, queue: str, kind: MessageKind, tenant: str | None = None) -> MessageBatch:
    message = SendMessage(
        idempotency_key=f"{key}:{rid}", recipient_type="retailer", recipient_id=str(rid), template="credit_resumed"
    )
    return MessageBatch(messages=[message], task_queue=queue, kind=kind, tenant=tenant)


class CaseNudge(BaseModel):
    message: SendMessage
    company: str
    open_cases: int
    task_queue: str


@workflow.defn(name="TestCaseNudge", sandboxed=False)
class CaseNudgeWorkflow:
    """A churn case's automatic nudge as `ChurnCaseWorkflow._send` sends it: the company's key,
    weighted by the open cases `decide_nudge` counted."""

    @workflow.run
    async def run(self, nudge: CaseNudge) -> str:
        outcome = await deliver(
            nudge.message,
            kind="churn_nudge",
            tenant=nudge.company,
            weight=company_weight(nudge.open_cases),
            task_queue=nudge.task_queue,
        )
        return outcome.status


async def scheduled_priority(handle: WorkflowHandle) -> tuple[int, str] | None:
    """(priority_key, fairness_key) of the run's send activity once it is scheduled, else None."""
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            priority = event.activity_task_scheduled_event_attributes.priority
            return priority.priority_key, priority.fairness_key
    return None


async def start_and_wait_scheduled(
    client: Client, queue: str, batches: list[MessageBatch] | list[CaseNudge]
) -> list[tuple[int, str]]:
    """Start one batch (or case nudge) workflow each, in order, each once the one before has its
    send scheduled (so the backlog's order is the order given); the priorities the sends were
    scheduled with."""
    scheduled: list[tuple[int, str]] = []
    for batch in batches:
        if isinstance(batch, CaseNudge):
            handle = await client.start_workflow(
                CaseNudgeWorkflow.run, batch, id=f"priority/{uuid.uuid4()}", task_queue=queue
            )
        else:
            handle = await client.start_workflow(
                MessageBatchWorkflow.run, batch, id=f"priority/{uuid.uuid4()}", task_queue=queue
            )
        found: list[tuple[int, str]] = []

        async def seen(handle: WorkflowHandle = handle, found: list[tuple[int, str]] = found) -> bool:
            if (priority := await scheduled_priority(handle)) is not None:
                found.append(priority)
            return bool(found)

        await wait_until(seen, timeout=30)
        scheduled.append(found[0])
    return scheduled


@asynccontextmanager
async def one_slot_sender(
    client: Client, engine: AsyncEngine, gateway: TwilioGateway, queue: str
) -> AsyncIterator[None]:
    """A messaging worker that sends one message at a time: it takes the backlog's tasks one by one."""
    sends = MessagingActivities(engine, gateway, SENDERS, SendPolicy(quiet_hours=QuietHours(0, 0)))
    async with Worker(
        client, task_queue=queue, activities=[sends.send_message, sends.send_messages], max_concurrent_activities=1
    ):
        yield


async def arrival_order(emulator: TwilioEmulator, phones: dict[str, int], count: int) -> list[int]:
    """The retailer ids of the first `count` messages to `phones`, in the order the emulator accepted them."""

    async def accepted() -> list[dict]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{emulator.url}/_emulator/messages") as response:
                return [m for m in await response.json() if m["to"] in phones]

    await wait_until(lambda: _at_least(accepted, count), timeout=60)
    return [phones[m["to"]] for m in sorted(await accepted(), key=lambda m: m["accepted_at"])]


async def _at_least(accepted, count: int) -> bool:
    return len(await accepted()) >= count


async def phones_of(engine: AsyncEngine, ids: list[int]) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT phone, id FROM retailers WHERE id = ANY(:ids)"), {"ids": ids})
        return {phone: rid for phone, rid in rows}


async def test_an_interactive_message_overtakes_a_bulk_backlog(
    engine: AsyncEngine,
    dev_env: WorkflowEnvironment,
    emulator: TwilioEmulator,
    gateway: TwilioGateway,
    task_queue: str,
) -> None:
    client = dev_env.client
    messaging = f"{task_queue}-messaging"
    ids = await sms_retailers(engine, BULK + 1, area_code="471")
    bulk_ids, nudged = ids[:BULK], ids[BULK]
    phones = await phones_of(engine, ids)
    async with Worker(client, task_queue=task_queue, workflows=[MessageBatchWorkflow]):
        bulk = await start_and_wait_scheduled(
            client, task_queue, [one_message(rid, "insight", messaging, "insight") for rid in bulk_ids]
        )
        # Last into the backlog: a recipient who wrote HELP.
        (interactive,) = await start_and_wait_scheduled(
            client, task_queue, [one_message(nudged, "help", messaging, "help_reply")]
        )
        async with one_slot_sender(client, engine, gateway, messaging):
            order = await arrival_order(emulator, phones, BULK + 1)

    assert interactive == (MESSAGE_PRIORITY["help_reply"], "help_reply")
    assert bulk == [(MESSAGE_PRIORITY["insight"], "insight")] * BULK
    assert order[0] == nudged, "the HELP reply went out after bulk that was waiting before it"
    assert sorted(order[1:]) == sorted(bulk_ids)


async def test_a_small_companys_nudges_are_not_queued_behind_a_big_companys_burst(
    engine: AsyncEngine,
    dev_env: WorkflowEnvironment,
    emulator: TwilioEmulator,
    gateway: TwilioGateway,
    task_queue: str,
) -> None:
    client = dev_env.client
    messaging = f"{task_queue}-messaging"
    ids = await sms_retailers(engine, BULK + 2, area_code="472")
    big_ids, small_ids = ids[:BULK], ids[BULK:]
    phones = await phones_of(engine, ids)
    async with Worker(client, task_queue=task_queue, workflows=[MessageBatchWorkflow]):
        scheduled = await start_and_wait_scheduled(
            client,
            task_queue,
            [one_message(rid, "nudge", messaging, "churn_nudge", tenant="big-co") for rid in big_ids]
            + [one_message(rid, "nudge", messaging, "churn_nudge", tenant="small-co") for rid in small_ids],
        )
        async with one_slot_sender(client, engine, gateway, messaging):
            order = await arrival_order(emulator, phones, BULK + 2)

    level = MESSAGE_PRIORITY["churn_nudge"]
    assert scheduled == [(level, "company:big-co")] * BULK + [(level, "company:small-co")] * 2
    # In FIFO order the small company's two would go last (positions 7 and 8); shared fairly
    # between the two companies' keys, they go out beside the big company's first ones.
    positions = sorted(order.index(rid) for rid in small_ids)
    assert positions[-1] < BULK, f"the small company's nudges went out at {positions} of {order}"


async def test_a_small_companys_nudges_go_ahead_of_a_big_companys_burst_weighted_by_their_open_cases(
    engine: AsyncEngine,
    dev_env: WorkflowEnvironment,
    emulator: TwilioEmulator,
    gateway: TwilioGateway,
    task_queue: str,
) -> None:
    """Equal weights share the rate half and half (the test above); a churn case's send weighs the
    inverse of its company's open cases, so the small company's two go out before the burst."""
    client = dev_env.client
    messaging = f"{task_queue}-messaging"
    ids = await sms_retailers(engine, BULK + 2, area_code="473")
    big_ids, small_ids = ids[:BULK], ids[BULK:]
    phones = await phones_of(engine, ids)

    def nudge(rid: int, company: str, open_cases: int) -> CaseNudge:
        message = SendMessage(
            idempotency_key=f"nudge:{rid}", recipient_type="retailer", recipient_id=str(rid), template="credit_resumed"
        )
        return CaseNudge(message=message, company=company, open_cases=open_cases, task_queue=messaging)

    async with Worker(client, task_queue=task_queue, workflows=[CaseNudgeWorkflow]):
        await start_and_wait_scheduled(
            client,
            task_queue,
            [nudge(rid, "big-co", 20 * BULK) for rid in big_ids] + [nudge(rid, "small-co", 2) for rid in small_ids],
        )
        async with one_slot_sender(client, engine, gateway, messaging):
            order = await arrival_order(emulator, phones, BULK + 2)

    assert sorted(order[:2]) == sorted(small_ids), f"the small company's nudges went out at {order}"
    assert sorted(order[2:]) == sorted(big_ids)
