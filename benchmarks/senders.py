"""Benchmark: a sender pool's throughput, three numbers at 80 msg/s each against per-sender limits.

    python benchmarks/senders.py --messages 20000 --senders 3 --rate 80 --in-flight 60 [--sticky]

The emulator limits each `From` at RATE msg/s (429/20429 above it), as Twilio and Meta limit a
sender number. The messaging worker is set up as production's with TWILIO_SMS_SENDERS naming
SENDERS numbers at RATE each: every message reserves the soonest slot of the pool's numbers
(SENDER_STICKY: its recipient's number) in `messaging_pace`, each number at SEND_RATE_HEADROOM x
RATE, and the queue's Temporal rate limit is the pool's sum. Prints the accepted rate as a share of
SENDERS x RATE (the emulator's own clock, steady state after the first second, and end to end), the
share of create requests answered 429, how the messages spread over the numbers, and the load
average at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from sqlalchemy import text
from temporalio.worker import Worker

from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, SendPolicy
from activities.messaging.senders import Sender, Senders
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from benchmarks.harness import figure, free_port, machine, print_load_at_end, require_quiet, serve, stack
from benchmarks.messaging import emulator_stats, run_batches, steady_rate
from config.settings import SEND_RATE_HEADROOM
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from workers.log import configure_logging
from workers.worker import WorkerOptions
from workflows.messaging import MessageBatchWorkflow


async def senders_of_messages(url: str) -> Counter[str]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/_emulator/messages") as response:
        messages = await response.json()
    return Counter(m["from"] for m in messages)


async def main(messages: int, senders: int, rate: float, in_flight: int, sticky: bool) -> None:
    configure_logging("json", "WARNING")
    pool = tuple(Sender(f"+1555777{n:04d}", rate * SEND_RATE_HEADROOM) for n in range(1, senders + 1))
    limit = senders * rate
    async with stack() as s:
        async with s.engine.begin() as conn:
            ids = (
                (
                    await conn.execute(
                        text(
                            "INSERT INTO retailers (name, phone, preferred_channel) SELECT 'Bench ' || g,"
                            " '+1222' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(1, :n) g RETURNING id"
                        ),
                        {"n": messages},
                    )
                )
                .scalars()
                .all()
            )
        port = free_port()
        async with serve("twilio-emulator", port, "--rate-limit", str(rate)):
            url = f"http://127.0.0.1:{port}"
            gateway = TwilioGateway(twilio_client(url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True))
            sends = MessagingActivities(
                s.engine,
                gateway,
                Senders(whatsapp="whatsapp:+15005550006", sms=pool, sticky=sticky),
                SendPolicy(daily_cap=1000, quiet_hours=QuietHours(0, 0)),
                per_second=None,  # no sender outside the pool
            )
            queue = f"senders-{uuid.uuid4().hex[:8]}"
            async with (
                Worker(s.client, task_queue=queue, workflows=[MessageBatchWorkflow]),
                Worker(
                    s.client,
                    task_queue=f"{queue}-messaging",
                    activities=[sends.send_message, sends.send_messages],
                    max_concurrent_activities=WorkerOptions().max_concurrent_sends,
                    max_task_queue_activities_per_second=limit * SEND_RATE_HEADROOM,
                ),
            ):
                started = time.perf_counter()
                sent, _ = await run_batches(s, "senders", ids, in_flight, queue)
                elapsed = time.perf_counter() - started
            await gateway.close()
            stats, stamps = await emulator_stats(url)
            spread = await senders_of_messages(url)
    assert sent == len(ids), sent
    requests = stats["accepted"] + stats["rate_limited"]
    steady = steady_rate(stamps)
    print(f"machine: {machine()}")
    print(
        f"{senders} senders x {rate:.0f} msg/s = {limit:.0f} msg/s; {messages} messages, {in_flight} in flight,"
        f" {'sticky' if sticky else 'soonest slot'}; each number's slot at {SEND_RATE_HEADROOM} x its rate"
    )
    print(f"steady accepted rate: {steady:,.1f} msg/s = {steady / limit:.3f} of {limit:.0f}")
    print(f"end to end: {messages / elapsed:,.1f} msg/s = {messages / elapsed / limit:.3f} of {limit:.0f}")
    print(
        f"429s: {stats['rate_limited']} of {requests} requests ({stats['rate_limited'] / requests:.2%});"
        f" by sender {stats.get('rate_limited_by_sender', {})}"
    )
    print("messages by sender: " + ", ".join(f"{number} {n}" for number, n in sorted(spread.items())))
    figure(
        f"senders: pool's steady rate, {senders} x {rate:.0f} msg/s",
        steady,
        "msg/s",
        floor=limit,
        floor_name="the pool's limit",
        target=">= 0.97",
    )
    figure("senders: share of requests answered 429", stats["rate_limited"] / requests, "", target="< 0.005")
    print_load_at_end()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--senders", type=int, default=3, help="numbers in the pool")
    parser.add_argument("--rate", type=float, default=80.0, help="messages/s per number (WhatsApp's about 80)")
    parser.add_argument("--in-flight", type=int, default=60, help="sends outstanding at once over all batches")
    parser.add_argument("--sticky", action="store_true", help="SENDER_STICKY: each recipient's own number")
    parser.add_argument("--small", action="store_true", help="a functional check: 600 messages")
    args = parser.parse_args()
    if args.small:
        args.messages = 600
    if args.messages < 2 or args.senders < 1 or args.rate <= 0 or args.in_flight < 1:
        parser.error("--messages must be >= 2, --senders and --in-flight >= 1, --rate > 0")
    require_quiet()
    asyncio.run(main(args.messages, args.senders, args.rate, args.in_flight, args.sticky))
