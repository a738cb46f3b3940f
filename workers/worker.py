"""The worker process: which workflows and activities run on which task queue.

`jobs` runs every workflow and the database/Stripe activities; `messaging` runs only the
Twilio sends, with `max_task_queue_activities_per_second` so the provider's rate limit holds
cluster-wide however many workers run (ARCHITECTURE §5).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker

from activities.insights import InsightActivities, business_day
from workers.log import LoggingInterceptor
from workers.settings import Settings
from workflows.insights import InsightsRegenerationWorkflow

log = structlog.get_logger(__name__)

WORKFLOWS = [InsightsRegenerationWorkflow]
QUEUES = ("jobs", "messaging")


@dataclass
class WorkerOptions:
    task_queues: Sequence[str] = QUEUES
    graceful_shutdown_timeout: timedelta = timedelta(seconds=30)
    max_cached_workflows: int = 2000


def job_activities(engine: AsyncEngine) -> list[object]:
    insights = InsightActivities(engine)
    return [insights.regenerate_insights_chunk, business_day]


def build_workers(
    client: Client,
    settings: Settings,
    engine: AsyncEngine,
    options: WorkerOptions | None = None,
) -> list[Worker]:
    options = options or WorkerOptions()
    interceptors = [LoggingInterceptor()]
    workers: list[Worker] = []
    if "jobs" in options.task_queues:
        workers.append(
            Worker(
                client,
                task_queue=settings.task_queue,
                workflows=WORKFLOWS,
                activities=job_activities(engine),
                interceptors=interceptors,
                graceful_shutdown_timeout=options.graceful_shutdown_timeout,
                max_cached_workflows=options.max_cached_workflows,
            )
        )
    return workers


async def run_workers(workers: Sequence[Worker], stop: asyncio.Event) -> None:
    """Run until `stop` is set, then drain: in-flight activities get the graceful timeout."""
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        log.info("worker.started", task_queues=[w.task_queue for w in workers])
        await stop.wait()
        log.info("worker.stopping")
