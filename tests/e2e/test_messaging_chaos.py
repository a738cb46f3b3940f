"""400 messages through a workflow while Twilio fails 20 % of creates and rate-limits at 50/s.

Each batch of a hundred is retried whole (its sent messages resumed from its heartbeat) with
exponential backoff until none fails: at 30 % that took six or seven attempts, two minutes of
backoff; 20 % still fails about a hundred creates."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from devtools.twilio_emulator import TwilioEmulator
from schemas.messaging import MessageBatch, SendMessage
from tests.factories import sms_retailers
from workflows.messaging import MessageBatchWorkflow

MESSAGES = 400
RATE = 50


@pytest_asyncio.fixture(loop_scope="session")
async def flaky_twilio() -> AsyncIterator[TwilioEmulator]:
    async with TwilioEmulator(fail_rate=0.2, rate_limit=RATE, seed=7) as emu:
        yield emu


async def test_chaos_every_message_exactly_once(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, flaky_twilio: TwilioEmulator, task_queue: str
) -> None:
    ids = await sms_retailers(engine, MESSAGES, area_code="444")
    batch = MessageBatch(
        messages=[
            SendMessage(
                idempotency_key=f"chaos:{rid}",
                recipient_type="retailer",
                recipient_id=str(rid),
                template="credit_resumed",
            )
            for rid in ids
        ],
        max_in_flight=200,
        task_queue=f"{task_queue}-messaging",
    )
    gateway = TwilioGateway(
        twilio_client(flaky_twilio.url, flaky_twilio.account_sid, flaky_twilio.auth_token, async_client=True)
    )
    sends = MessagingActivities(
        engine,
        gateway,
        Senders("whatsapp:+15005550006", "+15005550006"),
        SendPolicy(quiet_hours=QuietHours(0, 0)),
        per_second=RATE,
    )
    try:
        async with (
            Worker(dev_env.client, task_queue=task_queue, workflows=[MessageBatchWorkflow]),
            Worker(
                dev_env.client,
                task_queue=batch.task_queue,
                activities=[sends.send_message, sends.send_messages],
                max_task_queue_activities_per_second=RATE,
            ),
        ):
            result = await dev_env.client.execute_workflow(
                MessageBatchWorkflow.run, batch, id=f"batch/{uuid.uuid4()}", task_queue=task_queue
            )
    finally:
        await gateway.close()

    assert result.sent == MESSAGES and not result.failed
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{flaky_twilio.url}/_emulator/messages") as response:
            accepted = await response.json()
        async with http.get(f"{flaky_twilio.url}/_emulator/stats") as response:
            stats = await response.json()
    recipients = [m["to"] for m in accepted]
    assert len(accepted) == MESSAGES and len(set(recipients)) == MESSAGES, "a message was sent twice or lost"
    assert stats["faults"] > 60, "the chaos did not happen"
    async with engine.connect() as conn:
        statuses = dict(
            (
                await conn.execute(
                    text(
                        "SELECT status, count(*) FROM message_log WHERE idempotency_key LIKE 'chaos:%' GROUP BY status"
                    )
                )
            ).all()
        )
    assert statuses == {"sent": MESSAGES}
