"""Benchmark: sends through the outbox and the rate-limited messaging queue, end to end.

    python benchmarks/messaging.py --messages 20000 --limit 200 --in-flight 50

Run 1: the emulator allows LIMIT msg/s and the messaging worker is set up as production's (the
queue's rate limit and each message's slot in `messaging_pace` at SEND_RATE_HEADROOM x LIMIT);
prints achieved msg/s as a share of the limit and the share of create requests Twilio answered
429. Run 2: no limit anywhere; prints msg/s. Run 3, Temporal alone, twice: one activity per
message that does nothing (the floor the targets are set against: what Temporal costs a send path
of one activity per message), and the same batched workflow with a batch activity that does
nothing. Run 4: two `jobctl worker` processes share the limit. Each run also prints its CPU per
message by process.

For the send path itself (issue #38 point 3) the unlimited run is set against the batched no-op
floor of the same run: msg/s, the floor, their ratio (target >= 0.3), and CPU per message in the
worker, Temporal and PostgreSQL (target <= 1.2 ms in all three; the emulator is printed apart and
not counted: Twilio's side). `--send-path` runs only those two, to measure one change at a time:

    python benchmarks/messaging.py --messages 6000 --send-path
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from sqlalchemy import text
from temporalio import activity, workflow
from temporalio.worker import Worker

from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from benchmarks.harness import (
    Stack,
    cpu_ms,
    cpu_seconds,
    figure,
    free_port,
    machine,
    print_load_at_end,
    require_quiet,
    serve,
    stack,
    wait_for_pollers,
)
from config.settings import SEND_RATE_HEADROOM
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from schemas.messaging import (
    BatchItemOutcome,
    MessageBatch,
    MessageBatchResult,
    SendBatch,
    SendBatchResult,
    SendMessage,
    SendOutcome,
)
from workers.log import configure_logging
from workers.worker import WorkerOptions
from workflows.messaging import MessageBatchWorkflow, send_message


def batch_of(label: str, retailer_ids: Iterable[int], in_flight: int, task_queue: str) -> MessageBatch:
    return MessageBatch(
        messages=[
            SendMessage(
                idempotency_key=f"{label}:{rid}",
                recipient_type="retailer",
                recipient_id=str(rid),
                template="credit_resumed",
            )
            for rid in retailer_ids
        ],
        max_in_flight=in_flight,
        task_queue=task_queue,
    )


BATCH_SIZE = 4000  # messages per MessageBatchWorkflow: 20,000 in one input exceed Temporal's 2 MB payload limit


async def run_batches(s: Stack, label: str, ids: list[int] | range, in_flight: int, queue: str) -> tuple[int, int]:
    """The messages as concurrent batch workflows of BATCH_SIZE, `in_flight` sends outstanding in all;
    returns (sent, duplicates)."""
    chunks = [ids[i : i + BATCH_SIZE] for i in range(0, len(ids), BATCH_SIZE)]
    each = max(1, in_flight // len(chunks))
    results = await asyncio.gather(
        *(
            s.client.execute_workflow(
                MessageBatchWorkflow.run,
                batch_of(label, chunk, each, f"{queue}-messaging"),
                id=f"{label}/{uuid.uuid4()}",
                task_queue=queue,
            )
            for chunk in chunks
        )
    )
    return sum(r.sent for r in results), sum(r.duplicates for r in results)


async def emulator_stats(url: str) -> tuple[dict, list[float]]:
    """The emulator's counters and, from its own clock, when it accepted each message."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/_emulator/stats") as response:
            stats = await response.json()
        async with http.get(f"{url}/_emulator/messages") as response:
            messages = await response.json()
    rows = messages if isinstance(messages, list) else messages.get("messages", [])
    stamps = sorted(datetime.fromisoformat(m["accepted_at"]).timestamp() for m in rows)
    return stats, stamps


def steady_rate(stamps: list[float]) -> float:
    """Accepted per second after the first second (both limiters' one-second burst), to the last."""
    begin = stamps[0] + 1.0
    after = [t for t in stamps if t > begin]
    return len(after) / (after[-1] - begin) if len(after) > 1 else float("nan")


async def run(
    s: Stack, retailer_ids: list[int], limit: float | None, label: str, in_flight: int
) -> tuple[float, dict, dict[str, float]]:
    """One batch through the product's send activity in this process.

    With a limit, the worker is configured as production's is (`build_workers`): the queue at
    `SEND_RATE_HEADROOM` x the limit, and each message's slot of that rate reserved in
    `messaging_pace`. Without one there is no pace to keep: what is left is the send path's cost.
    """
    # The emulator in its own process, as Twilio is: the worker's event loop serves only the worker.
    port = free_port()
    async with serve("twilio-emulator", port, *(["--rate-limit", str(limit)] if limit else [])):
        url = f"http://127.0.0.1:{port}"
        gateway = TwilioGateway(twilio_client(url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True))
        sends = MessagingActivities(
            s.engine,
            gateway,
            Senders("whatsapp:+15005550006", "+15005550006"),
            SendPolicy(daily_cap=1000, quiet_hours=QuietHours(0, 0)),
            per_second=limit * SEND_RATE_HEADROOM if limit else None,
        )
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        worker_options = {"max_task_queue_activities_per_second": limit * SEND_RATE_HEADROOM} if limit else {}
        async with (
            Worker(s.client, task_queue=queue, workflows=[MessageBatchWorkflow]),
            Worker(
                s.client,
                task_queue=f"{queue}-messaging",
                activities=[sends.send_message, sends.send_messages],
                max_concurrent_activities=WorkerOptions().max_concurrent_sends,
                **worker_options,
            ),
        ):
            cpu_before, started = cpu_seconds(), time.perf_counter()
            sent, _ = await run_batches(s, label, retailer_ids, in_flight, queue)
            elapsed = time.perf_counter() - started
            cpu = cpu_ms(cpu_before, cpu_seconds(), len(retailer_ids))
        await gateway.close()
        stats, _ = await emulator_stats(url)
    assert sent == len(retailer_ids), sent
    return len(retailer_ids) / elapsed, stats, cpu


async def two_workers(s: Stack, retailer_ids: list[int], limit: float, in_flight: int) -> tuple[float, dict]:
    """Two `jobctl worker --task-queue messaging` processes sharing one limit, as deployed: the
    rate is the emulator's steady accepted rate (its own clock), as a share of the limit."""
    port = free_port()
    async with serve("twilio-emulator", port, "--rate-limit", str(limit)):
        url = f"http://127.0.0.1:{port}"
        queue = f"two-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "DATABASE_URL": s.database_url,
            "TEMPORAL_ADDRESS": s.client.service_client.config.target_host,
            "MESSAGING_TASK_QUEUE": f"{queue}-messaging",
            "TWILIO_API_BASE": url,
            "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
            "MESSAGES_PER_SECOND": str(limit),
            "MESSAGE_DAILY_CAP": "1000",
            "QUIET_HOURS_START": "0",
            "QUIET_HOURS_END": "0",
            "LOG_LEVEL": "WARNING",
        }
        jobctl = str(Path(sys.executable).parent / "jobctl")
        workers = [
            await asyncio.create_subprocess_exec(
                jobctl,
                "worker",
                "--task-queue",
                "messaging",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        try:
            await wait_for_pollers(s, f"{queue}-messaging", 2)
            async with Worker(s.client, task_queue=queue, workflows=[MessageBatchWorkflow]):
                sent, duplicates = await run_batches(s, "two", retailer_ids, in_flight, queue)
        finally:
            for worker in workers:
                worker.terminate()
            await asyncio.gather(*(w.wait() for w in workers))
        stats, stamps = await emulator_stats(url)
    assert sent + duplicates == len(retailer_ids), (sent, duplicates)
    return steady_rate(stamps), stats


@activity.defn(name="send_message")
async def send_nothing(request: SendMessage) -> SendOutcome:
    """The floor: the same queue, with a send that does no work at all."""
    return SendOutcome(status="sent", provider_sid=f"SM{request.idempotency_key}", channel="sms")


@activity.defn(name="send_messages")
async def send_nothing_in_batches(batch: SendBatch) -> SendBatchResult:
    """The batched floor: a batch activity that does no work at all."""
    return SendBatchResult(
        outcomes=[BatchItemOutcome(idempotency_key=m.idempotency_key, status="sent") for m in batch.messages]
    )


@workflow.defn(name="MessageBatchWorkflow", sandboxed=False)
class OneActivityPerMessage:
    """MessageBatchWorkflow as it was before batched sends (one `send_message` per message,
    `max_in_flight` at a time): the floor the issue's targets were set against, kept so its ratios
    still mean that."""

    @workflow.run
    async def run(self, batch: MessageBatch) -> MessageBatchResult:
        slots = asyncio.Semaphore(batch.max_in_flight)

        async def one(message: SendMessage) -> SendOutcome:
            async with slots:
                return await send_message(message, kind="broadcast", task_queue=batch.task_queue)

        outcomes = await asyncio.gather(*(one(m) for m in batch.messages))
        return MessageBatchResult(sent=sum(o.status == "sent" for o in outcomes))


async def temporal_floor(s: Stack, count: int, in_flight: int, *, batched: bool) -> tuple[float, dict[str, float]]:
    """What Temporal alone costs per message on this machine, with no-op activities: batched, the
    same MessageBatchWorkflow; not, one activity per message."""
    queue = f"floor-{uuid.uuid4().hex[:8]}"
    flow = MessageBatchWorkflow if batched else OneActivityPerMessage
    async with (
        Worker(s.client, task_queue=queue, workflows=[flow]),
        Worker(
            s.client,
            task_queue=f"{queue}-messaging",
            activities=[send_nothing, send_nothing_in_batches],
            max_concurrent_activities=WorkerOptions().max_concurrent_sends,
        ),
    ):
        cpu_before, started = cpu_seconds(), time.perf_counter()
        sent, _ = await run_batches(s, "floor-b" if batched else "floor", range(count), in_flight, queue)
        elapsed = time.perf_counter() - started
        cpu = cpu_ms(cpu_before, cpu_seconds(), count)
    assert sent == count, sent
    return count / elapsed, cpu


def per_process(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu.items() if ms > 0)


WORKER, TEMPORAL, POSTGRESQL, EMULATOR = "benchmark process", "temporal server", "postgresql", "served (`serve`)"
SEND_PATH_FLOOR_TARGET, SEND_PATH_CPU_TARGET = ">= 0.3", "<= 1.2"


def send_path_cpu(cpu: dict[str, float]) -> float:
    """CPU ms per message in the send path's own processes: the worker (this process), Temporal and
    PostgreSQL. The emulator stands for Twilio and is not counted."""
    return cpu[WORKER] + cpu[TEMPORAL] + cpu[POSTGRESQL]


def print_send_path(
    free_rate: float, free_cpu: dict[str, float], batched_rate: float, batched_cpu: dict[str, float], messages: int
) -> None:
    print(
        f"send path (unlimited, {messages} messages): {free_rate:,.1f} msg/s; batched no-op floor (same run)"
        f" {batched_rate:,.1f} msg/s; ratio {free_rate / batched_rate:.3f} (target {SEND_PATH_FLOOR_TARGET})"
    )
    print(
        f"  CPU per message: worker {free_cpu[WORKER]:.3f} + Temporal {free_cpu[TEMPORAL]:.3f}"
        f" + PostgreSQL {free_cpu[POSTGRESQL]:.3f} = {send_path_cpu(free_cpu):.3f} ms"
        f" (target {SEND_PATH_CPU_TARGET}); emulator {free_cpu.get(EMULATOR, 0.0):.3f} ms, not counted"
    )
    print(
        f"  the floor's CPU per message: worker {batched_cpu[WORKER]:.3f} + Temporal {batched_cpu[TEMPORAL]:.3f}"
        f" + PostgreSQL {batched_cpu[POSTGRESQL]:.3f} = {send_path_cpu(batched_cpu):.3f} ms"
    )


def send_path_figures(free_rate: float, free_cpu: dict[str, float], batched_rate: float) -> None:
    figure(
        "messaging: unlimited send path to the batched no-op floor",
        free_rate,
        "msg/s",
        floor=batched_rate,
        floor_name="the same batched workflow, a no-op batch activity",
        target=SEND_PATH_FLOOR_TARGET,
    )
    figure(
        "messaging: CPU per message, unlimited (worker + Temporal + PostgreSQL)",
        send_path_cpu(free_cpu),
        "ms",
        target=SEND_PATH_CPU_TARGET,
    )


async def send_path_only(messages: int, in_flight: int) -> None:
    """The unlimited run and the batched no-op floor, nothing else (one change at a time)."""
    configure_logging("json", "WARNING")
    async with stack() as s:
        ids = await insert_retailers(s, messages)
        free_rate, _, free_cpu = await run(s, ids, None, "free", in_flight)
        batched_rate, batched_cpu = await temporal_floor(s, messages, in_flight, batched=True)
    print(f"machine: {machine()}")
    print_send_path(free_rate, free_cpu, batched_rate, batched_cpu, messages)
    send_path_figures(free_rate, free_cpu, batched_rate)
    print_load_at_end()


async def insert_retailers(s: Stack, count: int) -> list[int]:
    async with s.engine.begin() as conn:
        return list(
            (
                await conn.execute(
                    text(
                        "INSERT INTO retailers (name, phone, preferred_channel) SELECT 'Bench ' || g,"
                        " '+1222' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(1, :n) g RETURNING id"
                    ),
                    {"n": count},
                )
            )
            .scalars()
            .all()
        )


async def main(messages: int, limit: float, in_flight: int, two_worker_messages: int) -> None:
    configure_logging("json", "WARNING")
    async with stack() as s:
        ids = await insert_retailers(s, messages)
        limited_rate, limited, limited_cpu = await run(s, ids, limit, "limited", in_flight)
        free_rate, _, free_cpu = await run(s, ids, None, "free", in_flight)
        floor_rate, floor_cpu = await temporal_floor(s, messages, in_flight, batched=False)
        batched_rate, batched_cpu = await temporal_floor(s, messages, in_flight, batched=True)
        two_rate, two = await two_workers(s, ids[:two_worker_messages], limit, in_flight)
    requests = limited["accepted"] + limited["rate_limited"] + limited.get("faults", 0)
    two_requests = two["accepted"] + two["rate_limited"]
    worker = WORKER  # the worker runs in this process
    print(f"machine: {machine()}")
    print(f"{in_flight} sends in flight; each message's slot at {SEND_RATE_HEADROOM} x the limit")
    print(
        f"limited to {limit:.0f} msg/s: {limited_rate:,.1f} msg/s = {limited_rate / limit:.3f} of the limit; "
        f"429s: {limited['rate_limited']} of {requests} requests ({limited['rate_limited'] / requests:.2%})"
    )
    print(f"  CPU per message: {per_process(limited_cpu)}")
    print(
        f"two worker processes, {two_worker_messages} messages: steady {two_rate:,.1f} msg/s = "
        f"{two_rate / limit:.3f} of the limit; 429s {two['rate_limited']} of {two_requests}"
    )
    print(f"no limit: {free_rate:,.1f} msg/s ({messages} messages)")
    print(f"  CPU per message: {per_process(free_cpu)}")
    print(f"Temporal alone, one activity per message that does nothing: {floor_rate:,.1f} sends/s")
    print(f"  CPU per no-op send: {per_process(floor_cpu)}")
    print(
        f"Temporal alone, the same batched workflow, a batch activity that does nothing: {batched_rate:,.1f} msg/s"
        f" (the send path reaches {free_rate / batched_rate:.3f} of it)"
    )
    print(f"  CPU per no-op message: {per_process(batched_cpu)}")
    print_send_path(free_rate, free_cpu, batched_rate, batched_cpu, messages)
    figure(
        f"messaging: accepted rate at a {limit:.0f} msg/s limit",
        limited_rate,
        "msg/s",
        floor=limit,
        floor_name="the limit",
        target=">= 0.98",
    )
    figure("messaging: share of requests answered 429", limited["rate_limited"] / requests, "", target="< 0.005")
    figure(
        "messaging: two workers' combined steady rate",
        two_rate,
        "msg/s",
        floor=limit,
        floor_name="the limit",
        target=">= 0.95",
    )
    figure(
        "messaging: two workers' combined steady rate (upper bound)",
        two_rate,
        "msg/s",
        floor=limit,
        floor_name="the limit",
        target="<= 1.02",
    )
    figure(
        "messaging: unlimited send path",
        free_rate,
        "msg/s",
        floor=floor_rate,
        floor_name="Temporal alone, an activity per message",
        target=">= 0.66",
    )
    figure(
        "messaging: worker CPU per message, unlimited",
        free_cpu[worker],
        "ms",
        floor=floor_cpu[worker],
        floor_name="Temporal alone, an activity per message",
        target="<= 2",
    )
    send_path_figures(free_rate, free_cpu, batched_rate)
    print_load_at_end()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--limit", type=float, default=200.0)
    parser.add_argument(
        "--in-flight",
        type=int,
        default=50,
        help="sends outstanding at once over all batches (200 halves a batch workflow's own rate)",
    )
    parser.add_argument("--two-worker-messages", type=int, default=4000, help="messages for the two-process run")
    parser.add_argument(
        "--send-path", action="store_true", help="only the unlimited run and the batched no-op floor (issue #38 pt 3)"
    )
    args = parser.parse_args()
    if args.messages < 1 or args.limit <= 0:
        parser.error("--messages must be >= 1 and --limit > 0")
    require_quiet()
    if args.send_path:
        asyncio.run(send_path_only(args.messages, args.in_flight))
        sys.exit(0)
    asyncio.run(main(args.messages, args.limit, args.in_flight, min(args.two_worker_messages, args.messages)))
