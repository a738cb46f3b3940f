"""The emergency brake on a real Temporal dev server: while paused nothing goes out, and a worker
restart in between loses nothing; once resumed every held message goes out exactly once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway
from devtools.twilio_emulator import TwilioEmulator
from schemas.messaging import MessageBatch, SendMessage
from services import messaging as brake
from tests.e2e.test_messaging_crash import accepted
from tests.factories import sms_retailers
from workflows.messaging import MessageBatchWorkflow

MESSAGES = 100
JOBCTL = str(Path(sys.executable).parent / "jobctl")


def jobctl(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")} | {"DATABASE_URL": database_url}
    return subprocess.run([JOBCTL, "messaging", *args], capture_output=True, text=True, env=env, timeout=60)


async def test_paused_nothing_goes_out_a_restart_loses_nothing_and_resume_sends_each_once(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, database_url: str, task_queue: str
) -> None:
    ids = await sms_retailers(engine, MESSAGES, area_code="555")
    batch = MessageBatch(
        messages=[
            SendMessage(
                idempotency_key=f"brake:{rid}",
                recipient_type="retailer",
                recipient_id=str(rid),
                template="credit_resumed",
            )
            for rid in ids
        ],
        task_queue=f"{task_queue}-messaging",
    )
    paused = jobctl(database_url, "pause", "--reason", "wrong template in prod", "--actor", "ops-1")
    assert paused.returncode == 0, paused.stderr
    assert "paused by ops-1" in paused.stdout

    async with TwilioEmulator() as emulator:
        gateway = TwilioGateway(emulator.client(async_client=True, timeout=5.0))
        sends = MessagingActivities(
            engine,
            gateway,
            Senders("whatsapp:+15005550006", "+15005550006"),
            SendPolicy(quiet_hours=QuietHours(0, 0), paused_recheck=timedelta(seconds=1)),
        )

        def workers():
            return Worker(dev_env.client, task_queue=task_queue, workflows=[MessageBatchWorkflow]), Worker(
                dev_env.client, task_queue=batch.task_queue, activities=[sends.send_message, sends.send_messages]
            )

        try:
            jobs, messaging = workers()
            async with jobs, messaging:
                handle = await dev_env.client.start_workflow(
                    MessageBatchWorkflow.run, batch, id=f"batch/{uuid.uuid4()}", task_queue=task_queue
                )
                deadline = time.monotonic() + 60
                while (await handle.query(MessageBatchWorkflow.status)).deferred < MESSAGES:
                    assert time.monotonic() < deadline, "the batch was never held"
                    await asyncio.sleep(0.2)
            # Every worker gone, the brake still on: the held messages live in the workflow's timers.
            assert await accepted(emulator) == []
            state = await brake.status(engine)
            assert state.paused and state.held_by_brake == MESSAGES

            jobs, messaging = workers()
            async with jobs, messaging:
                await asyncio.sleep(1.5)  # held messages come round again, and are held again
                assert await accepted(emulator) == []
                resumed = jobctl(database_url, "resume", "--actor", "ops-1")
                assert resumed.returncode == 0, resumed.stderr
                result = await asyncio.wait_for(handle.result(), timeout=120)
        finally:
            await gateway.close()
        sent = await accepted(emulator)

    assert result.sent == MESSAGES and result.deferred == 0 and result.delivered_after_hold == MESSAGES
    recipients = [m["to"] for m in sent]
    assert len(recipients) == MESSAGES and len(set(recipients)) == MESSAGES
    assert not (await brake.status(engine)).paused


def test_bad_brake_input_is_one_line_and_exit_2(database_url: str) -> None:
    for args, says in (
        (("pause", "--actor", "ops-1"), "--reason"),
        (("resume", "--actor", "ops-1"), "not paused"),
    ):
        result = jobctl(database_url, *args)
        assert result.returncode == 2, result.stderr
        assert says in result.stderr
    status = jobctl(database_url, "status")
    assert status.returncode == 0 and status.stdout.startswith("messaging sending"), status.stderr


async def test_the_brake_from_the_temporal_ui_holds_a_send_and_resume_sends_it_once(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, task_queue: str, record_history
) -> None:
    """Signals sent as the UI sends them (JSON objects, by name), and malformed ones dropped."""
    from activities.messaging.brake import BrakeActivities
    from schemas.messaging import BrakeView
    from tests.workflows.harness import task_failures
    from workflows.brake import MessagingBrakeWorkflow

    (rid,) = await sms_retailers(engine, 1, area_code="556")
    batch = MessageBatch(
        messages=[
            SendMessage(
                idempotency_key=f"ui-brake:{rid}",
                recipient_type="retailer",
                recipient_id=str(rid),
                template="credit_resumed",
            )
        ],
        task_queue=f"{task_queue}-messaging",
    )
    async with TwilioEmulator() as emulator:
        gateway = TwilioGateway(emulator.client(async_client=True, timeout=5.0))
        sends = MessagingActivities(
            engine,
            gateway,
            Senders("whatsapp:+15005550006", "+15005550006"),
            SendPolicy(quiet_hours=QuietHours(0, 0), paused_recheck=timedelta(seconds=1)),
        )
        jobs = Worker(
            dev_env.client,
            task_queue=task_queue,
            workflows=[MessageBatchWorkflow, MessagingBrakeWorkflow],
            activities=[BrakeActivities(engine).set_messaging_brake],
        )
        messaging = Worker(
            dev_env.client, task_queue=batch.task_queue, activities=[sends.send_message, sends.send_messages]
        )
        try:
            async with jobs, messaging:
                brake_wf = await dev_env.client.start_workflow(
                    "MessagingBrakeWorkflow", id=f"messaging-brake-{uuid.uuid4()}", task_queue=task_queue
                )
                for malformed in ({}, {"reason": "", "actor": "ops-1"}, "stop", {"actor": "ops-1"}):
                    await brake_wf.signal("pause", malformed)
                await brake_wf.signal("resume", {})
                await brake_wf.signal("pause", {"reason": "wrong template in prod", "actor": "ops-2"})

                async def paused() -> bool:
                    view = await brake_wf.query("status", result_type=BrakeView)
                    return view.paused

                deadline = time.monotonic() + 30
                while not await paused():
                    assert time.monotonic() < deadline, "the pause signal never applied"
                    await asyncio.sleep(0.1)
                state = await brake.status(engine)
                assert (state.paused, state.actor, state.reason) == (True, "ops-2", "wrong template in prod")

                handle = await dev_env.client.start_workflow(
                    MessageBatchWorkflow.run, batch, id=f"batch/{uuid.uuid4()}", task_queue=task_queue
                )
                while (await handle.query(MessageBatchWorkflow.status)).deferred < 1:
                    assert time.monotonic() < deadline + 30, "the send was never held"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.5)  # tried again while paused: held again
                assert await accepted(emulator) == []

                await brake_wf.signal("resume", {"actor": "ops-2"})
                result = await asyncio.wait_for(handle.result(), timeout=60)
                assert not (await brake_wf.query("status", result_type=BrakeView)).paused
                assert await task_failures(brake_wf) == 0
                await record_history(brake_wf, "messaging_brake")  # still running: it lives forever
        finally:
            await gateway.close()
        sent = await accepted(emulator)

    assert (result.sent, result.delivered_after_hold) == (1, 1)
    assert len(sent) == 1
    assert not (await brake.status(engine)).paused
