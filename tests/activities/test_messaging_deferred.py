"""Deferred means delivered later: a message held by quiet hours goes out, same key, when they end.

On the time-skipping server: the asking workflow sleeps on a durable timer until `retry_at` and
sends again; the outbox judges quiet hours at the (skipped-to) time Temporal scheduled the send.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import stripe
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.business_calendar import business_day
from activities.credit.guardrails import GuardrailActivities
from activities.credit.payments import PaymentRecordingActivities
from activities.credit.reminders import ReminderActivities
from activities.messaging.send import MessagingActivities, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway
from activities.payments.gateway import StripeGateway
from devtools.twilio_emulator import TwilioEmulator
from schemas.credit import GuardrailsRequest, RemindersRequest
from schemas.tables import MessageLog
from tests.activities.test_credit import FAR, PAY_BASE, SENDERS, debit, new_debit, new_retailer, reminder_days, sent_to
from workers import families
from workflows.credit import CreditGuardrailsWorkflow, PaymentRemindersWorkflow


@asynccontextmanager
async def workers_with_quiet_hours(
    client: Client, engine: AsyncEngine, gateway: TwilioGateway, stripe_api: stripe.StripeClient, task_queue: str
) -> AsyncIterator[str]:
    """The credit jobs and a messaging worker keeping the default quiet hours, 21:00-08:00 local."""
    reminders = ReminderActivities(engine, StripeGateway(stripe_api, engine), PAY_BASE)
    guardrails = GuardrailActivities(engine)
    sends = MessagingActivities(engine, gateway, SENDERS, SendPolicy())
    async with (
        Worker(
            client,
            task_queue=task_queue,
            workflows=families.by_name("credit").workflows(),
            activities=[
                reminders.reminder_page,
                reminders.mark_reminders_sent,
                guardrails.apply,
                PaymentRecordingActivities(engine).record,
                business_day,
            ],
        ),
        Worker(client, task_queue=f"{task_queue}-msg", activities=[sends.send_message, sends.send_messages]),
    ):
        yield f"{task_queue}-msg"


def zone_at(now: datetime, local_hour: int) -> str:
    """A fixed-offset zone where it is `local_hour`:mm at `now` (Etc/GMT signs are inverted)."""
    offset = (local_hour - now.hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return f"Etc/GMT{-offset:+d}" if offset else "UTC"


async def skip_to(env: WorkflowEnvironment, hour: int) -> datetime:
    """Move the test server's clock forward to the next `hour`:05 UTC."""
    now = await env.get_current_time()
    target = now.replace(hour=hour, minute=5, second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    await env.sleep(target - now)
    return await env.get_current_time()


async def set_zone(engine: AsyncEngine, retailer_id: int, zone: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE retailers SET timezone = :z WHERE id = :r"), {"z": zone, "r": retailer_id})


async def until(handle: WorkflowHandle, predicate, query) -> object:
    for _ in range(300):
        value = await handle.query(query)
        if predicate(value):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"never reached: last {value}")


async def sent_at(engine: AsyncEngine, key: str) -> datetime:
    async with engine.connect() as conn:
        return (await conn.execute(select(MessageLog.sent_at).where(MessageLog.idempotency_key == key))).scalar_one()


async def test_a_reminder_due_at_22_local_goes_out_at_08_and_the_cadence_keeps_its_days(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    day = FAR + timedelta(days=300)
    shop, phone = await new_retailer(engine)
    await set_zone(engine, shop, "Etc/GMT-12")  # UTC+12: the 10:00 UTC run is 22:00 there
    debit_id = await new_debit(engine, shop, "120.00", day)
    await skip_to(env, 10)

    async with workers_with_quiet_hours(env.client, engine, gateway, stripe_api, task_queue) as messaging:
        handle = await env.client.start_workflow(
            PaymentRemindersWorkflow.run,
            RemindersRequest(reminder_date=day, messaging_task_queue=messaging),
            id=f"payment-reminders/{day}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )
        held = await until(handle, lambda s: s.deferred == 1, PaymentRemindersWorkflow.status)
        assert (held.sent, held.skipped) == (0, {}) and await sent_to(emulator, phone) == []
        done = await handle.result()  # the server skips to the end of the hold
        next_step = await env.client.execute_workflow(
            PaymentRemindersWorkflow.run,
            RemindersRequest(reminder_date=day + timedelta(days=1), messaging_task_queue=messaging),
            id=f"payment-reminders/{day}-next-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )

    assert (done.sent, done.deferred, done.skipped) == (1, 0, {})
    went_out = await sent_at(engine, f"reminder:{shop}:{day.isoformat()}")
    assert went_out.astimezone(ZoneInfo("Etc/GMT-12")).hour == 8
    assert next_step.sent == 1
    assert await reminder_days(engine, shop) == [day, day + timedelta(days=1)]
    assert (await debit(engine, debit_id)).reminder_count == 2
    assert len(await sent_to(emulator, phone)) == 2


async def test_a_credit_paused_notice_held_at_23_goes_out_at_08(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    day = FAR + timedelta(days=320)
    shop, phone = await new_retailer(engine)
    await new_debit(engine, shop, "100.00", day - timedelta(days=40))  # past the 30-day limit
    now = await env.get_current_time()
    zone = zone_at(now, 23)
    await set_zone(engine, shop, zone)

    async with workers_with_quiet_hours(env.client, engine, gateway, stripe_api, task_queue) as messaging:
        handle = await env.client.start_workflow(
            CreditGuardrailsWorkflow.run,
            GuardrailsRequest(check_date=day, messaging_task_queue=messaging),
            id=f"credit-guardrails/{day}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )
        result = await handle.result()

    assert result.paused == [shop] and result.messages_failed == 0
    (notice,) = await sent_to(emulator, phone)
    assert "credit line is paused" in notice["body"]
    async with engine.connect() as conn:
        key = await conn.scalar(
            text("SELECT idempotency_key FROM message_log WHERE recipient_id = :r AND template = 'credit_paused'"),
            {"r": str(shop)},
        )
    assert (await sent_at(engine, key)).astimezone(ZoneInfo(zone)).hour == 8
