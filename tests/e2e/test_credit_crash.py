"""A worker SIGKILLed in the middle of a 800-retailer reminder run: every due retailer is
messaged exactly once, and the run's counters agree with the Twilio emulator's log.

The worker is a real `jobctl worker` process (jobs and messaging queues) on the dev server, with
the Twilio emulator and the Stripe sandbox of this test module behind the real SDKs.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas.credit import RemindersRequest
from tests.conftest import STRIPE_TEST_KEY
from tests.e2e.test_insights_crash import WorkerProcess
from workflows.credit import PaymentRemindersWorkflow

RETAILERS = 800
DAY = date.today() + timedelta(days=3)

SEED = text(
    """
WITH shops AS (
    INSERT INTO retailers (name, phone, preferred_channel)
    SELECT 'Crash Shop ' || g, '+1561' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(1, :n) g
    RETURNING id
), accounts AS (
    INSERT INTO credit_accounts (retailer_id, available_credit) SELECT id, 50000 FROM shops
)
INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference)
SELECT id, 'DEBIT', 120, CAST(:day AS date), 'inv-' || id FROM shops
"""
)


async def accepted(emulator: TwilioEmulator) -> list[dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/messages") as response:
            return await response.json()


async def test_sigkill_mid_run_messages_every_due_retailer_exactly_once(
    engine: AsyncEngine,
    database_url: str,
    dev_env: WorkflowEnvironment,
    emulator: TwilioEmulator,
    sandbox: StripeSandbox,
    task_queue: str,
    tmp_path: Path,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(SEED, {"n": RETAILERS, "day": DAY})
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TASK_QUEUE": task_queue,
        "MESSAGING_TASK_QUEUE": f"{task_queue}-msg",
        "TWILIO_ACCOUNT_SID": emulator.account_sid,
        "TWILIO_AUTH_TOKEN": emulator.auth_token,
        "TWILIO_API_BASE": emulator.url,
        "STRIPE_SECRET_KEY": STRIPE_TEST_KEY,
        "STRIPE_API_BASE": sandbox.url,
        "PAY_PAGE_BASE_URL": "https://pay.example.test/p",
        "PUBLIC_BASE_URL": "https://jobctl.example.test",  # the reminders link to its /pay/{token}
        "MESSAGES_PER_SECOND": "400",
        "MESSAGE_DAILY_CAP": "100",
        # The shortest outbox lease allowed (twice the Twilio timeout): a killed attempt's messages
        # are free by the time its 15 s heartbeat timeout ends, not 5 s after (20 s, the default).
        "MESSAGE_LEASE_SECONDS": "10",
        "QUIET_HOURS_START": "0",
        "QUIET_HOURS_END": "0",
        "LOG_FORMAT": "json",
    }
    first = WorkerProcess(env, tmp_path / "worker-1.log", task_queue=None)
    second: WorkerProcess | None = None
    try:
        handle = await dev_env.client.start_workflow(
            PaymentRemindersWorkflow.run,
            RemindersRequest(reminder_date=DAY, page_size=250, messaging_task_queue=f"{task_queue}-msg"),
            id=f"payment-reminders/{DAY}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )
        deadline = time.monotonic() + 120
        while len(await accepted(emulator)) < 300:  # well into the run, mid-page
            assert time.monotonic() < deadline, "the run never got going"
            await asyncio.sleep(0.05)
        first.kill()
        at_kill = len(await accepted(emulator))
        assert at_kill < RETAILERS, "the kill must land in the middle of the run"

        second = WorkerProcess(env, tmp_path / "worker-2.log", task_queue=None)
        status = await asyncio.wait_for(handle.result(), timeout=240)
    finally:
        first.stop()
        if second:
            second.stop()

    messages = await accepted(emulator)
    per_phone = Counter(m["to"] for m in messages)
    assert len(per_phone) == RETAILERS and max(per_phone.values()) == 1, "a retailer was messaged twice"
    async with engine.connect() as conn:
        reminded = await conn.scalar(
            text("SELECT count(*) FROM credit_transactions WHERE due_date = :d AND reminder_count = 1"), {"d": DAY}
        )
        twice = await conn.scalar(text("SELECT count(*) FROM credit_transactions WHERE reminder_count > 1"))
    assert reminded == RETAILERS and twice == 0
    # The run's own counters agree with the emulator: what the killed attempt sent comes back as
    # duplicates from the outbox on the retry, never as a second message.
    assert status.sent + status.duplicates == RETAILERS == len(messages)
    assert status.due == RETAILERS and not status.failed and not status.skipped
