"""Business counters on the worker's Prometheus endpoint (METRICS_BIND)."""

from __future__ import annotations

import socket
import uuid

import aiohttp
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from config.settings import load_settings
from devtools.twilio_emulator import TwilioEmulator
from schemas.messaging import MessageBatch, SendMessage
from schemas.tables import Retailer
from workers.metrics import JobMetricsInterceptor
from workers.temporal_client import connect
from workflows.messaging import MessageBatchWorkflow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_messages_sent_total_counts_by_template_and_outcome(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    bind = f"127.0.0.1:{_free_port()}"
    client = await connect(
        load_settings(temporal_address=dev_env.client.service_client.config.target_host, metrics_bind=bind)
    )
    async with engine.begin() as conn:
        with_phone = await conn.scalar(insert(Retailer).values(name="A", phone="+15551110001").returning(Retailer.id))
        without = await conn.scalar(insert(Retailer).values(name="B", phone=None).returning(Retailer.id))
    batch = MessageBatch(
        messages=[
            SendMessage(
                idempotency_key=f"m:{r}", recipient_type="retailer", recipient_id=str(r), template="credit_resumed"
            )
            for r in (with_phone, without)
        ],
        task_queue=f"{task_queue}-msg",
    )
    async with TwilioEmulator() as emulator:
        gateway = TwilioGateway(
            twilio_client(emulator.url, emulator.account_sid, emulator.auth_token, async_client=True)
        )
        sends = MessagingActivities(
            engine, gateway, Senders("whatsapp:+15005550006", "+15005550006"), SendPolicy(quiet_hours=QuietHours(0, 0))
        )
        async with (
            Worker(
                client, task_queue=task_queue, workflows=[MessageBatchWorkflow], interceptors=[JobMetricsInterceptor()]
            ),
            Worker(client, task_queue=batch.task_queue, activities=[sends.send_message, sends.send_messages]),
        ):
            await client.execute_workflow(
                MessageBatchWorkflow.run, batch, id=f"batch/{uuid.uuid4()}", task_queue=task_queue
            )
        await gateway.close()

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{bind}/metrics") as response:
            metrics = await response.text()
    lines = [line for line in metrics.splitlines() if line.startswith("messages_sent_total{")]
    assert any(
        'outcome="sent"' in line and 'template="credit_resumed"' in line and line.endswith(" 1") for line in lines
    ), lines
    assert any('outcome="suppressed"' in line and line.endswith(" 1") for line in lines), lines
    # Every workflow run's duration, by type and outcome (buckets sized for jobs, not RPCs).
    assert "job_duration_count{" in metrics and 'workflow_type="MessageBatchWorkflow"' in metrics
    durations = [line for line in metrics.splitlines() if line.startswith("job_duration_count{")]
    assert any('outcome="completed"' in line and line.endswith(" 1") for line in durations), durations
    assert any('le="86400000"' in line for line in metrics.splitlines() if line.startswith("job_duration_bucket{"))
    assert "temporal_activity_execution_latency" in metrics or "temporal_" in metrics


async def test_reminders_sent_total_counts_each_reminder_once(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, gateway: TwilioGateway, stripe_api, task_queue: str
) -> None:
    from datetime import date, timedelta

    from schemas.credit import RemindersRequest
    from tests.activities.test_credit import credit_workers, new_debit, new_retailer
    from workflows.credit import PaymentRemindersWorkflow

    bind = f"127.0.0.1:{_free_port()}"
    client = await connect(
        load_settings(temporal_address=dev_env.client.service_client.config.target_host, metrics_bind=bind)
    )
    day = date.today() + timedelta(days=900)
    for _ in range(2):
        shop, _phone = await new_retailer(engine)
        await new_debit(engine, shop, "10.00", day)
    async with credit_workers(client, engine, gateway, stripe_api, task_queue) as messaging:
        for run in range(2):  # the second run of the day sends nothing and counts nothing
            await client.execute_workflow(
                PaymentRemindersWorkflow.run,
                RemindersRequest(reminder_date=day, messaging_task_queue=messaging),
                id=f"payment-reminders/{day}-{run}-{uuid.uuid4().hex[:6]}",
                task_queue=task_queue,
            )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{bind}/metrics") as response:
            metrics = await response.text()
    lines = [line for line in metrics.splitlines() if line.startswith("reminders_sent_total")]
    assert lines and all(line.endswith(" 2") for line in lines), lines
    # Every call to Twilio, by provider and a bounded outcome (the error rate on-call alerts on).
    calls = [line for line in metrics.splitlines() if line.startswith("provider_requests_total{")]
    assert any('provider="twilio"' in line and 'outcome="ok"' in line for line in calls), calls
