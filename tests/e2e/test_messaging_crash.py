"""Messaging workers SIGKILLed twice mid-batch (once between Twilio accepting and the
sid being stored): still exactly one message per key at Twilio."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioEmulator
from schemas.messaging import MessageBatch, SendMessage
from tests.factories import sms_retailers
from workflows.messaging import MessageBatchWorkflow

MESSAGES = 400
ROOT = Path(__file__).resolve().parents[2]


async def accepted(emulator: TwilioEmulator) -> list[dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/messages") as response:
            return await response.json()


async def wait_until(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_sigkill_twice_still_one_message_per_key(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, database_url: str, task_queue: str, tmp_path: Path
) -> None:
    ids = await sms_retailers(engine, MESSAGES, area_code="333")
    messaging_queue = f"{task_queue}-messaging"
    crash_file = tmp_path / "crash-after-accept"
    batch = MessageBatch(
        messages=[
            SendMessage(
                idempotency_key=f"crash:{rid}",
                recipient_type="retailer",
                recipient_id=str(rid),
                template="credit_resumed",
            )
            for rid in ids
        ],
        max_in_flight=100,
        task_queue=messaging_queue,
    )

    async with TwilioEmulator() as emulator:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
            "MESSAGING_TASK_QUEUE": messaging_queue,
            "TWILIO_API_BASE": emulator.url,
            "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
            "MESSAGES_PER_SECOND": "150",
            # The shortest outbox lease allowed (twice the Twilio timeout): a killed attempt's messages
            # are free by the time its 15 s heartbeat timeout ends, not 5 s after (20 s, the default).
            "MESSAGE_LEASE_SECONDS": "10",
            "QUIET_HOURS_START": "0",
            "QUIET_HOURS_END": "0",
            "LOG_FORMAT": "json",
        }
        log = open(tmp_path / "workers.log", "ab")

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

        async def at_least(n: int) -> bool:
            return len(await accepted(emulator)) >= n

        kills = []
        async with Worker(dev_env.client, task_queue=task_queue, workflows=[MessageBatchWorkflow]):
            handle = await dev_env.client.start_workflow(
                MessageBatchWorkflow.run, batch, id=f"batch/{uuid.uuid4()}", task_queue=task_queue
            )
            worker = start_worker()
            try:
                await wait_until(lambda: at_least(40))
                crash_file.touch()  # the next send dies after Twilio accepted it
                await wait_until(lambda: asyncio.sleep(0, worker.poll() is not None))
                kills.append(worker.returncode)
                for threshold in (200,):  # each kill costs a heartbeat timeout (15 s) of waiting
                    worker = start_worker()
                    await wait_until(lambda t=threshold: at_least(t))
                    worker.send_signal(signal.SIGKILL)
                    kills.append(worker.wait())
                worker = start_worker()
                result = await asyncio.wait_for(handle.result(), timeout=180)
            finally:
                if worker.poll() is None:
                    worker.terminate()
                    worker.wait(timeout=30)
                log.close()
        sent = await accepted(emulator)

    assert kills == [-signal.SIGKILL] * 2
    assert not crash_file.exists(), "the crash hook never fired"
    assert result.sent + result.duplicates == MESSAGES and not result.failed
    recipients = [m["to"] for m in sent]
    assert len(recipients) == MESSAGES and len(set(recipients)) == MESSAGES, "a key was sent twice or never"
    async with engine.connect() as conn:
        statuses = dict(
            (
                await conn.execute(
                    text(
                        "SELECT status, count(*) FROM message_log WHERE idempotency_key LIKE 'crash:%' GROUP BY status"
                    )
                )
            ).all()
        )
    assert statuses == {"sent": MESSAGES}
