"""The worker process: which workflows and activities run on which task queue.

`jobs` runs every workflow and the database/Stripe activities; `messaging` runs only the
Twilio sends, with `max_task_queue_activities_per_second` so the provider's rate limit holds
cluster-wide however many workers run (ARCHITECTURE §5).
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig

from activities.insights import InsightActivities, business_day
from activities.orders import OrderActivities, OrderSweepActivities
from activities.payments.activities import PaymentActivities
from activities.payments.client import stripe_client
from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, SendPolicy, Senders
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from workers.log import LoggingInterceptor
from workers.metrics import JobMetricsInterceptor
from workers.orders_api import start_pending_order
from workers.settings import Settings, SettingsError
from activities import churn, credit, loyalty
import workflows
from workflows import churn as churn_workflows
from workflows import credit as credit_workflows
from workflows import loyalty as loyalty_workflows
from workflows.insights import InsightsRegenerationWorkflow
from workflows.messaging import MessageBatchWorkflow
from workflows.orders import OrderExpirySweepWorkflow, PendingOrderWorkflow

log = structlog.get_logger(__name__)

WORKFLOWS = [
    InsightsRegenerationWorkflow,
    MessageBatchWorkflow,
    PendingOrderWorkflow,
    OrderExpirySweepWorkflow,
    *credit_workflows.WORKFLOWS,
    *churn_workflows.WORKFLOWS,
    *loyalty_workflows.WORKFLOWS,
]
QUEUES = ("jobs", "messaging")


@dataclass(frozen=True)
class WorkerDeps:
    """What a job family's activities may need; each family picks its own."""

    client: Client
    settings: Settings
    engine: AsyncEngine
    payments: PaymentActivities | None = None


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
    source again, which cost a third of the worker's CPU when clocks start by the hundred. In a
    built image the files exist already and this changes nothing; a read-only tree is left as is.
    """
    for path in workflows.__path__:
        compileall.compile_dir(path, quiet=2)


def job_activities(client: Client, settings: Settings, engine: AsyncEngine) -> list[object]:
    insights = InsightActivities(engine)
    orders = OrderActivities(engine, QuietHours(settings.quiet_hours_start, settings.quiet_hours_end))
    sweep = OrderSweepActivities(engine, client, functools.partial(start_pending_order, task_queue=settings.task_queue))
    payments = stripe_activities(settings, engine)
    deps = WorkerDeps(client, settings, engine, payments)
    return [
        *credit.worker_activities(deps),
        *churn.worker_activities(deps),
        *loyalty.worker_activities(deps),
        *payment_activities(payments),
        insights.regenerate_insights_chunk,
        business_day,
        orders.register_pending_order,
        orders.record_follow_up,
        orders.settle_pending_order,
        orders.handle_order_failure,
        sweep.expire_orphaned_orders,
        sweep.start_missing_order_workflows,
    ]


def stripe_activities(settings: Settings, engine: AsyncEngine) -> PaymentActivities | None:
    """Stripe (the sandbox when STRIPE_API_BASE is set); None when no Stripe key is configured."""
    if not settings.stripe_secret_key:
        log.warning("worker.no_stripe", detail="STRIPE_SECRET_KEY not set: payment activities not registered")
        return None
    return PaymentActivities(
        engine,
        stripe_client(settings.stripe_secret_key.get_secret_value(), settings.stripe_api_base),
        pay_page_base_url=settings.pay_page_base_url,
    )


def payment_activities(payments: PaymentActivities | None) -> list[object]:
    if payments is None:
        return []
    return [
        payments.ensure_customer,
        payments.create_payment_link,
        payments.extend_subscription,
        payments.cancel_subscription,
        payments.payment_intent_status,
    ]


def messaging_activities(settings: Settings, engine: AsyncEngine) -> MessagingActivities:
    """Twilio through the real SDK: the emulator when TWILIO_API_BASE is set."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        raise SettingsError("TWILIO_ACCOUNT_SID: required by the messaging worker (with TWILIO_AUTH_TOKEN)")
    client = twilio_client(
        settings.twilio_api_base,
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        async_client=True,
        timeout=5.0,
    )
    callback = f"{settings.webhook_base_url.rstrip('/')}/webhooks/twilio/status" if settings.webhook_base_url else None
    return MessagingActivities(
        engine,
        TwilioGateway(client, status_callback=callback),
        Senders(whatsapp=settings.twilio_whatsapp_from, sms=settings.twilio_sms_from),
        SendPolicy(
            daily_cap=settings.message_daily_cap,
            quiet_hours=QuietHours(settings.quiet_hours_start, settings.quiet_hours_end),
        ),
        crash_after_accept_file=settings.jobctl_crash_after_accept_file,
        per_second=settings.messages_per_second,
    )


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


def build_workers(
    client: Client,
    settings: Settings,
    engine: AsyncEngine,
    options: WorkerOptions | None = None,
) -> list[Worker]:
    options = options or WorkerOptions()
    compile_workflow_modules()
    interceptors = [LoggingInterceptor(), JobMetricsInterceptor()]
    versioning = deployment_config(settings)
    workers: list[Worker] = []
    if "jobs" in options.task_queues:
        workers.append(
            Worker(
                client,
                task_queue=settings.task_queue,
                workflows=WORKFLOWS,
                activities=job_activities(client, settings, engine),
                interceptors=interceptors,
                graceful_shutdown_timeout=options.graceful_shutdown_timeout,
                max_cached_workflows=options.max_cached_workflows,
                deployment_config=versioning,
            )
        )
    if "messaging" in options.task_queues:
        sends = messaging_activities(settings, engine)
        workers.append(
            Worker(
                client,
                task_queue=settings.messaging_task_queue,
                activities=[sends.send_message, sends.send_messages],
                interceptors=interceptors,
                graceful_shutdown_timeout=options.graceful_shutdown_timeout,
                # Twilio's allowed rate, enforced by the server across every messaging worker.
                max_task_queue_activities_per_second=settings.messages_per_second,
                max_concurrent_activities=options.max_concurrent_sends,
                deployment_config=versioning,
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
