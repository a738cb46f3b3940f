"""Benchmark: payment reminders through a whole 8-step cadence, end to end, against the cron.

    python benchmarks/reminders.py --retailers 2000 --cron-retailers 200
    python benchmarks/reminders.py --production --retailers 10000

Real stack: dev server, PostgreSQL, the Stripe sandbox (customers, Checkout Sessions as payment
links) and the Twilio emulator, each of the last two in a process of its own as in `jobctl dev`.
The jobs worker runs in the benchmark's process and the messaging worker in one of its own
(benchmarks/messaging_worker.py), as `jobctl worker --task-queue jobs` and `--task-queue
messaging` deploy them: one Python process runs on one core at a time, and the bound below
counts two.

The cadence. A debit is reminded on the days `REMINDER_OFFSETS_DAYS` (schemas/credit.py) away
from its due date: 3 days before, on the day, then 1, 3, 7, 14, 21 and 30 days after. N retailers
get one to three debits all due on the same day, so the debits a link pays (and so the link) are
the same at every step. The link is jobctl's stable `/pay/{token}` URL: the Checkout
Session behind it is made when the retailer opens it (`activities/credit/paylinks.py`), which
nobody does here, so the cadence's Stripe calls are the sends' own (none).
`PaymentRemindersWorkflow` runs once per cadence day, the day passed as
`reminder_date` (as the 10:00 schedule would pass it), and the Stripe sandbox's clock is moved on
by the same days (`POST /_sandbox/clock`): a Checkout Session lives at most 24 hours at Stripe,
and the benchmark must not let a link live longer here than it could there. The sandbox counts
the API requests it answered (`GET /_sandbox/stats`), so "Stripe calls per reminder" is what
reached Stripe over the eight days, divided by the reminders sent.

The cron. What the seed's cron job did per retailer, one retailer after another: read its due
debits, create the customer and the payment link at Stripe, send the message, mark the debits.
Its time per retailer is the floor of "ratio to the cron" (the first cadence day does the same
work per retailer: a new customer and a new link). The parallel bound is what the machine's
cores allow at jobctl's CPU per reminder (all processes: worker, dev server, PostgreSQL, sandbox,
emulator): `cores / CPU per reminder` reminders/s, i.e. `cores × (cron time per retailer) / (CPU
per reminder)` times the cron. "Share of the parallel bound" is the first day's rate over it:
how much of the cores the run kept busy.

Pages are production's (`RemindersRequest().page_size`, 500), so a page's read overlaps the sends of
the page before it; the first day's phases, read from its history, are printed (each activity
type's span and summed time), to show where the day's wall time went.

Figures: Stripe calls per reminder over the cadence (<= 0.2), the first day's rate as a ratio to
the cron (>= 3) and as a share of the parallel bound (>= 0.8), Temporal actions per reminder over
the cadence (<= 0.05), from the histories.

`--production`: production's limits. The sandbox answers Stripe's 429 above 25 requests/s (test
mode's limit), the emulator Twilio's 429 above 200 msg/s, the messaging worker paces its queue at
200 msg/s less the production worker's headroom, and requests use `RemindersRequest`'s defaults
(pages of 500, 50 sends in flight). It runs the first cadence day for N retailers (target: 0
failures) and then the next cadence day (target: >= 0.95 of the messaging limit). Sending makes
no Stripe call (a link is jobctl's `/pay/{token}`; Stripe is called when it is opened), so a day
of 10,000 retailers takes about 51 s at 198 msg/s and `make bench` runs it (`reminders_production`);
`--deadline` bounds each day and a day cut short is reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from activities.business_calendar import business_day
from activities.credit.reminders import ReminderActivities
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from activities.payments.client import close_stripe_client, stripe_client
from activities.payments.gateway import StripeGateway
from benchmarks.harness import (
    Measured,
    count_actions,
    count_billable,
    cpu_per,
    cpu_seconds,
    cpu_used,
    figure,
    free_port,
    machine,
    print_load_at_end,
    require_quiet,
    serve,
    stack,
    worker_process,
)
from benchmarks.messaging_worker import SENDERS
from config.settings import SEND_RATE_HEADROOM
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from schemas.credit import REMINDER_OFFSETS_DAYS, RemindersRequest, RemindersStatus
from workers.log import configure_logging
from workflows.credit import PaymentRemindersWorkflow

PAY_BASE_URL = "https://jobctl.example.test"
DAY_S = 86_400
STRIPE_LIMIT, MESSAGING_LIMIT = 25.0, 200.0  # production: Stripe test mode's requests/s, Twilio's msg/s

# Retailers with one to three debits, all due on :due: the same link at every cadence step.
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
SELECT s.id, 'DEBIT', 100 + k, CAST(:due AS date), 'inv-' || s.id || '-' || k
FROM shops s CROSS JOIN generate_series(1, 3) k
WHERE k <= 1 + s.id % 3
RETURNING retailer_id
"""
)

CRON_DUE = text(
    """
SELECT r.phone, array_agg(d.id ORDER BY d.id) AS debit_ids,
       array_agg(d.amount - d.cleared_amount ORDER BY d.id) AS amounts
FROM retailers r JOIN credit_transactions d ON d.retailer_id = r.id
WHERE r.id = :r AND d.type = 'DEBIT' AND d.status <> 'CLEARED' AND d.due_date = CAST(:due AS date)
GROUP BY r.id
"""
)
CRON_MARK = text(
    "UPDATE credit_transactions SET reminder_count = reminder_count + 1, reminder_sent_at = now()"
    " WHERE id = ANY(CAST(:ids AS bigint[]))"
)


async def seed(engine, first: int, n: int, due: date) -> list[int]:
    """N retailers' debits, and the statistics a production database has for its tables: right
    after a bulk insert there are none until autovacuum's next pass, and the planner, taking the
    debits table for nearly empty, read every due debit for each page of the day."""
    async with engine.begin() as conn:
        ids = sorted(set((await conn.execute(SEED, {"first": first, "n": n, "due": due})).scalars()))
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE retailers, credit_accounts, credit_transactions"))
        await conn.commit()
    return ids


async def stripe_stats(http: aiohttp.ClientSession, stripe_url: str) -> dict:
    async with http.get(f"{stripe_url}/_sandbox/stats") as response:
        return await response.json()


async def advance_stripe_clock(http: aiohttp.ClientSession, stripe_url: str, seconds: float) -> None:
    async with http.post(f"{stripe_url}/_sandbox/clock", json={"advance_s": seconds}) as response:
        response.raise_for_status()


def stats_delta(before: dict, after: dict) -> dict:
    endpoints = {
        k: after["by_endpoint"].get(k, 0) - before["by_endpoint"].get(k, 0)
        for k in after["by_endpoint"]
        if after["by_endpoint"].get(k, 0) != before["by_endpoint"].get(k, 0)
    }
    return {
        "requests": after["requests"] - before["requests"],
        "replayed": after["replayed"] - before["replayed"],
        "rate_limited": after["rate_limited"] - before["rate_limited"],
        "by_endpoint": endpoints,
    }


async def cron(engine, stripe_api, gateway: TwilioGateway, due: date, retailer_ids: list[int]) -> float:
    """The seed's cron job, per retailer and in sequence: read, customer and link at Stripe, send,
    mark. Returns its seconds per retailer."""
    started = time.perf_counter()
    for retailer_id in retailer_ids:
        async with engine.connect() as conn:
            row = (await conn.execute(CRON_DUE, {"r": retailer_id, "due": due})).one()
        customer = await stripe_api.v1.customers.create_async(
            {"metadata": {"owner_type": "retailer", "owner_id": str(retailer_id)}}
        )
        session = await stripe_api.v1.checkout.sessions.create_async(
            {
                "mode": "payment",
                "customer": customer.id,
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": "usd",
                            "unit_amount": int(amount * 100),
                            "product_data": {"name": f"Invoice {debit_id} (due {due})"},
                        },
                    }
                    for debit_id, amount in zip(row.debit_ids, row.amounts, strict=True)
                ],
                "metadata": {"retailer_id": str(retailer_id)},
            }
        )
        total = sum(row.amounts)
        await gateway.send(
            to=row.phone,
            from_=SENDERS.sms,
            body=f"A friendly reminder: {len(row.debit_ids)} invoice(s) totalling {total:,.2f} are due."
            f" Pay here: {session.url}",
        )
        async with engine.begin() as conn:
            await conn.execute(CRON_MARK, {"ids": list(row.debit_ids)})
    return (time.perf_counter() - started) / len(retailer_ids)


@dataclass
class Day:
    day: date
    offset: int
    status: RemindersStatus
    elapsed: float
    cpu_ms: float  # all processes, per reminder sent
    cpu_line: str
    stripe: dict
    actions: int
    finished: bool = True
    error: str = ""
    phases: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process
    billable: int = 0  # Temporal Cloud's billable actions (benchmarks/actions.py)

    @property
    def rate(self) -> float:
        return self.status.sent / self.elapsed if self.elapsed else 0.0


async def run_day(
    client: Client,
    http: aiohttp.ClientSession,
    stripe_url: str,
    queue: str,
    day: date,
    offset: int,
    request: RemindersRequest,
    deadline_s: float | None,
) -> Day:
    """One `payment-reminders/{day}` run; its wall time, CPU, Stripe requests and actions."""
    stats_before, cpu_before, started = await stripe_stats(http, stripe_url), cpu_seconds(), time.perf_counter()
    handle = await client.start_workflow(
        PaymentRemindersWorkflow.run,
        request.model_copy(update={"reminder_date": day}),
        id=f"payment-reminders/{day}",
        task_queue=queue,
    )
    finished, error = True, ""
    try:
        status = await asyncio.wait_for(handle.result(), deadline_s)
    except TimeoutError:
        finished, error = False, f"cut short after {deadline_s:.0f} s"
        status = await handle.query(PaymentRemindersWorkflow.status)
        await handle.terminate("benchmark deadline")
    except WorkflowFailureError as failure:
        finished, error = False, f"workflow failed: {failure.cause}"
        status = RemindersStatus(reminder_date=day)
    elapsed = time.perf_counter() - started
    cpu_after = cpu_seconds()
    stats = stats_delta(stats_before, await stripe_stats(http, stripe_url))
    sent = max(status.sent, 1)
    total_ms = sum(cpu_after[k] - cpu_before[k] for k in cpu_after) * 1000 / sent
    run_id = handle.first_execution_run_id or handle.run_id or ""
    actions = await count_actions(client, handle.id, run_id)
    return Day(
        day,
        offset,
        status,
        elapsed,
        total_ms,
        cpu_per(cpu_before, cpu_after, sent, "reminder"),
        stats,
        actions,
        finished,
        error,
        await phases(client, handle.id, run_id),
        cpu_used(cpu_before, cpu_after),
        await count_billable(client, handle.id, run_id),
    )


async def phases(client: Client, workflow_id: str, run_id: str) -> list[str]:
    """Where a day's wall time went, from its history: each activity type's span (first
    scheduled to last completed, seconds from the run's start) and its summed run time."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    start = history.events[0].event_time.ToDatetime()
    scheduled: dict[int, tuple[str, float]] = {}
    spans: dict[str, list[float]] = {}
    for event in history.events:
        at = (event.event_time.ToDatetime() - start).total_seconds()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = (event.activity_task_scheduled_event_attributes.activity_type.name, at)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            name, began = scheduled[event.activity_task_completed_event_attributes.scheduled_event_id]
            span = spans.setdefault(name, [began, at, 0.0, 0])
            span[0], span[1] = min(span[0], began), max(span[1], at)
            span[2] += at - began
            span[3] += 1
    end = (history.events[-1].event_time.ToDatetime() - start).total_seconds()
    return [
        f"{name}: {n} x, {first:.2f}-{last:.2f} s, {busy:.2f} s summed"
        for name, (first, last, busy, n) in spans.items()
    ] + [f"closed at {end:.2f} s"]


async def emulator_accepted(http: aiohttp.ClientSession, twilio_url: str) -> int:
    async with http.get(f"{twilio_url}/_emulator/stats") as response:
        return (await response.json())["accepted"]


def describe(d: Day) -> str:
    s = d.status
    calls = ", ".join(f"{k} {v}" for k, v in sorted(d.stripe["by_endpoint"].items()))
    return (
        f"day {d.offset:+d} ({d.day}): {s.sent} sent, {sum(s.skipped.values())} skipped,"
        f" {sum(s.failed.values())} failed{' ' + str(s.failed) if s.failed else ''}"
        f" in {d.elapsed:.1f}s = {d.rate:,.1f} reminders/s; {d.actions} actions;"
        f" Stripe {d.stripe['requests']} requests ({d.stripe['rate_limited']} answered 429): {calls or 'none'}"
        + (f"; NOT FINISHED: {d.error}" if not d.finished else "")
    )


async def main(args: argparse.Namespace) -> Measured:
    production = args.production
    # Under production's limits every 429 is a warning (thousands of lines): errors only there.
    configure_logging("json", "ERROR" if production else "WARNING")
    first_day = date.today() + timedelta(days=30)  # every cadence day after today: marks use the day's start
    due = first_day - timedelta(days=REMINDER_OFFSETS_DAYS[0])
    cron_due = due + timedelta(days=400)
    twilio_port, stripe_port = free_port(), free_port()
    stripe_args = ("--rate-limit", str(STRIPE_LIMIT)) if production else ()
    twilio_args = ("--rate-limit", str(MESSAGING_LIMIT)) if production else ()
    async with (
        stack() as s,
        serve("twilio-emulator", twilio_port, *twilio_args),
        serve("stripe-sandbox", stripe_port, *stripe_args),
        aiohttp.ClientSession() as http,
    ):
        twilio_url, stripe_url = f"http://127.0.0.1:{twilio_port}", f"http://127.0.0.1:{stripe_port}"
        gateway = TwilioGateway(twilio_client(twilio_url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True))
        stripe_api = stripe_client("sk_test_bench", stripe_url, timeout_s=30)
        # The links point at jobctl's /pay/{token} (PUBLIC_BASE_URL); nobody clicks them here.
        reminders = ReminderActivities(s.engine, StripeGateway(stripe_api, s.engine), PAY_BASE_URL)
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        retailers = await seed(s.engine, 1, args.retailers, due)

        cron_s = None
        if not production:
            cron_ids = await seed(s.engine, args.retailers + 1, args.cron_retailers, cron_due)
            cron_before = await stripe_stats(http, stripe_url)
            cron_s = await cron(s.engine, stripe_api, gateway, cron_due, cron_ids)
            cron_stripe = stats_delta(cron_before, await stripe_stats(http, stripe_url))
        accepted_before = await emulator_accepted(http, twilio_url)

        if production:
            request = RemindersRequest(messaging_task_queue=f"{queue}-msg")
        else:
            request = RemindersRequest(
                page_size=args.page_size, max_in_flight=args.in_flight, messaging_task_queue=f"{queue}-msg"
            )
        offsets = REMINDER_OFFSETS_DAYS[:2] if production else REMINDER_OFFSETS_DAYS
        days: list[Day] = []
        pace = ("--per-second", str(MESSAGING_LIMIT * SEND_RATE_HEADROOM)) if production else ()
        async with (
            Worker(
                s.client,
                task_queue=queue,
                workflows=[PaymentRemindersWorkflow],
                activities=[reminders.reminder_page, reminders.mark_reminders_sent, business_day],
            ),
            worker_process(s, "benchmarks.messaging_worker", f"{queue}-msg", twilio_url, *pace),
        ):
            previous = None
            for offset in offsets:
                day = due + timedelta(days=offset)
                if previous is not None:  # the days between two steps pass at Stripe too
                    await advance_stripe_clock(http, stripe_url, (day - previous).days * DAY_S)
                days.append(await run_day(s.client, http, stripe_url, queue, day, offset, request, args.deadline))
                print(describe(days[-1]), flush=True)
                previous = day
                if not days[-1].finished:
                    break
        accepted = await emulator_accepted(http, twilio_url) - accepted_before
        async with s.engine.connect() as conn:
            reminded = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT min(reminder_count), max(reminder_count) FROM credit_transactions"
                            " WHERE retailer_id = ANY(CAST(:ids AS bigint[]))"
                        ),
                        {"ids": retailers},
                    )
                )
                .one()
                ._mapping
            )
        await gateway.close()
        await close_stripe_client(stripe_api)

    first = days[0]
    sent = sum(d.status.sent for d in days)
    calls = sum(d.stripe["requests"] for d in days)
    actions = sum(d.actions for d in days)
    failed = sum(sum(d.status.failed.values()) for d in days)
    cores = os.cpu_count() or 1
    print(f"machine: {machine()}")
    print(
        f"{len(retailers)} retailers, debits due {due}; {len(days)} cadence days run"
        f" (offsets {', '.join(f'{d.offset:+d}' for d in days)})"
    )
    print(
        f"first day: {first.cpu_line} (the benchmark process runs the jobs worker, a worker process"
        " the messaging one; `serve`d: the emulator and the sandbox)"
    )
    print(f"first day: {first.cpu_ms:.1f} ms of CPU per reminder in all processes")
    print("first day's phases (first run): " + "; ".join(first.phases))
    print(
        f"cadence: {sent} reminders sent, {failed} failed; emulator accepted {accepted}; debits reminded"
        f" {reminded['min']}..{reminded['max']} times (the cadence has {len(REMINDER_OFFSETS_DAYS)} steps)"
    )
    print(f"Stripe: {calls} requests over the cadence = {calls / max(sent, 1):.3f} per reminder")
    print(f"Temporal actions: {actions} over the cadence = {actions / max(sent, 1):.4f} per reminder")
    billable = sum(d.billable for d in days)
    print(f"  billable by Temporal Cloud's definition: {billable} = {billable / max(sent, 1):.4f} per reminder")
    measured = Measured(first.status.sent, "reminder", first.elapsed, first.cpu, billable / max(sent, 1))

    if production:
        limit = MESSAGING_LIMIT
        print(f"production shape: Stripe limited to {STRIPE_LIMIT:g} requests/s, Twilio to {limit:g} msg/s")
        figure(
            f"reminders (production): first day's failed reminders ({len(retailers)} retailers)",
            failed if first.finished else float(len(retailers) - first.status.sent),
            "reminders",
            target="== 0",
        )
        if len(days) > 1:
            figure(
                "reminders (production): next cadence day's rate",
                days[1].rate,
                "reminders/s",
                floor=limit,
                floor_name="messaging limit",
                target=">= 0.95",
            )
            measured.targets["next day's share of the messaging limit"] = days[1].rate / limit
        measured.targets["first day's failed reminders"] = float(failed)
        print_load_at_end()
        return measured

    assert cron_s is not None
    cron_rate = 1 / cron_s
    bound = cores / (first.cpu_ms / 1000)
    print(
        f"cron ({args.cron_retailers} retailers: read, customer + link at Stripe, send, mark; sequential):"
        f" {cron_s * 1000:.1f} ms per retailer = {cron_rate:,.1f} retailers/s;"
        f" Stripe {cron_stripe['requests']} requests"
    )
    print(
        f"parallel bound: {cores} cores / {first.cpu_ms:.1f} ms per reminder = {bound:,.1f} reminders/s"
        f" = {cores} x {cron_s * 1000:.1f} ms / {first.cpu_ms:.1f} ms = {bound / cron_rate:.1f}x the cron"
    )
    print(
        f"first day: {first.rate:,.1f} reminders/s = {first.rate / cron_rate:.2f}x the cron,"
        f" {first.rate / bound:.2f} of the parallel bound"
    )
    complete = (
        all(d.finished for d in days)
        and failed == 0
        and reminded["min"] == reminded["max"] == len(REMINDER_OFFSETS_DAYS)
    )
    figure(
        f"reminders: Stripe calls per reminder ({len(REMINDER_OFFSETS_DAYS)}-step cadence)",
        calls / max(sent, 1),
        "calls",
        target="<= 0.2",
    )
    figure("reminders: ratio to the cron", first.rate, "reminders/s", floor=cron_rate, floor_name="cron", target=">= 3")
    figure(
        "reminders: share of the parallel bound",
        first.rate,
        "reminders/s",
        floor=bound,
        floor_name=f"{cores}-core bound",
        target=">= 0.8",
    )
    figure("reminders: Temporal actions per reminder", actions / max(sent, 1), "actions", target="<= 0.05")
    print_load_at_end()
    if not complete:
        raise SystemExit("the cadence did not complete exactly once per step (see above): figures are not trustworthy")
    measured.targets["ratio to the cron"] = first.rate / cron_rate
    return measured


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retailers", type=int, default=2000)
    parser.add_argument(
        "--cron-retailers", type=int, default=200, help="retailers the sequential cron baseline reminds"
    )
    parser.add_argument(
        "--page-size", type=int, default=RemindersRequest().page_size, help="retailers per page (production's)"
    )
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument(
        "--production", action="store_true", help="production's rate limits; the first two cadence days"
    )
    parser.add_argument(
        "--deadline", type=float, default=None, help="seconds a cadence day may take before it is cut short"
    )
    args = parser.parse_args()
    if args.retailers < 1 or args.cron_retailers < 1:
        parser.error("--retailers and --cron-retailers must be at least 1")
    if args.production and args.deadline is None:
        args.deadline = 1800.0
    require_quiet()
    asyncio.run(main(args))
