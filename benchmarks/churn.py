"""Benchmark: N open churn cases asleep on the dev server, then manual nudges by signal.

    python benchmarks/churn.py --cases 10000 --nudges 200

Prints how fast the cases were opened, the worker process's resident memory with every case
asleep (bounded by the workflow cache), and the latency from sending a `manual_nudge` signal to
the message being accepted by the Twilio emulator (p50/p99). The cron design it replaces looked
for work every 300 s. The emulator runs in its own process (as Twilio is remote), so the worker's
event loop does not also serve Twilio's side of each send.

Figures: nudge latency p50 (< 60 ms) and p99 (< 120 ms), and Temporal actions per nudge (<= 3),
counted from the nudged cases' real histories: each case's actions once all were asleep,
subtracted from its actions once its nudge's activities had all completed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from sqlalchemy import text  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.common import WorkflowIDConflictPolicy  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from activities.churn.cases import ChurnActivities  # noqa: E402
from activities.messaging.outbox import QuietHours  # noqa: E402
from activities.messaging.send import MessagingActivities, SendPolicy, Senders  # noqa: E402
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    count_actions, figure, free_port, machine, print_load_at_end, require_quiet, serve, stack,
)
from benchmarks.orders import rss_mb  # noqa: E402
from schemas.churn import ChurnCaseInput  # noqa: E402
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN  # noqa: E402
from workers.log import configure_logging  # noqa: E402
from workers.worker import WorkerOptions  # noqa: E402
from workflows.churn import ChurnCaseWorkflow  # noqa: E402

CACHE = WorkerOptions().max_cached_workflows
NUDGE_TIMEOUT_S = 30.0  # a nudge that never arrives fails the run instead of hanging it

SEED = text(
    """
WITH company AS (
    INSERT INTO companies (id, name, reminder_offsets_days, channels, daily_nudge_cap, quiet_hours_start, quiet_hours_end)
    VALUES (:company, 'Bench Gym', ARRAY[30, 60], ARRAY['sms'], 100, 0, 0) RETURNING id
), members AS (
    INSERT INTO memberships (company_id, name, phone, preferred_channel)
    SELECT :company, 'Member ' || g, '+1560' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(1, :n) g
    RETURNING id
)
INSERT INTO recovery_cases (company_id, membership_id, trigger)
SELECT :company, id, 'payment_failed' FROM members
RETURNING id, membership_id
"""
)


async def all_asleep(client, last_cases: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Wait until the last cases started sleep on their day-30 timer (tasks run roughly in order)."""
    for case_id in last_cases:
        while True:
            history = await client.get_workflow_handle(f"churn-case/{case_id}").fetch_history()
            if any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in history.events):
                break
            await asyncio.sleep(0.5)


async def settled(client, workflow_id: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until the case has no activity pending (its nudge recorded), so its actions are all in."""
    handle = client.get_workflow_handle(workflow_id)
    for _ in range(600):
        if not (await handle.describe()).raw_description.pending_activities:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{workflow_id}: activities still pending after 30 s")


async def main(cases: int, nudges: int, concurrency: int) -> None:
    configure_logging("json", "WARNING")
    company = f"bench-{uuid.uuid4().hex[:6]}"
    twilio_port = free_port()
    async with stack() as s, serve("twilio-emulator", twilio_port):
        emulator_url = f"http://127.0.0.1:{twilio_port}"
        gateway = TwilioGateway(twilio_client(emulator_url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True))
        churn = ChurnActivities(s.engine)
        sends = MessagingActivities(s.engine, gateway, Senders("whatsapp:+15005550006", "+15005550006"),
                                    SendPolicy(daily_cap=1000, quiet_hours=QuietHours(0, 0)))
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        async with s.engine.begin() as conn:
            rows = (await conn.execute(SEED, {"company": company, "n": cases})).all()
            phones = dict((await conn.execute(text("SELECT id, phone FROM memberships WHERE company_id = :c"), {"c": company})).all())
        rss_before = rss_mb()
        async with Worker(
            s.client, task_queue=queue, workflows=[ChurnCaseWorkflow],
            activities=[churn.load_case, churn.decide_nudge, churn.record_action], max_cached_workflows=CACHE,
        ), Worker(s.client, task_queue=f"{queue}-msg", activities=[sends.send_message]):
            slots = asyncio.Semaphore(concurrency)

            async def open_one(case_id: int) -> None:
                async with slots:
                    await s.client.start_workflow(
                        ChurnCaseWorkflow.run,
                        ChurnCaseInput(case_id=case_id, company_id=company, manage_link="https://pay.example.test/m",
                                       messaging_task_queue=f"{queue}-msg"),
                        id=f"churn-case/{case_id}", task_queue=queue,
                        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    )

            started = time.perf_counter()
            await asyncio.gather(*(open_one(case_id) for case_id, _ in rows))
            open_elapsed = time.perf_counter() - started
            await all_asleep(s.client, [case_id for case_id, _ in rows[-20:]])
            asleep_elapsed = time.perf_counter() - started
            await asyncio.sleep(2)
            rss_sleeping = rss_mb()

            nudged = rows[:: max(1, len(rows) // nudges)][:nudges]
            runs = {case_id: (await s.client.get_workflow_handle(f"churn-case/{case_id}").describe()).run_id
                    for case_id, _ in nudged}
            actions_before = {case_id: await count_actions(s.client, f"churn-case/{case_id}", runs[case_id] or "")
                              for case_id, _ in nudged}
            latencies: list[float] = []
            async with aiohttp.ClientSession() as http:
                for case_id, membership in nudged:
                    phone = phones[membership]
                    sent = time.perf_counter()
                    await s.client.get_workflow_handle(f"churn-case/{case_id}").signal(
                        ChurnCaseWorkflow.manual_nudge, {"actor_id": "bench", "company_id": company}
                    )
                    while True:
                        async with http.get(f"{emulator_url}/_emulator/messages", params={"to": phone}) as response:
                            if await response.json():
                                break
                        if time.perf_counter() - sent > NUDGE_TIMEOUT_S:
                            raise SystemExit(f"case {case_id}: no message {NUDGE_TIMEOUT_S:.0f} s after its nudge")
                        await asyncio.sleep(0.005)
                    latencies.append(time.perf_counter() - sent)
            rss_after = rss_mb()
            nudge_actions = 0
            for case_id, _ in nudged:
                await settled(s.client, f"churn-case/{case_id}")
                nudge_actions += await count_actions(s.client, f"churn-case/{case_id}", runs[case_id] or "") - actions_before[case_id]
        await gateway.close()

    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    print(f"machine: {machine()}")
    print(f"opened {cases} cases in {open_elapsed:.1f}s (all asleep after {asleep_elapsed:.1f}s) = {cases / open_elapsed:,.0f} starts/s ({concurrency} in flight)")
    print(f"worker RSS (in-process, cache {CACHE}): {rss_before:.0f} MB before, {rss_sleeping:.0f} MB with {cases} cases asleep,"
          f" {rss_after:.0f} MB after the nudges")
    print(f"manual nudge, signal -> accepted by the emulator ({len(latencies)} nudges, one at a time):"
          f" p50 {p(0.5) * 1000:.0f} ms, p99 {p(0.99) * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms,"
          f" mean {statistics.fmean(latencies) * 1000:.0f} ms")
    print(f"Temporal actions of the nudges: {nudge_actions} for {len(latencies)} nudges = {nudge_actions / len(latencies):.2f} per nudge")
    figure(f"churn: manual nudge to emulator p50 ({cases} open cases)", p(0.5) * 1000, "ms", target="< 60")
    figure(f"churn: manual nudge to emulator p99 ({cases} open cases)", p(0.99) * 1000, "ms", target="< 120")
    figure("churn: Temporal actions per nudge", nudge_actions / len(latencies), "actions", target="<= 3")
    print_load_at_end()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--nudges", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    if args.cases < 1 or args.nudges < 1:
        parser.error("--cases and --nudges must be at least 1")
    require_quiet()
    asyncio.run(main(args.cases, args.nudges, args.concurrency))
