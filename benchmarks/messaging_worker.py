"""A messaging worker in a process of its own, for `benchmarks/reminders.py` and `benchmarks/priority.py`.

Production runs the jobs and the messaging queues as separate `jobctl worker --task-queue ...`
processes (docs/OPERATIONS.md, "Deploying workers"): one Python process runs on one core at a
time, and the reminders benchmark's parallel bound counts both cores. This is that messaging
worker with the benchmark's send policy (no quiet hours, a daily cap above the cadence) and,
unless `--per-second` is given, no pacing: the same activities the benchmark ran in its own
process, moved out of it.

    python -m benchmarks.messaging_worker TEMPORAL_ADDRESS DATABASE_URL TWILIO_URL TASK_QUEUE [--per-second N]

It runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.database import create_engine
from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from workers.heap import freeze_startup_heap
from workers.log import configure_logging
from workers.worker import WorkerOptions

SENDERS = Senders(whatsapp="whatsapp:+15005550006", sms="+15005550006")


async def serve(args: argparse.Namespace) -> None:
    configure_logging("json", "ERROR" if args.per_second else "WARNING")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = await Client.connect(args.address, data_converter=pydantic_data_converter)
    engine = create_engine(args.database_url)
    gateway = TwilioGateway(twilio_client(args.twilio_url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, async_client=True))
    sends = MessagingActivities(
        engine,
        gateway,
        SENDERS,
        SendPolicy(daily_cap=100, quiet_hours=QuietHours(0, 0)),
        per_second=args.per_second,
    )
    rate = {"max_task_queue_activities_per_second": args.per_second} if args.per_second else {}
    try:
        async with Worker(
            client,
            task_queue=args.task_queue,
            activities=[sends.send_message, sends.send_messages],
            max_concurrent_activities=WorkerOptions().max_concurrent_sends,
            **rate,
        ):
            freeze_startup_heap()  # as `jobctl worker` does
            await stop.wait()
    finally:
        await gateway.close()
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("database_url")
    parser.add_argument("twilio_url")
    parser.add_argument("task_queue")
    parser.add_argument("--per-second", type=float, default=None, help="pace sends, and the queue, at this rate")
    asyncio.run(serve(parser.parse_args()))
