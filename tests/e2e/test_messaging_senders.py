"""A sender pool as deployed: a `jobctl worker --task-queue messaging` process set up by
TWILIO_SMS_SENDERS and SENDER_STICKY, batches through MessageBatchWorkflow, and an emulator in its
own process that limits each sender number as Twilio does (one of them at a rate of its own).

Counts only, no timing asserts: each message once, from a pool number, a recipient's messages from
the same number in both rounds, and the per-number limits kept (no 429 beyond the burst's jitter).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.messaging.senders import recipient_key, rendezvous
from config.settings import load_settings
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from schemas.messaging import MessageBatch, SendMessage
from tests.e2e.emulator_process import ROOT, twilio_emulator_process
from tests.e2e.test_messaging_crash import wait_until
from tests.e2e.test_messaging_rate_limit import JOBCTL, pollers
from tests.factories import sms_retailers
from workers.families.messaging import sender_pools
from workflows.messaging import MessageBatchWorkflow

POOL = "+15557770001:10,+15557770002:10,+15557770003:5"  # msg/s each, at the emulator and in the pool
RETAILERS = 30


async def test_a_sticky_pool_sends_each_message_once_from_each_recipients_own_number(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, database_url: str, task_queue: str, tmp_path: Path
) -> None:
    ids = await sms_retailers(engine, RETAILERS, area_code="446")
    phones = {rid: f"+1446{n:07d}" for n, rid in enumerate(ids, start=1)}
    messaging_queue = f"{task_queue}-messaging"
    rounds = [
        MessageBatch(
            messages=[
                SendMessage(
                    idempotency_key=f"pool:{n}:{rid}",
                    recipient_type="retailer",
                    recipient_id=str(rid),
                    template="credit_resumed",
                )
                for rid in ids
            ],
            task_queue=messaging_queue,
        )
        for n in range(2)
    ]

    async with twilio_emulator_process(tmp_path, "--rate-limit", "10", "--sender-rate", "+15557770003:5") as twilio_url:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
            "MESSAGING_TASK_QUEUE": messaging_queue,
            "TWILIO_API_BASE": twilio_url,
            "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
            "TWILIO_SMS_SENDERS": POOL,
            "SENDER_STICKY": "true",
            "QUIET_HOURS_START": "0",
            "QUIET_HOURS_END": "0",
            "LOG_FORMAT": "json",
        }
        with open(tmp_path / "worker.log", "ab") as log:
            worker = subprocess.Popen(
                [JOBCTL, "worker", "--task-queue", "messaging"], env=env, stdout=log, stderr=log, cwd=ROOT
            )
            try:

                async def polling() -> bool:
                    assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
                    return await pollers(dev_env.client, messaging_queue) >= 1

                await wait_until(polling, timeout=60)
                async with Worker(dev_env.client, task_queue=task_queue, workflows=[MessageBatchWorkflow]):
                    results = [
                        await asyncio.wait_for(
                            dev_env.client.execute_workflow(
                                MessageBatchWorkflow.run, batch, id=f"pool/{uuid.uuid4()}", task_queue=task_queue
                            ),
                            timeout=120,
                        )
                        for batch in rounds
                    ]
            finally:
                worker.terminate()
                worker.wait(timeout=30)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{twilio_url}/_emulator/messages") as response:
                sent = await response.json()
            async with http.get(f"{twilio_url}/_emulator/stats") as response:
                stats = await response.json()

    assert [r.sent + r.duplicates for r in results] == [RETAILERS, RETAILERS]
    assert not any(r.failed or r.suppressed or r.deferred for r in results)
    assert Counter(m["to"] for m in sent) == {phone: 2 for phone in phones.values()}  # each message once
    pool = sender_pools(load_settings(twilio_sms_senders=POOL, sender_sticky=True)).pool("sms")
    froms: dict[str, set[str]] = {}
    for m in sent:
        froms.setdefault(m["to"], set()).add(m["from"])
    for rid, phone in phones.items():  # both rounds from the recipient's own number, the same on every worker
        assert froms[phone] == {rendezvous(pool, recipient_key("retailer", str(rid))).address}
    assert {m["from"] for m in sent} == {"+15557770001", "+15557770002", "+15557770003"}
    assert stats["rate_limited"] <= 1  # each number paced under its own limit (a jittered slot at most)
