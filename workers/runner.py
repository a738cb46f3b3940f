"""The long-running worker process: connect, poll, and drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence

import structlog

from activities.database import create_engine
from config.settings import Settings
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
        async with contextlib.AsyncExitStack() as resources:  # closed once the workers have stopped
            workers = build_workers(client, settings, engine, WorkerOptions(task_queues=task_queues), resources=resources)
            await run_workers(workers, stop)
    finally:
        await engine.dispose()
        log.info("worker.stopped")


async def check_dependencies(settings: Settings, database_url: str) -> list[str]:
    """Readiness probe: what is not reachable (empty when ready)."""
    from sqlalchemy import text

    problems = []
    try:
        client = await asyncio.wait_for(connect(settings), timeout=5)
        await asyncio.wait_for(client.service_client.check_health(), timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        problems.append(f"Temporal at {settings.temporal_address}: {type(exc).__name__}: {exc}".splitlines()[0])
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=5)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"database: {type(exc).__name__}".splitlines()[0])
    finally:
        await engine.dispose()
    return problems
