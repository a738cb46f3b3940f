"""Benchmark: sends through the outbox and the rate-limited messaging queue, end to end.

    python benchmarks/messaging.py --messages 5000 --limit 200 --in-flight 50

Run 1: the emulator allows LIMIT msg/s and the messaging worker sets Temporal's task-queue
rate limit to the same figure; prints achieved msg/s as a share of the limit and the share of
create requests Twilio answered 429. Run 2: no limit anywhere; prints msg/s. Run 3: the same
workflow with a send activity that does nothing, i.e. Temporal's own ceiling on this machine.
Each run also prints its CPU per message by process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from sqlalchemy import text  # noqa: E402
from temporalio import activity  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from activities.messaging.outbox import QuietHours  # noqa: E402
from activities.messaging.send import MessagingActivities, SendPolicy, Senders  # noqa: E402
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Stack, cpu_per, cpu_seconds, figure, free_port, machine, print_load_at_end, require_quiet, serve, stack,
)
from schemas.messaging import MessageBatch, SendMessage, SendOutcome  # noqa: E402
from workers.log import configure_logging  # noqa: E402
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN  # noqa: E402
from workflows.messaging import MessageBatchWorkflow  # noqa: E402


def batch_of(label: str, retailer_ids: Iterable[int], in_flight: int, task_queue: str) -> MessageBatch:
    return MessageBatch(
        messages=[
            SendMessage(idempotency_key=f"{label}:{rid}", recipient_type="retailer", recipient_id=str(rid),
                        template="credit_resumed")
            for rid in retailer_ids
        ],
        max_in_flight=in_flight,
        task_queue=task_queue,
    )


async def run(
    s: Stack, retailer_ids: list[int], limit: float | None, label: str, in_flight: int
) -> tuple[float, dict, str]:
    # The emulator in its own process, as Twilio is: the worker's event loop serves only the worker.
    port = free_port()
    async with serve("twilio-emulator", port, *(["--rate-limit", str(limit)] if limit else [])):
        url = f"http://127.0.0.1:{port}"
        gateway = TwilioGateway(twilio_client(url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True))
        sends = MessagingActivities(
            s.engine, gateway, Senders("whatsapp:+15005550006", "+15005550006"),
            SendPolicy(daily_cap=1000, quiet_hours=QuietHours(0, 0)),
        )
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        batch = batch_of(label, retailer_ids, in_flight, f"{queue}-messaging")
        worker_options = {"max_task_queue_activities_per_second": limit} if limit else {}
        async with Worker(s.client, task_queue=queue, workflows=[MessageBatchWorkflow]), Worker(
            s.client, task_queue=batch.task_queue, activities=[sends.send_message],
            max_concurrent_activities=200, **worker_options,
        ):
            cpu_before, started = cpu_seconds(), time.perf_counter()
            result = await s.client.execute_workflow(
                MessageBatchWorkflow.run, batch, id=f"bench/{uuid.uuid4()}", task_queue=queue
            )
            elapsed = time.perf_counter() - started
            cpu = cpu_per(cpu_before, cpu_seconds(), len(retailer_ids), "message")
        await gateway.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/_emulator/stats") as response:
                stats = await response.json()
    assert result.sent == len(retailer_ids), result
    return len(retailer_ids) / elapsed, stats, cpu


@activity.defn(name="send_message")
async def send_nothing(request: SendMessage) -> SendOutcome:
    """The floor: the same workflow and queue, with a send that does no work at all."""
    return SendOutcome(status="sent", provider_sid=f"SM{request.idempotency_key}", channel="sms")


async def temporal_floor(s: Stack, count: int, in_flight: int) -> tuple[float, str]:
    """What Temporal alone costs per send on this machine: MessageBatchWorkflow, no-op activities."""
    queue = f"floor-{uuid.uuid4().hex[:8]}"
    batch = batch_of("floor", range(count), in_flight, f"{queue}-messaging")
    async with Worker(s.client, task_queue=queue, workflows=[MessageBatchWorkflow]), Worker(
        s.client, task_queue=batch.task_queue, activities=[send_nothing], max_concurrent_activities=200
    ):
        cpu_before, started = cpu_seconds(), time.perf_counter()
        result = await s.client.execute_workflow(MessageBatchWorkflow.run, batch, id=f"floor/{uuid.uuid4()}", task_queue=queue)
        elapsed = time.perf_counter() - started
        cpu = cpu_per(cpu_before, cpu_seconds(), count, "no-op send")
    assert result.sent == count, result
    return count / elapsed, cpu


async def main(messages: int, limit: float, in_flight: int) -> None:
    configure_logging("json", "WARNING")
    async with stack() as s:
        async with s.engine.begin() as conn:
            ids = (await conn.execute(text(
                "INSERT INTO retailers (name, phone, preferred_channel) SELECT 'Bench ' || g,"
                " '+1222' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(1, :n) g RETURNING id"),
                {"n": messages})).scalars().all()
        limited_rate, limited, limited_cpu = await run(s, ids, limit, "limited", in_flight)
        free_rate, _, free_cpu = await run(s, ids, None, "free", in_flight)
        floor_rate, floor_cpu = await temporal_floor(s, messages, in_flight)
    requests = limited["accepted"] + limited["rate_limited"] + limited.get("faults", 0)
    print(f"machine: {machine()}")
    print(f"{in_flight} sends in flight")
    print(f"limited to {limit:.0f} msg/s: {limited_rate:,.1f} msg/s = {limited_rate / limit:.3f} of the limit; "
          f"429s: {limited['rate_limited']} of {requests} requests ({limited['rate_limited'] / requests:.2%})")
    print(f"  {limited_cpu}")
    print(f"no limit: {free_rate:,.1f} msg/s ({messages} messages)")
    print(f"  {free_cpu}")
    print(f"Temporal alone (same workflow, a send that does nothing): {floor_rate:,.1f} sends/s")
    print(f"  {floor_cpu}")
    figure(f"messaging: accepted rate at a {limit:.0f} msg/s limit", limited_rate, "msg/s", floor=limit,
           floor_name="the limit", target=">= 0.98")
    figure("messaging: share of requests answered 429", limited["rate_limited"] / requests, "", target="< 0.005")
    figure("messaging: unlimited send path", free_rate, "msg/s", floor=floor_rate, floor_name="Temporal alone", target=">= 0.66")
    print_load_at_end()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--limit", type=float, default=200.0)
    parser.add_argument("--in-flight", type=int, default=50, help="the batch workflow's sends outstanding at once")
    args = parser.parse_args()
    if args.messages < 1 or args.limit <= 0:
        parser.error("--messages must be >= 1 and --limit > 0")
    require_quiet()
    asyncio.run(main(args.messages, args.limit, args.in_flight))
