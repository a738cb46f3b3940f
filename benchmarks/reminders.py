"""Benchmark: one day's payment reminders for N retailers, end to end, against the cron baseline.

    python benchmarks/reminders.py --retailers 10000

Real stack: dev server, PostgreSQL, the Stripe sandbox (payment links) and the Twilio emulator
(no rate limit), workers in this process. Prints reminders/s for `PaymentRemindersWorkflow` and
Temporal actions per reminder (from the histories), next to a baseline run in the same process
that does what the seed's cron job did: per debit, one query, one send, one update, in sequence.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from sqlalchemy import text  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from activities.credit.reminders import ReminderActivities  # noqa: E402
from activities.insights import business_day  # noqa: E402
from activities.messaging.outbox import QuietHours  # noqa: E402
from activities.messaging.send import MessagingActivities, SendPolicy, Senders  # noqa: E402
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client  # noqa: E402
from activities.payments.activities import PaymentActivities  # noqa: E402
from activities.payments.client import close_stripe_client, stripe_client  # noqa: E402
from benchmarks.harness import count_actions, cpu_per, cpu_seconds, machine, serve, stack  # noqa: E402
from schemas.credit import RemindersRequest  # noqa: E402
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN  # noqa: E402
from workflows.credit import PaymentRemindersWorkflow  # noqa: E402

TWILIO_PORT, STRIPE_PORT = 18089, 18420


SENDERS = Senders(whatsapp="whatsapp:+15005550006", sms="+15005550006")

# Retailers with one to three debits due a reminder on :day (offsets 0, +1 and +3).
SEED = text(
    """
WITH shops AS (
    INSERT INTO retailers (name, phone, preferred_channel)
    SELECT 'Bench Shop ' || g, '+1558' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(:first, :first + :n - 1) g
    RETURNING id
), accounts AS (
    INSERT INTO credit_accounts (retailer_id, available_credit) SELECT id, 50000 FROM shops
)
INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference)
SELECT s.id, 'DEBIT', 100 + k, CAST(:day AS date) - (ARRAY[0, 1, 3])[k], 'inv-' || s.id || '-' || k
FROM shops s CROSS JOIN generate_series(1, 3) k
WHERE k <= 1 + s.id % 3
"""
)

BASELINE_DUE = text(
    """
SELECT d.id, d.amount, r.phone FROM credit_transactions d JOIN retailers r ON r.id = d.retailer_id
WHERE d.id = :id
"""
)


async def seed(engine, first: int, n: int, day: date) -> None:
    async with engine.begin() as conn:
        await conn.execute(SEED, {"first": first, "n": n, "day": day})


async def baseline(engine, gateway: TwilioGateway, day: date, debits: int) -> float:
    """The cron job: for each due debit, read it, send a message, mark it; one at a time."""
    async with engine.connect() as conn:
        ids = (
            await conn.scalars(
                text(
                    "SELECT id FROM credit_transactions WHERE type = 'DEBIT' AND due_date = CAST(:day AS date)"
                    " ORDER BY id LIMIT :n"
                ),
                {"day": day, "n": debits},
            )
        ).all()
    started = time.perf_counter()
    for debit_id in ids:
        async with engine.connect() as conn:
            row = (await conn.execute(BASELINE_DUE, {"id": debit_id})).one()
        await gateway.send(to=row.phone, from_=SENDERS.sms, body=f"Reminder: {row.amount} is due.")
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE credit_transactions SET reminder_count = reminder_count + 1, reminder_sent_at = now() WHERE id = :id"),
                {"id": debit_id},
            )
    return len(ids) / (time.perf_counter() - started)


async def main(retailers: int, baseline_debits: int, page_size: int, in_flight: int) -> None:
    day = date.today()
    phases: list[str] = []
    baseline_day = date(day.year + 1, 1, 15)
    async with stack() as s, serve("twilio-emulator", TWILIO_PORT), serve("stripe-sandbox", STRIPE_PORT):
        twilio_url, stripe_url = f"http://127.0.0.1:{TWILIO_PORT}", f"http://127.0.0.1:{STRIPE_PORT}"
        gateway = TwilioGateway(twilio_client(twilio_url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True))
        stripe_api = stripe_client("sk_test_bench", stripe_url, timeout_s=30)
        reminders = ReminderActivities(s.engine, PaymentActivities(s.engine, stripe_api, "https://pay.example.test/p"))
        sends = MessagingActivities(s.engine, gateway, SENDERS, SendPolicy(quiet_hours=QuietHours(0, 0)), per_second=100_000)
        queue = f"bench-{uuid.uuid4().hex[:8]}"

        await seed(s.engine, 1, retailers, day)
        await seed(s.engine, retailers + 1, baseline_debits, baseline_day)
        base_rate = await baseline(s.engine, gateway, baseline_day, baseline_debits)

        async with Worker(
            s.client,
            task_queue=queue,
            workflows=[PaymentRemindersWorkflow],
            activities=[reminders.reminder_page, reminders.mark_reminders_sent, business_day],
        ), Worker(s.client, task_queue=f"{queue}-msg", activities=[sends.send_messages], max_concurrent_activities=4):
            cpu_before, started = cpu_seconds(), time.perf_counter()
            handle = await s.client.start_workflow(
                PaymentRemindersWorkflow.run,
                RemindersRequest(reminder_date=day, page_size=page_size, max_in_flight=in_flight, messaging_task_queue=f"{queue}-msg"),
                id=f"payment-reminders/{day}",
                task_queue=queue,
            )
            status = await handle.result()
            elapsed = time.perf_counter() - started
            cpu = cpu_per(cpu_before, cpu_seconds(), max(status.sent, 1), "reminder")
        actions = await count_actions(s.client, handle.id, handle.result_run_id or "")
        history = await handle.fetch_history()
        scheduled = {}
        for event in history.events:
            if event.HasField("activity_task_scheduled_event_attributes"):
                scheduled[event.event_id] = (event.activity_task_scheduled_event_attributes.activity_type.name, event.event_time.ToDatetime())
            if event.HasField("activity_task_completed_event_attributes"):
                name, at = scheduled[event.activity_task_completed_event_attributes.scheduled_event_id]
                phases.append(f"{name} {(event.event_time.ToDatetime() - at).total_seconds():.1f}s")
        async with s.engine.connect() as conn:
            reminded = await conn.scalar(
                text("SELECT count(DISTINCT retailer_id) FROM credit_transactions WHERE reminder_count > 0 AND retailer_id <= :n"),
                {"n": retailers},
            )
        async with aiohttp.ClientSession() as http, http.get(f"{twilio_url}/_emulator/messages") as response:
            accepted = len(await response.json()) - baseline_debits
        await gateway.close()
        await close_stripe_client(stripe_api)

    rate = status.sent / elapsed
    print("activity durations: " + ", ".join(phases))
    print(f"machine: {machine()}")
    print(
        f"reminders: {status.sent} sent to {retailers} retailers in {elapsed:.1f}s = {rate:,.0f} reminders/s "
        f"(pages of {page_size}, {in_flight} sends in flight, a payment link each)"
    )
    print(f"emulator accepted {accepted}; retailers marked reminded {reminded}; skipped {status.skipped}; failed {status.failed}")
    print(f"  {cpu} (the benchmark process runs the workers; `serve`d: the emulator and the sandbox)")
    print(f"Temporal actions: {actions} in all, {actions / max(status.sent, 1):.4f} per reminder")
    print(f"baseline (cron: query + send + update per debit, sequential, {baseline_debits} debits): {base_rate:,.0f} debits/s")
    print(f"speed-up: {rate / base_rate:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retailers", type=int, default=10_000)
    parser.add_argument("--baseline-debits", type=int, default=500)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.retailers, args.baseline_debits, args.page_size, args.in_flight))
