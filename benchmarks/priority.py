"""Benchmark: interactive messages ahead of bulk, and fairness between companies (issue #38, point 1).

    python benchmarks/priority.py --retailers 10000 --limit 200 --nudges 200 --small-company 100 --burst-limit 20

Both runs send through the product's send path (`MessagingActivities`, paced as production at
SEND_RATE_HEADROOM x LIMIT, the queue's rate limit set the same) to a Twilio emulator in its own
process that allows LIMIT msg/s; every latency is the emulator's acceptance time (its own clock)
less the moment the benchmark started the send's workflow.

Run 1, manual nudges: a workflow per nudge that sends as the churn case's manual nudge does
(`deliver`, kind `manual_nudge`, the company's fairness key), one every NUDGE_INTERVAL_S; first
on an idle queue, then while a reminders day of RETAILERS messages goes out (`MessageBatchWorkflow`
with kind `reminder`: the reminders workflow's `send_batches` and activity options, without its
database pages). Prints p50/p99 of both and the ratio p99 during / p99 idle (target <= 2).

Run 2, two companies: the small company's SMALL due nudges (kind `churn_nudge`, as a case's
automatic cadence sends them, each case and send weighted by its company's open cases as
`start_case` and `decide_nudge` weigh them) alone, then again started just after the big company's
20 x SMALL; the time from the small company's start to its last message accepted, with the burst /
alone (target <= 1.1). Without fairness keys the small company's nudges wait behind the whole
burst. Run at LIMIT and again at BURST_LIMIT (20 msg/s): at 200 msg/s this machine's dev server,
not the provider, is what both companies wait for (about 50 case workflows a second on two
cores, docs/BENCHMARKS.md), and its history service hands work on first in, first out (Temporal
applies priority and fairness in matching only); at 20 msg/s the provider's limit is what they
share, as on a cluster at 200.

Prints the load average at start and end; `--small`-sized runs (bench.py) check that it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from pydantic import BaseModel
from sqlalchemy import text
from temporalio import workflow
from temporalio.worker import Worker

from benchmarks.harness import (
    Stack,
    figure,
    free_port,
    machine,
    print_load_at_end,
    require_quiet,
    serve,
    stack,
    until_idle,
    worker_process,
)
from config.settings import SEND_RATE_HEADROOM
from schemas.messaging import MessageBatch, MessageKind, SendMessage
from workers.log import configure_logging
from workflows.messaging import MessageBatchWorkflow, company_priority, company_weight, deliver

NUDGE_INTERVAL_S = 0.2
"""Five manual nudges a second (200 in 40 s, inside a 10,000-reminder day at 200 msg/s): an
operator team at work, not a burst of its own."""
BIG_TIMES = 20
BULK_CHUNK = 4000  # messages per MessageBatchWorkflow: Temporal's 2 MB payload limit
REMINDERS_IN_FLIGHT = 50  # RemindersRequest.max_in_flight's default


class Nudge(BaseModel):
    message: SendMessage
    kind: MessageKind
    tenant: str | None = None
    weight: float | None = None
    task_queue: str


@workflow.defn(name="BenchNudge", sandboxed=False)
class NudgeWorkflow:
    """One nudge as the churn case sends it: `deliver` with the nudge's kind and the company."""

    @workflow.run
    async def run(self, nudge: Nudge) -> str:
        outcome = await deliver(
            nudge.message, kind=nudge.kind, tenant=nudge.tenant, weight=nudge.weight, task_queue=nudge.task_queue
        )
        return outcome.status


def message(key: str, rid: int) -> SendMessage:
    return SendMessage(
        idempotency_key=f"{key}:{rid}", recipient_type="retailer", recipient_id=str(rid), template="credit_resumed"
    )


async def accepted_at(url: str) -> dict[str, float]:
    """When the emulator accepted a message, by recipient phone (its own clock, epoch seconds)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/_emulator/messages") as response:
            rows = await response.json()
    rows = rows if isinstance(rows, list) else rows.get("messages", [])
    return {m["to"]: datetime.fromisoformat(m["accepted_at"]).timestamp() for m in rows}


@asynccontextmanager
async def production_sender(s: Stack, limit: float) -> AsyncIterator[tuple[str, str]]:
    """The emulator at `limit`, a jobs worker and a messaging worker as production's; (queue, url).

    The messaging worker runs in a process of its own (benchmarks/messaging_worker.py), as
    production deploys it (deploy/k8s/release/worker-messaging.yaml): a manual nudge's workflow
    task and its send do not queue for the same event loop as a reminders day's sends."""
    port = free_port()
    async with serve("twilio-emulator", port, "--rate-limit", str(limit)):
        url = f"http://127.0.0.1:{port}"
        queue = f"prio-{uuid.uuid4().hex[:8]}"
        pace = ("--per-second", str(limit * SEND_RATE_HEADROOM))
        async with (
            Worker(s.client, task_queue=queue, workflows=[MessageBatchWorkflow, NudgeWorkflow]),
            worker_process(s, "benchmarks.messaging_worker", f"{queue}-messaging", url, *pace),
        ):
            yield queue, url


async def start_nudge(
    s: Stack, queue: str, msg: SendMessage, kind: MessageKind, tenant: str, open_cases: int | None = None
) -> float:
    """Start one nudge's workflow; the wall-clock moment it was asked for. A case's nudge carries
    its company's weight as `ChurnCaseWorkflow` sends it (`open_cases`: what `decide_nudge` counts)."""
    asked = time.time()
    await s.client.start_workflow(
        NudgeWorkflow.run,
        Nudge(
            message=msg,
            kind=kind,
            tenant=tenant,
            weight=None if open_cases is None else company_weight(open_cases),
            task_queue=f"{queue}-messaging",
        ),
        id=f"nudge/{msg.idempotency_key}",
        task_queue=queue,
        priority=company_priority(
            tenant, None if open_cases is None else company_weight(open_cases)
        ),  # as `start_case` starts a churn case
    )
    return asked


async def nudge_latencies(s: Stack, queue: str, url: str, ids: list[int], phones: dict[int, str]) -> list[float]:
    """Manual nudges to `ids`, one every NUDGE_INTERVAL_S; seconds from each start to its acceptance."""
    asked: dict[int, float] = {}
    label = uuid.uuid4().hex[:6]
    for rid in ids:
        asked[rid] = await start_nudge(s, queue, message(f"manual-{label}", rid), "manual_nudge", "acme")
        await asyncio.sleep(NUDGE_INTERVAL_S)
    wanted = {phones[rid] for rid in ids}
    while not wanted <= set(seen := await accepted_at(url)):
        await asyncio.sleep(0.2)
    return [seen[phones[rid]] - asked[rid] for rid in ids]


async def reminders_day(s: Stack, queue: str, ids: list[int]) -> list:
    """A day's reminders, as the reminders workflow hands them to the messaging queue; the handles."""
    chunks = [ids[i : i + BULK_CHUNK] for i in range(0, len(ids), BULK_CHUNK)]
    return [
        await s.client.start_workflow(
            MessageBatchWorkflow.run,
            MessageBatch(
                messages=[message("reminder", rid) for rid in chunk],
                max_in_flight=max(1, REMINDERS_IN_FLIGHT // len(chunks)),
                task_queue=f"{queue}-messaging",
                kind="reminder",
            ),
            id=f"reminders/{uuid.uuid4()}",
            task_queue=queue,
        )
        for chunk in chunks
    ]


async def company_burst(
    s: Stack, queue: str, url: str, small: list[int], big: list[int], phones: dict[int, str]
) -> float:
    """Seconds from the small company's first start to its last message accepted; the big
    company's nudges (if any) are all started first. Each company's open cases are its due nudges."""
    label = uuid.uuid4().hex[:6]
    await asyncio.gather(
        *(start_nudge(s, queue, message(f"big-{label}", rid), "churn_nudge", "big-company", len(big)) for rid in big)
    )
    started = time.time()
    await asyncio.gather(
        *(
            start_nudge(s, queue, message(f"small-{label}", rid), "churn_nudge", "small-company", len(small))
            for rid in small
        )
    )
    everyone = {phones[rid] for rid in small + big}
    while not everyone <= set(seen := await accepted_at(url)):
        await asyncio.sleep(0.2)
    return max(seen[phones[rid]] for rid in small) - started


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def two_companies(
    s: Stack, limit: float, small: list[int], big: list[int], phones: dict[int, str]
) -> tuple[float, float]:
    """The small company's time to its last message alone, then beside the big company's burst."""
    half = len(small) // 2
    async with production_sender(s, limit) as (queue, url):
        alone = await company_burst(s, queue, url, small[:half], [], phones)
    await until_idle()
    async with production_sender(s, limit) as (queue, url):
        beside = await company_burst(s, queue, url, small[half:], big, phones)
    await until_idle()
    return alone, beside


async def main(retailers: int, limit: float, nudges: int, small_company: int, burst_limit: float) -> None:
    configure_logging("json", "WARNING")
    big_company = BIG_TIMES * small_company
    total = retailers + 2 * nudges + 2 * (2 * small_company + big_company)
    async with stack() as s:
        async with s.engine.begin() as conn:
            rows = await conn.execute(
                text(
                    "INSERT INTO retailers (name, phone, preferred_channel) SELECT 'Bench ' || g,"
                    " '+1333' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(1, :n) g RETURNING id, phone"
                ),
                {"n": total},
            )
            phones = {rid: phone for rid, phone in rows}
        ids = sorted(phones)
        bulk, ids = ids[:retailers], ids[retailers:]
        idle_ids, during_ids, ids = ids[:nudges], ids[nudges : 2 * nudges], ids[2 * nudges :]
        companies = 2 * small_company + big_company
        at_limit, at_burst_limit = ids[:companies], ids[companies:]

        async with production_sender(s, limit) as (queue, url):
            idle = await nudge_latencies(s, queue, url, idle_ids, phones)
        await until_idle()
        async with production_sender(s, limit) as (queue, url):
            day = await reminders_day(s, queue, bulk)
            await asyncio.sleep(2.0)  # the day's backlog builds up first
            during = await nudge_latencies(s, queue, url, during_ids, phones)
            backlog_left = retailers - len(await accepted_at(url)) + len(during_ids)
            await asyncio.gather(*(h.result() for h in day))
        await until_idle()
        company_runs = {}
        for rate, run_ids in ((limit, at_limit), (burst_limit, at_burst_limit)):
            small, big = run_ids[: 2 * small_company], run_ids[2 * small_company :]
            company_runs[rate] = await two_companies(s, rate, small, big, phones)

    print(f"machine: {machine()}")
    print(f"limit {limit:.0f} msg/s; a manual nudge every {NUDGE_INTERVAL_S} s")
    print(f"manual nudge -> emulator, idle: p50 {p(idle, 50) * 1000:.0f} ms, p99 {p(idle, 99) * 1000:.0f} ms")
    print(
        f"manual nudge -> emulator, during a {retailers:,}-retailer reminders day: p50 {p(during, 50) * 1000:.0f} ms,"
        f" p99 {p(during, 99) * 1000:.0f} ms (reminders still queued when the last nudge went out: {backlog_left:,})"
    )
    print(f"  ratio p99 during / p99 idle: {p(during, 99) / p(idle, 99):.2f}")
    for rate, (alone, beside) in company_runs.items():
        print(
            f"small company's {small_company} nudges at {rate:.0f} msg/s: alone {alone:.2f} s; started after the big"
            f" company's {big_company:,}: {beside:.2f} s; ratio {beside / alone:.2f}"
            f" (first in, first out it would be about {(big_company + small_company) / small_company:.0f})"
        )
    figure(
        "priority: manual nudge p99 during a reminders day",
        p(during, 99),
        "s",
        floor=p(idle, 99),
        floor_name="p99 on an idle queue",
        target="<= 2",
    )
    for rate, (alone, beside) in company_runs.items():
        figure(
            f"priority: small company's nudges beside a 20x burst at {rate:.0f} msg/s",
            beside,
            "s",
            floor=alone,
            floor_name="the small company alone",
            target="<= 1.1",
        )
    print_load_at_end()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retailers", type=int, default=10000, help="the reminders day's messages")
    parser.add_argument("--limit", type=float, default=200.0, help="msg/s, the emulator's and the send path's")
    parser.add_argument("--nudges", type=int, default=200, help="manual nudges idle, and as many during the day")
    parser.add_argument(
        "--burst-limit",
        type=float,
        default=20.0,
        help="msg/s of run 2's second pair: a rate this machine's dev server keeps up with, so the provider's limit"
        " is what the companies share",
    )
    parser.add_argument(
        "--small-company", type=int, default=100, help=f"the small company's due nudges (the big one has {BIG_TIMES}x)"
    )
    args = parser.parse_args()
    if min(args.retailers, args.nudges, args.small_company) < 2 or min(args.limit, args.burst_limit) <= 0:
        parser.error("--retailers, --nudges and --small-company must be >= 2, --limit and --burst-limit > 0")
    require_quiet()
    asyncio.run(main(args.retailers, args.limit, args.nudges, args.small_company, args.burst_limit))
