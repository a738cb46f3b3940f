"""The worker process: which workflows and activities run on which task queue.

`jobs` runs every family's workflows and its database/Stripe activities; `messaging` runs only the
Twilio sends, with `max_task_queue_activities_per_second` so the provider's rate limit holds
cluster-wide however many workers run. What runs comes from the family registry.

A worker is whole or does not start: each family returns every activity its workflows route to a
queue, and names what it lacks for them (`Family.requires`); a worker asked to poll a queue with
anything lacking refuses in one line naming what each queue lacks (`IncompleteWorker`, exit 2),
before it connects. Tasks routed to a worker without their activity would fail on it, whichever
worker took them.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import PollerBehaviorAutoscaling, Worker, WorkerDeploymentConfig

import workflows
from activities.deps import ActivityDeps
from activities.payments.gateway import StripeGateway, open_stripe_gateway
from config.settings import Settings, SettingsError
from workers import families
from workers.heap import freeze_startup_heap
from workers.log import LoggingInterceptor
from workers.metrics import JobMetricsInterceptor, declare_counters

log = structlog.get_logger(__name__)

QUEUES = ("jobs", "messaging")


@dataclass
class WorkerOptions:
    task_queues: Sequence[str] = QUEUES
    graceful_shutdown_timeout: timedelta = timedelta(seconds=30)
    # Sleeping orders and cases cost memory only while cached; evicted ones replay on their next task.
    max_cached_workflows: int = 500
    max_concurrent_sends: int = 200


def compile_workflow_modules() -> None:
    """Write bytecode for the workflow modules if it is missing or stale.

    The sandbox re-imports a workflow's module for every new workflow instance. Where no .pyc
    exists (PYTHONDONTWRITEBYTECODE=1, editable installs), each of those imports compiled the
    source again, a large share of the worker's CPU when clocks start by the hundred. In a
    built image the files exist already and this changes nothing; a read-only tree is left as is.
    """
    for path in workflows.__path__:
        compileall.compile_dir(path, quiet=2)


class IncompleteWorker(SettingsError):
    """A queue's activities cannot all be registered with these settings; the message names, per
    queue, what is missing."""

    prefix = ""


def require_whole(settings: Settings, task_queues: Sequence[str]) -> None:
    """Raise `IncompleteWorker` unless every activity routed to each of `task_queues` can be built."""
    missing = families.missing_settings(settings, task_queues)
    if missing:
        raise IncompleteWorker(
            "the worker refuses to start: "
            + "; ".join(f"{queue} queue: {', '.join(problems)}" for queue, problems in missing.items())
        )


def stripe_gateway(
    settings: Settings, engine: AsyncEngine, resources: contextlib.AsyncExitStack
) -> StripeGateway | None:
    """The worker's one Stripe gateway (the sandbox when STRIPE_API_BASE is set); None when no Stripe
    key is configured (then no `jobs` worker is built: `require_whole`). It is closed with `resources`."""
    gateway = open_stripe_gateway(settings, engine)
    if gateway is not None:
        resources.push_async_callback(gateway.close)
    return gateway


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """Worker versioning (opt-in): new workflows run on the deployment's current version,
    running ones keep upgrading automatically (replay tests guard their compatibility)."""
    if not settings.worker_deployment_name:
        return None
    if not settings.worker_build_id:
        raise SettingsError("WORKER_BUILD_ID: required with WORKER_DEPLOYMENT_NAME (e.g. the git commit)")
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(
            deployment_name=settings.worker_deployment_name, build_id=settings.worker_build_id
        ),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.AUTO_UPGRADE,
    )


WORKFLOW_TASK_POLLERS = PollerBehaviorAutoscaling()
"""Workflow task polls scaled on the server's feedback (1 to 100). The fixed default is five polls,
one of them on the normal queue, where every new workflow's first task waits, so a burst of
checkouts starts its clocks far slower (docs/BENCHMARKS.md, orders)."""


STICKY_TIMEOUT = timedelta(seconds=5)
"""How long a workflow's next task waits on the worker that has it cached before any worker takes
it (replaying its history). The Python SDK's default is 10 s (Go's is 5): a killed `jobs` pod's
workflows, the reminders day among them, stood still that long (the scale-out drill's trace: the
day's task timed out unstarted 9.9 s after the kill, with no sends meanwhile)."""


def jobs_tuning(options: WorkerOptions) -> dict[str, Any]:
    """The `jobs` worker's options besides what it runs (benchmarks build their workers from these)."""
    return {
        "interceptors": [LoggingInterceptor(), JobMetricsInterceptor()],
        "graceful_shutdown_timeout": options.graceful_shutdown_timeout,
        "max_cached_workflows": options.max_cached_workflows,
        "workflow_task_poller_behavior": WORKFLOW_TASK_POLLERS,
        "sticky_queue_schedule_to_start_timeout": STICKY_TIMEOUT,
    }


def messaging_tuning(settings: Settings, options: WorkerOptions) -> dict[str, Any]:
    """The `messaging` worker's options besides what it runs (benchmarks build their workers from these)."""
    return {
        "interceptors": [LoggingInterceptor(), JobMetricsInterceptor()],
        "graceful_shutdown_timeout": options.graceful_shutdown_timeout,
        # Twilio's allowed rate, enforced by the server across every messaging worker.
        "max_task_queue_activities_per_second": settings.send_rate,
        "max_concurrent_activities": options.max_concurrent_sends,
    }


def build_workers(
    client: Client,
    settings: Settings,
    engine: AsyncEngine,
    options: WorkerOptions | None = None,
    *,
    resources: contextlib.AsyncExitStack,
) -> list[Worker]:
    """The workers for `options.task_queues`; the activities' HTTP clients close with `resources`,
    which the caller closes once the workers have stopped. `IncompleteWorker` when a queue's
    activities cannot all be registered."""
    options = options or WorkerOptions()
    require_whole(settings, options.task_queues)
    compile_workflow_modules()
    declare_counters(client)
    versioning = deployment_config(settings)
    deps = ActivityDeps(client, settings, engine, stripe_gateway(settings, engine, resources), resources)
    workers: list[Worker] = []
    if "jobs" in options.task_queues:
        workers.append(
            Worker(
                client,
                task_queue=settings.task_queue,
                workflows=families.all_workflows(),
                activities=families.job_activities(deps),
                **jobs_tuning(options),
                deployment_config=versioning,
            )
        )
    if "messaging" in options.task_queues:
        workers.append(
            Worker(
                client,
                task_queue=settings.messaging_task_queue,
                activities=families.messaging_activities(deps),
                **messaging_tuning(settings, options),
                deployment_config=versioning,
            )
        )
    return workers


async def run_workers(workers: Sequence[Worker], stop: asyncio.Event) -> None:
    """Run until `stop` is set, then drain: in-flight activities get the graceful timeout."""
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        freeze_startup_heap()
        log.info("worker.started", task_queues=[w.task_queue for w in workers])
        await stop.wait()
        log.info("worker.stopping")
