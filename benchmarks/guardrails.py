"""Benchmark: one credit-guardrails run (auto-pause / auto-unpause) through a real worker.

    python benchmarks/guardrails.py --retailers 2000

Real stack: dev server, PostgreSQL, the Twilio emulator in its own process, the workers in this
process. N retailers are seeded so that the run changes each of them: a third with a debit
overdue past `max_outstanding_days`, a third with more outstanding than `credit_limit` (both
paused), a third paused by the system earlier whose conditions no longer hold (resumed). As many
healthy retailers again are seeded beside them, in scope and left alone. `CreditGuardrailsWorkflow`
(`credit-guardrails/{date}`, the 11:00 schedule's workflow) runs once: one statement decides,
changes and audits, then each changed retailer is told (`credit_paused` / `credit_resumed`).

Figure: Temporal actions per retailer changed (<= 1), counted from the run's real history; the
run's wall time and the exactly-once check (one message per change) are printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from sqlalchemy import text
from temporalio.worker import Worker

from activities.credit.guardrails import GuardrailActivities
from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from benchmarks.harness import (
    count_actions,
    cpu_per,
    cpu_seconds,
    figure,
    free_port,
    machine,
    print_load_at_end,
    require_quiet,
    serve,
    stack,
)
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from schemas.credit import GuardrailsRequest
from workers.log import configure_logging
from workflows.credit import CreditGuardrailsWorkflow

# kind 0: overdue (paused); 1: above the limit (paused); 2: paused by the system, now clear (resumed);
# kind 3: healthy (untouched). Limits: 1,000 credit, 30 days.
SEED = text(
    """
WITH shops AS (
    INSERT INTO retailers
        (name, phone, preferred_channel, credit_status, paused_by, credit_paused_at, credit_pause_reason)
    SELECT 'Bench Shop ' || g, '+1559' || lpad(g::text, 7, '0'), 'sms',
           CASE WHEN g % 4 = 2 THEN 'PAUSED' ELSE 'ACTIVE' END,
           CASE WHEN g % 4 = 2 THEN 'system' END,
           CASE WHEN g % 4 = 2 THEN now() - interval '2 days' END,
           CASE WHEN g % 4 = 2 THEN 'a debit was overdue' END
    FROM generate_series(1, :n) g
    RETURNING id, CAST(split_part(name, ' ', 3) AS int) % 4 AS kind
), accounts AS (
    INSERT INTO credit_accounts (retailer_id, credit_limit, available_credit, max_outstanding_days)
    SELECT id, 1000, 1000, 30 FROM shops
)
INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference)
SELECT id, 'DEBIT',
       CASE kind WHEN 1 THEN 1500 ELSE 200 END,
       CAST(:day AS date) - CASE kind WHEN 0 THEN 40 ELSE 5 END,
       'inv-' || id
FROM shops WHERE kind <> 2
"""
)


async def main(changed: int) -> None:
    configure_logging("json", "WARNING")
    day = date.today() + timedelta(days=1)
    seeded = changed * 4 // 3  # a quarter of them healthy
    port = free_port()
    async with stack() as s, serve("twilio-emulator", port), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}"
        gateway = TwilioGateway(twilio_client(url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True))
        sends = MessagingActivities(
            s.engine,
            gateway,
            Senders("whatsapp:+15005550006", "+15005550006"),
            SendPolicy(daily_cap=100, quiet_hours=QuietHours(0, 0)),
        )
        async with s.engine.begin() as conn:
            await conn.execute(SEED, {"n": seeded, "day": day})
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        async with (
            Worker(
                s.client,
                task_queue=queue,
                workflows=[CreditGuardrailsWorkflow],
                activities=[GuardrailActivities(s.engine).apply],
            ),
            Worker(
                s.client,
                task_queue=f"{queue}-msg",
                activities=[sends.send_message, sends.send_messages],
                max_concurrent_activities=200,
            ),
        ):
            cpu_before, started = cpu_seconds(), time.perf_counter()
            handle = await s.client.start_workflow(
                CreditGuardrailsWorkflow.run,
                GuardrailsRequest(check_date=day, messaging_task_queue=f"{queue}-msg"),
                id=f"credit-guardrails/{day}",
                task_queue=queue,
            )
            result = await handle.result()
            elapsed = time.perf_counter() - started
            cpu_after = cpu_seconds()
        actions = await count_actions(s.client, handle.id, handle.first_execution_run_id or handle.run_id or "")
        events = len((await handle.fetch_history()).events)
        async with http.get(f"{url}/_emulator/stats") as response:
            accepted = (await response.json())["accepted"]
        async with s.engine.connect() as conn:
            states = dict((await conn.execute(text("SELECT credit_status, count(*) FROM retailers GROUP BY 1"))).all())
        await gateway.close()

    n_changed = len(result.paused) + len(result.resumed)
    print(f"machine: {machine()}")
    print(
        f"{seeded} retailers in scope: {len(result.paused)} paused, {len(result.resumed)} resumed,"
        f" {result.messages_failed} messages failed, in {elapsed:.1f}s; retailers now {states}"
    )
    print(f"  {cpu_per(cpu_before, cpu_after, max(n_changed, 1), 'retailer changed')}")
    print(f"emulator accepted {accepted} messages for {n_changed} changes; the run's history has {events} events")
    print(f"Temporal actions: {actions} = {actions / max(n_changed, 1):.4f} per retailer changed")
    figure("guardrails: Temporal actions per retailer changed", actions / max(n_changed, 1), "actions", target="<= 1")
    print_load_at_end()
    expected = sum(1 for g in range(1, seeded + 1) if g % 4 != 3)  # every kind but the healthy one
    if n_changed != expected or accepted != n_changed or result.messages_failed:
        raise SystemExit(f"expected {expected} changes, each told once: got {n_changed} changes, {accepted} messages")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--retailers", type=int, default=2000, help="retailers the run changes (a third more are healthy)"
    )
    args = parser.parse_args()
    if args.retailers < 3:
        parser.error("--retailers must be at least 3")
    require_quiet()
    asyncio.run(main(args.retailers))
