"""Benchmark: N open churn cases asleep on the dev server, then manual nudges by signal.

    python benchmarks/churn.py --cases 10000 --nudges 200

Nudges go one at a time, each alone: the next is sent once the previous case has nothing pending.
Prints how fast the cases were opened, the worker process's resident memory with every case
asleep (bounded by the workflow cache), and the latency from sending a `manual_nudge` signal to
the message being accepted by the Twilio emulator (p50/p99), with where it went: the signal
recorded, the case's workflow task started and completed, the send scheduled and started (from
the case's history) and the emulator's acceptance (its record's `accepted_at`). The cron design
it replaces looked for work every 300 s. The emulator runs in its own process (as Twilio is
remote), so the worker's event loop does not also serve Twilio's side of each send. The workers
are tuned as production's (`jobs_tuning`, `messaging_tuning`): the messaging queue's rate limit,
the send path's pacing and dispatch delay, the interceptors, the cache size. The CPU per case opened
is steady state's, as benchmarks/orders.py measures a clock's: the cache is filled before the first
measured opening and the reading waits for the server's deferred work (`after_deferred_work`).

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
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from activities.churn.cases import ChurnActivities
from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from benchmarks.harness import (
    Measured,
    after_deferred_work,
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
    until_idle,
)
from benchmarks.orders import rss_mb
from config.settings import Settings
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from schemas.churn import ChurnCaseInput
from workers.log import configure_logging
from workers.worker import WorkerOptions, jobs_tuning, messaging_tuning
from workflows.churn import ChurnCaseWorkflow

CACHE = WorkerOptions().max_cached_workflows
NUDGE_TIMEOUT_S = 30.0  # a nudge that never arrives fails the run instead of hanging it
POLL_S = 0.05
"""How often the emulator is asked whether the nudge arrived. The worker shares this process's
event loop: asking every 5 ms took a share of it from the nudge being measured."""


async def emulator_messages(http: aiohttp.ClientSession, emulator_url: str, phone: str) -> list[dict]:
    async with http.get(f"{emulator_url}/_emulator/messages", params={"to": phone}) as response:
        return await response.json()


SEED = text(
    """
WITH company AS (
    INSERT INTO companies
        (id, name, reminder_offsets_days, channels, daily_nudge_cap, quiet_hours_start, quiet_hours_end)
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
    """Wait until the case has nothing pending, no activity (its nudge recorded) and no workflow
    task, so its actions are all in and none of its work is still running."""
    handle = client.get_workflow_handle(workflow_id)
    for _ in range(600):
        described = (await handle.describe()).raw_description
        if not described.pending_activities and not described.HasField("pending_workflow_task"):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{workflow_id}: an activity or workflow task still pending after 30 s")


STAGES = (
    "signalled",
    "task started",
    "decide started",
    "task completed",
    "send scheduled",
    "send started",
    "at the emulator",
)


async def stages(
    client, http, emulator_url: str, workflow_id: str, run_id: str, phone: str, sent: float
) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Where one nudge's time went, in ms after the signal was sent (wall clock `sent`), from the
    case's history (signalled; the first workflow task after it started and completed; the
    decision activity started, in runs from before it became a local activity; the send scheduled
    and started) and the emulator's record of the message."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    at: dict[str, float] = {}
    names: dict[int, str] = {}
    signalled = False
    for event in history.events:
        when = event.event_time.ToDatetime().replace(tzinfo=UTC).timestamp()
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED and not signalled:
            signalled = True
            at["signalled"] = when
        elif not signalled:
            continue
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            at.setdefault("task started", when)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            at.setdefault("task completed", when)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names[event.event_id] = name = event.activity_task_scheduled_event_attributes.activity_type.name
            if name == "send_message":
                at.setdefault("send scheduled", when)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            name = names.get(event.activity_task_started_event_attributes.scheduled_event_id, "")
            stage = {"churn_decide_nudge": "decide started", "send_message": "send started"}.get(name)
            if stage:
                at.setdefault(stage, when)
    record = (await emulator_messages(http, emulator_url, phone))[0]
    at["at the emulator"] = datetime.fromisoformat(record["accepted_at"]).timestamp()
    return {stage: (at[stage] - sent) * 1000 for stage in STAGES if stage in at}


async def main(cases: int, nudges: int, concurrency: int) -> Measured:
    configure_logging("json", "WARNING")
    company = f"bench-{uuid.uuid4().hex[:6]}"
    twilio_port = free_port()
    async with stack() as s, serve("twilio-emulator", twilio_port):
        emulator_url = f"http://127.0.0.1:{twilio_port}"
        gateway = TwilioGateway(twilio_client(emulator_url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True))
        churn = ChurnActivities(s.engine)
        # The send path and both workers as production builds them (`build_workers`, `sends`):
        # the messaging queue's rate limit, the dispatch delay and pacing, the interceptors.
        settings = Settings()
        sends = MessagingActivities(
            s.engine,
            gateway,
            Senders("whatsapp:+15005550006", "+15005550006"),
            SendPolicy(daily_cap=1000, quiet_hours=QuietHours(0, 0)),
            per_second=settings.send_rate,
        )
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        async with s.engine.begin() as conn:
            rows = (await conn.execute(SEED, {"company": company, "n": cases + CACHE})).all()
            phones = dict(
                (
                    await conn.execute(text("SELECT id, phone FROM memberships WHERE company_id = :c"), {"c": company})
                ).all()
            )
        rss_before = rss_mb()
        options = WorkerOptions(max_cached_workflows=CACHE)
        async with (
            Worker(
                s.client,
                task_queue=queue,
                workflows=[ChurnCaseWorkflow],
                activities=[churn.load_case, churn.decide_nudge, churn.record_action],
                **jobs_tuning(options),
            ),
            Worker(
                s.client,
                task_queue=f"{queue}-msg",
                activities=[sends.send_message, sends.send_messages],
                **messaging_tuning(settings, options),
            ),
        ):
            slots = asyncio.Semaphore(concurrency)

            async def open_one(case_id: int) -> None:
                async with slots:
                    await s.client.start_workflow(
                        ChurnCaseWorkflow.run,
                        ChurnCaseInput(
                            case_id=case_id,
                            company_id=company,
                            manage_link="https://pay.example.test/m",
                            messaging_task_queue=f"{queue}-msg",
                        ),
                        id=f"churn-case/{case_id}",
                        task_queue=queue,
                        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    )

            # Steady state, as benchmarks/orders.py: CACHE cases opened first (unmeasured) fill the
            # worker's cache, so each measured opening evicts one at every size, and the CPU is read
            # once the server's deferred work for the last openings is done.
            warm, rows = rows[:CACHE], rows[CACHE:]
            await asyncio.gather(*(open_one(case_id) for case_id, _ in warm))
            await all_asleep(s.client, [case_id for case_id, _ in warm[-20:]])
            await after_deferred_work()
            open_cpu_before, started = cpu_seconds(), time.perf_counter()
            await asyncio.gather(*(open_one(case_id) for case_id, _ in rows))
            open_elapsed = time.perf_counter() - started
            await all_asleep(s.client, [case_id for case_id, _ in rows[-20:]])
            asleep_elapsed = time.perf_counter() - started
            await after_deferred_work()
            open_cpu = cpu_used(open_cpu_before, cpu_seconds())
            # The server goes on working through what 10,000 starts left it (their search
            # attributes, timers, task queues) after the last case sleeps: a nudge timed then
            # measures that backlog. Nudges begin when every process here is idle.
            idle_after = await until_idle(busy=0.1)
            rss_sleeping = rss_mb()

            nudged = rows[:: max(1, len(rows) // nudges)][:nudges]
            runs = {
                case_id: (await s.client.get_workflow_handle(f"churn-case/{case_id}").describe()).run_id
                for case_id, _ in nudged
            }
            actions_before = {
                case_id: await count_actions(s.client, f"churn-case/{case_id}", runs[case_id] or "")
                for case_id, _ in nudged
            }
            # An open case's billable actions so far (its start, timers, upserts), on the nudged sample.
            billable_before = {
                case_id: await count_billable(s.client, f"churn-case/{case_id}") for case_id, _ in nudged
            }
            latencies: list[float] = []
            sent_at: dict[int, float] = {}
            # CPU is summed over each nudge's own window, signal to acceptance: not the waits between.
            nudge_cpu = dict.fromkeys(cpu_seconds(), 0.0)
            async with aiohttp.ClientSession() as http:
                for previous, (case_id, membership) in zip([None, *nudged], nudged, strict=False):
                    if previous is not None:
                        # One nudge at a time means alone: the previous case's bookkeeping after its
                        # message (the send's completion, `record_action`, their workflow tasks) is
                        # finished before the next signal, as an operator's next click would find it.
                        # Sent on the heels of the last message, each nudge shared the machine with
                        # that tail: p50 97 against 55 ms at 2,000 cases. The server goes on a little
                        # after the case has nothing pending (its last task's persistence, visibility).
                        await settled(s.client, f"churn-case/{previous[0]}")
                        await until_idle(busy=0.2, window_s=0.1, timeout_s=10)  # and the server's share of it
                    phone = phones[membership]
                    cpu_before = cpu_seconds()
                    sent = sent_at[case_id] = time.time()
                    await s.client.get_workflow_handle(f"churn-case/{case_id}").signal(
                        ChurnCaseWorkflow.manual_nudge, {"actor_id": "bench", "company_id": company}
                    )
                    while not (accepted := await emulator_messages(http, emulator_url, phone)):
                        if time.time() - sent > NUDGE_TIMEOUT_S:
                            raise SystemExit(f"case {case_id}: no message {NUDGE_TIMEOUT_S:.0f} s after its nudge")
                        await asyncio.sleep(POLL_S)
                    # The emulator's own clock (this machine's) says when it accepted the message:
                    # the poll's interval is not part of the latency.
                    latencies.append(datetime.fromisoformat(accepted[0]["accepted_at"]).timestamp() - sent)
                    for name, seconds in cpu_seconds().items():
                        nudge_cpu[name] += seconds - cpu_before[name]
            cpu = cpu_per(dict.fromkeys(nudge_cpu, 0.0), nudge_cpu, len(nudged), "nudge")
            rss_after = rss_mb()
            async with aiohttp.ClientSession() as http:
                split = [
                    await stages(
                        s.client,
                        http,
                        emulator_url,
                        f"churn-case/{case_id}",
                        runs[case_id] or "",
                        phones[membership],
                        sent_at[case_id],
                    )
                    for case_id, membership in nudged
                ]
            nudge_actions = nudge_billable = 0
            for case_id, _ in nudged:
                await settled(s.client, f"churn-case/{case_id}")
                nudge_actions += (
                    await count_actions(s.client, f"churn-case/{case_id}", runs[case_id] or "")
                    - actions_before[case_id]
                )
                nudge_billable += await count_billable(s.client, f"churn-case/{case_id}") - billable_before[case_id]
        await gateway.close()

    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731 - a one-line percentile
    print(f"machine: {machine()}")
    print(
        f"opened {cases} cases in {open_elapsed:.1f}s (all asleep after {asleep_elapsed:.1f}s)"
        f" = {cases / open_elapsed:,.0f} starts/s ({concurrency} in flight);"
        f" idle {idle_after:.0f} s later"
    )
    print(
        f"worker RSS (in-process, cache {CACHE}): {rss_before:.0f} MB before,"
        f" {rss_sleeping:.0f} MB with {cases} cases asleep,"
        f" {rss_after:.0f} MB after the nudges"
    )
    print(
        f"manual nudge, signal -> accepted by the emulator ({len(latencies)} nudges, one at a time):"
        f" p50 {p(0.5) * 1000:.0f} ms, p99 {p(0.99) * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms,"
        f" mean {statistics.fmean(latencies) * 1000:.0f} ms"
    )
    print(f"{cpu}, from signal to acceptance (a loaded machine stretches each ms of it)")
    print(
        f"Temporal actions of the nudges: {nudge_actions} for {len(latencies)} nudges"
        f" = {nudge_actions / len(latencies):.2f} per nudge ({nudge_billable / len(latencies):.2f} billable);"
        f" an open case before its nudge: {statistics.fmean(billable_before.values()):.2f} billable actions"
    )
    print(f"opening: {cpu_per(dict.fromkeys(open_cpu, 0.0), open_cpu, cases, 'case opened')}")
    print("where the time went (ms after the signal was sent; from the histories and the emulator):")
    for stage in STAGES:
        reached = sorted(x[stage] for x in split if stage in x)
        if reached:
            print(
                f"  {stage:>16}: p50 {statistics.median(reached):6.1f}"
                f"  p99 {reached[min(len(reached) - 1, int(0.99 * len(reached)))]:6.1f}"
            )
    figure(f"churn: manual nudge to emulator p50 ({cases} open cases)", p(0.5) * 1000, "ms", target="< 60")
    figure(f"churn: manual nudge to emulator p99 ({cases} open cases)", p(0.99) * 1000, "ms", target="< 120")
    figure("churn: Temporal actions per nudge", nudge_actions / len(latencies), "actions", target="<= 3")
    print_load_at_end()
    return Measured(
        cases,
        "case opened",
        asleep_elapsed,
        open_cpu,
        statistics.fmean(billable_before.values()),
        {
            "nudge p50 ms": p(0.5) * 1000,
            "nudge p99 ms": p(0.99) * 1000,
            "nudge CPU ms (all processes)": sum(nudge_cpu.values()) * 1000 / len(nudged),
            "billable actions per nudge": nudge_billable / len(latencies),
            "worker RSS MB (all asleep)": rss_sleeping,
        },
    )


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
