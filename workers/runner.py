"""The long-running worker process: connect, poll, and drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from activities.database import create_engine
from config.settings import Settings
from workers.process import PROBE_TIMEOUT_S, database_problem, stop_on_signals, temporal_problem
from workers.temporal_client import TemporalUnreachable, client_options, connect, describe_target
from workers.tracing import start_tracing, stop_tracing
from workers.worker import QUEUES, WorkerOptions, build_workers, run_workers

log = structlog.get_logger(__name__)


async def run_worker_process(settings: Settings, database_url: str, task_queues: Sequence[str]) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    start_tracing(settings, "jobctl-worker")  # before the client: its workers take its tracing interceptor
    client = await connect(settings)
    engine = create_engine(database_url, pool_size=settings.database_pool_size)
    try:
        async with contextlib.AsyncExitStack() as resources:  # closed once the workers have stopped
            workers = build_workers(
                client, settings, engine, WorkerOptions(task_queues=task_queues), resources=resources
            )
            await run_workers(workers, stop)
    finally:
        await engine.dispose()
        log.info("worker.stopped")
        stop_tracing()  # the spans still buffered


async def check_dependencies(
    settings: Settings, database_url: str, task_queues: Sequence[str] | None = None
) -> list[str]:
    """`jobctl worker --check`: what is not reachable (empty when ready)."""
    problems = []
    where = settings.temporal_address
    try:
        where = describe_target(client_options(settings))
        client = await asyncio.wait_for(connect(settings), timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; reported, not raised
        if isinstance(exc, TemporalUnreachable):
            problems.append(str(exc).splitlines()[0])
        else:
            problems.append(f"Temporal at {where}: {type(exc).__name__}: {exc}".splitlines()[0])
    else:
        if (problem := await temporal_problem(client)) is not None:
            problems.append(f"Temporal at {where}: {problem}")
    from workers import families

    for queue, missing in families.missing_settings(settings, task_queues or QUEUES).items():
        problems.append(f"{queue} queue: {', '.join(missing)}")
    engine = create_engine(database_url, pool_size=1)
    try:
        if (problem := await database_problem(engine)) is not None:
            problems.append(f"database: {problem}")
    finally:
        await engine.dispose()
    return problems
