"""A crash between Twilio accepting an SMS fallback and the outbox storing its sid: still one SMS.

The WhatsApp session is closed and the template has no approved WhatsApp version, so the send
falls back to SMS; the worker is killed as soon as Twilio accepted it. The restarted worker's
retry finds the dead attempt's lease over (it waited out the heartbeat timeout), then looks the
message up where it went (SMS, from the SMS sender) and finds it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioEmulator
from schemas.messaging import MessageBatch, SendMessage
from schemas.tables import MessageLog, Retailer
from tests.e2e.test_messaging_crash import ROOT, accepted, wait_until
from workflows.messaging import MessageBatchWorkflow


async def test_a_crash_after_an_sms_fallback_was_accepted_sends_one_sms(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, database_url: str, task_queue: str, tmp_path: Path
) -> None:
    phone = "+1555" + str(uuid.uuid4().int)[:7]
    async with engine.begin() as conn:
        rid = await conn.scalar(
            insert(Retailer).values(name="Ama Owusu", phone=phone, preferred_channel="whatsapp").returning(Retailer.id)
        )
    messaging_queue = f"{task_queue}-messaging"
    key = f"fallback-crash:{rid}"
    batch = MessageBatch(
        messages=[
            SendMessage(
                idempotency_key=key,
                recipient_type="retailer",
                recipient_id=str(rid),
                template="insight",
                params={"insight_message": "Your best seller this week: rice"},
            )
        ],
        task_queue=messaging_queue,
    )
    crash_file = tmp_path / "crash-after-accept"
    crash_file.touch()

    async with TwilioEmulator(whatsapp_session_closed=[phone]) as emulator:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
            "MESSAGING_TASK_QUEUE": messaging_queue,
            "TWILIO_API_BASE": emulator.url,
            "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
            # The shortest outbox lease allowed (twice the Twilio timeout): a killed attempt's messages
            # are free by the time its 15 s heartbeat timeout ends, not 5 s after (20 s, the default).
            "MESSAGE_LEASE_SECONDS": "10",
            "QUIET_HOURS_START": "0",
            "QUIET_HOURS_END": "0",
            "LOG_FORMAT": "json",
        }
        with open(tmp_path / "workers.log", "ab") as log:

            def start_worker() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.e2e.crash_after_accept",
                        str(crash_file),
                        "worker",
                        "--task-queue",
                        "messaging",
                    ],
                    env=env,
                    stdout=log,
                    stderr=log,
                    cwd=ROOT,
                )

            async with Worker(dev_env.client, task_queue=task_queue, workflows=[MessageBatchWorkflow]):
                handle = await dev_env.client.start_workflow(
                    MessageBatchWorkflow.run, batch, id=f"batch/{uuid.uuid4()}", task_queue=task_queue
                )
                worker = start_worker()
                try:
                    await wait_until(lambda: asyncio.sleep(0, worker.poll() is not None))
                    killed = worker.returncode
                    worker = start_worker()
                    result = await asyncio.wait_for(handle.result(), timeout=180)
                finally:
                    if worker.poll() is None:
                        worker.terminate()
                        worker.wait(timeout=30)
        sent = await accepted(emulator)

    assert killed == -9 and not crash_file.exists(), "the crash hook never fired"
    assert result.duplicates == 1 and not result.failed  # found after the restart, not sent again
    assert [m["to"] for m in sent] == [phone], "exactly one SMS, and no WhatsApp message"
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                select(MessageLog.status, MessageLog.channel, MessageLog.provider_sid).where(
                    MessageLog.idempotency_key == key
                )
            )
        ).one()
    assert stored == ("sent", "sms", sent[0]["sid"])
