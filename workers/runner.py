"""The long-running worker process: connect, poll, and drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import structlog

from activities.database import create_engine
from workers.settings import Settings
from workers.temporal_client import connect
from workers.worker import WorkerOptions, build_workers, run_workers

log = structlog.get_logger(__name__)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM (Kubernetes, systemd) and SIGINT (Ctrl-C) both start a graceful drain."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_worker_process(settings: Settings, database_url: str, task_queues: Sequence[str]) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    client = await connect(settings)
    engine = create_engine(database_url)
    try:
        workers = build_workers(client, settings, engine, WorkerOptions(task_queues=task_queues))
        await run_workers(workers, stop)
    finally:
        await engine.dispose()
        log.info("worker.stopped")
