"""Business gauges on the API's `/metrics`, read from PostgreSQL and Temporal at scrape time.

`BusinessMetrics.refresh()` runs when a scrape finds the last reading older than `max_age`
(15 s): one transaction of seven aggregate queries, then the schedules and task queues at
Temporal; concurrent scrapes share one reading. A source that fails keeps its gauges out of the
scrape (and `jobctl_business_metrics_up{source}` says 0) rather than failing the scrape.

Cost at 100,000 retailers (each query reads an index or a small table, never the outbox):

- retailers, paused: one pass over `retailers` (100,000 narrow rows, the only full scan);
- open debits by aging bucket and currency: the partial index of open debits
  (`ix_credit_transactions_open_debits_due_date`, type DEBIT and not CLEARED) joined to
  `credit_accounts`;
- pending order clocks: `ix_pending_orders_status_expires_at`;
- open churn cases per company: `ix_recovery_cases_company_id_status`;
- loyalty NEEDS_REVIEW: `ix_loyalty_reconciliation_queue_status_created_at`;
- held and failed messages: the partial `ix_message_log_attention` (only deferred, failed,
  undelivered rows); failed webhook events: the partial `ix_processed_webhook_events_failed`;
- the brake: one row.

Measured on a shared 2-core machine, 100,000 retailers with 500,000 debits (166,000 open) and
2,000,000 messages (6,000 held or failed): one database reading takes 220-360 ms, 270 ms of it the
open debits (read through their partial index, then grouped); the retailers 30 ms, held and failed
messages 35 and 20 ms, the rest under 1 ms. At most one reading per 15 s whatever the scrape rate.

At Temporal: one DescribeSchedule per schedule of the registry (nine) and two
DescribeTaskQueue (workflow, activity) per worker queue (two), every 15 s at most.

Labels are bounded: aging buckets, ISO currencies, tenant company slugs (one per tenant, the only
id-like label), hold reasons, Twilio error codes, webhook providers, schedule ids from the
registry and the worker's task queues.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

log = structlog.get_logger(__name__)

MAX_AGE_S = 15.0
AGING_BUCKETS = ("current", "1-7", "8-15", "16-30", "31-60", "60+")
"""Days past due, as the risk view (`jobctl credit risk`) groups them."""

_RETAILERS = text("SELECT count(*) AS total, count(*) FILTER (WHERE credit_status = 'PAUSED') AS paused FROM retailers")
_OPEN_DEBITS = text(
    """
SELECT CASE WHEN days <= 0 THEN 'current' WHEN days <= 7 THEN '1-7' WHEN days <= 15 THEN '8-15'
            WHEN days <= 30 THEN '16-30' WHEN days <= 60 THEN '31-60' ELSE '60+' END AS bucket,
       currency, count(*) AS debits, sum(outstanding) AS outstanding
FROM (SELECT current_date - t.due_date AS days, t.amount - t.cleared_amount AS outstanding,
             coalesce(a.currency, 'USD') AS currency
      FROM credit_transactions t LEFT JOIN credit_accounts a ON a.retailer_id = t.retailer_id
      WHERE t.type = 'DEBIT' AND t.status <> 'CLEARED') d
GROUP BY 1, 2
"""
)
_PENDING_ORDERS = text("SELECT count(*) FROM pending_orders WHERE status = 'PENDING'")
_CHURN = text("SELECT company_id, count(*) AS cases FROM recovery_cases WHERE status = 'OPEN' GROUP BY company_id")
_LOYALTY = text(
    "SELECT count(*) AS items, coalesce(sum(points_redeemed), 0) AS points"
    " FROM loyalty_reconciliation_queue WHERE status = 'NEEDS_REVIEW'"
)
_HELD = text(
    "SELECT coalesce(reason, 'unknown') AS reason, count(*) AS messages,"
    " extract(epoch FROM now() - min(updated_at)) AS oldest"
    " FROM message_log WHERE status = 'deferred' GROUP BY 1"
)
_FAILED = text(
    "SELECT coalesce(CAST(error_code AS text), 'none') AS error_code, count(*) AS messages FROM message_log"
    " WHERE status IN ('failed', 'undelivered') AND updated_at > now() - interval '24 hours' GROUP BY 1"
)
_WEBHOOKS = text("SELECT provider, count(*) AS events FROM processed_webhook_events WHERE status = 'failed' GROUP BY 1")
_BRAKE = text("SELECT bool_or(paused) FROM messaging_brake")


@dataclass
class Reading:
    """One reading of every gauge; a source that failed leaves its part empty and `up` 0."""

    up: dict[str, int] = field(default_factory=dict)
    retailers: tuple[int, int] | None = None
    debits: list[tuple[str, str, int, float]] = field(default_factory=list)
    pending_orders: int | None = None
    churn: list[tuple[str, int]] = field(default_factory=list)
    loyalty: tuple[int, int] | None = None
    held: list[tuple[str, int, float]] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    webhooks: list[tuple[str, int]] = field(default_factory=list)
    brake: bool | None = None
    schedules: list[tuple[str, float, int, int]] = field(default_factory=list)
    backlog: list[tuple[str, int]] = field(default_factory=list)


class BusinessMetrics(Collector):
    """A prometheus_client collector over the last reading; `refresh()` (async) renews it."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: Client | None,
        *,
        schedule_ids: Sequence[str] = (),
        task_queues: Sequence[str] = (),
        max_age: float = MAX_AGE_S,
    ) -> None:
        self.engine, self.client = engine, client
        self.schedule_ids, self.task_queues, self.max_age = tuple(schedule_ids), tuple(task_queues), max_age
        self.reading = Reading()
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read again when the last reading is older than `max_age` (one reader at a time)."""
        async with self._lock:
            if time.monotonic() - self._read_at < self.max_age:
                return
            reading = Reading()
            await self._database(reading)
            if self.client is not None:
                await self._temporal(reading, self.client)
            self.reading, self._read_at = reading, time.monotonic()

    async def _database(self, reading: Reading) -> None:
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(_RETAILERS)).one()
                reading.retailers = (int(row.total), int(row.paused))
                reading.debits = [
                    (r.bucket, r.currency, int(r.debits), float(r.outstanding or 0))
                    for r in await conn.execute(_OPEN_DEBITS)
                ]
                reading.pending_orders = int(await conn.scalar(_PENDING_ORDERS) or 0)
                reading.churn = [(r.company_id, int(r.cases)) for r in await conn.execute(_CHURN)]
                row = (await conn.execute(_LOYALTY)).one()
                reading.loyalty = (int(row.items), int(row.points))
                reading.held = [(r.reason, int(r.messages), float(r.oldest or 0)) for r in await conn.execute(_HELD)]
                reading.failed = [(r.error_code, int(r.messages)) for r in await conn.execute(_FAILED)]
                reading.webhooks = [(r.provider, int(r.events)) for r in await conn.execute(_WEBHOOKS)]
                reading.brake = bool(await conn.scalar(_BRAKE))
            reading.up["database"] = 1
        except Exception as error:  # noqa: BLE001 - a scrape reports the source down, it never fails
            log.warning("metrics.database_unavailable", error_type=type(error).__name__)
            reading.up["database"] = 0

    async def _temporal(self, reading: Reading, client: Client) -> None:
        now = datetime.now(UTC)
        try:
            for schedule_id in self.schedule_ids:
                try:
                    info = (await client.get_schedule_handle(schedule_id).describe()).info
                except Exception as error:  # noqa: BLE001 - a missing schedule is left out, not fatal
                    log.warning("metrics.schedule_unreadable", schedule=schedule_id, error_type=type(error).__name__)
                    continue
                last = max((a.started_at for a in info.recent_actions), default=info.created_at)
                reading.schedules.append(
                    (
                        schedule_id,
                        max((now - last).total_seconds(), 0.0),
                        info.num_actions_missed_catchup_window,
                        info.num_actions,
                    )
                )
            for queue in self.task_queues:
                response = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=client.namespace,
                        task_queue=TaskQueue(name=queue),
                        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                        report_stats=True,
                    )
                )
                workflow_backlog = response.stats.approximate_backlog_count
                response = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=client.namespace,
                        task_queue=TaskQueue(name=queue),
                        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                        report_stats=True,
                    )
                )
                reading.backlog.append((queue, int(workflow_backlog + response.stats.approximate_backlog_count)))
            reading.up["temporal"] = 1
        except Exception as error:  # noqa: BLE001 - a scrape reports the source down, it never fails
            log.warning("metrics.temporal_unavailable", error_type=type(error).__name__)
            reading.up["temporal"] = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        r = self.reading
        yield _family(
            "jobctl_business_metrics_up",
            "1 when the last reading of the source answered",
            ["source"],
            (((source,), value) for source, value in r.up.items()),
        )
        if r.retailers is not None:
            total, paused = r.retailers
            yield _gauge("jobctl_retailers_total", "Retailers in the directory", total)
            yield _gauge("jobctl_retailers_paused", "Retailers whose credit is PAUSED (COD only)", paused)
            share = paused / total if total else 0.0
            yield _gauge("jobctl_retailers_paused_ratio", "Share of retailers whose credit is PAUSED", share)
        if r.retailers is not None:  # the database answered: every bucket, zero when empty
            yield _family("jobctl_open_debits", "Open debits by days past due", ["bucket"], _sum_by_bucket(r.debits))
            yield _family(
                "jobctl_open_debit_amount",
                "What open debits still owe, by days past due and currency (major units)",
                ["bucket", "currency"],
                (((b, c), amount) for b, c, _, amount in r.debits),
            )
        if r.pending_orders is not None:
            yield _gauge("jobctl_order_clocks_pending", "Pending checkouts whose 24-hour clock runs", r.pending_orders)
            yield _family(
                "jobctl_churn_open_cases",
                "Open churn cases per company",
                ["company"],
                (((company,), cases) for company, cases in r.churn),
            )
        if r.loyalty is not None:
            items, points = r.loyalty
            yield _gauge("jobctl_loyalty_needs_review_items", "Loyalty items waiting for a person", items)
            yield _gauge("jobctl_loyalty_needs_review_points", "Points the waiting items redeem", points)
        if r.brake is not None:
            yield _family(
                "jobctl_messages_held",
                "Messages deferred (held to send later), by reason",
                ["reason"],
                (((reason,), n) for reason, n, _ in r.held),
            )
            yield _gauge(
                "jobctl_messages_held_oldest_seconds",
                "Age of the oldest held message (0 when none)",
                max((oldest for _, _, oldest in r.held), default=0.0),
            )
            yield _family(
                "jobctl_messages_failed",
                "Messages failed or undelivered in the last 24 hours, by Twilio error code",
                ["error_code"],
                (((code,), n) for code, n in r.failed),
            )
            yield _family(
                "jobctl_webhook_events_failed",
                "Webhook events recorded as failed for good, by provider",
                ["source"],
                (((provider,), n) for provider, n in r.webhooks),
            )
            yield _gauge("jobctl_messaging_brake_on", "1 while the messaging emergency brake is on", int(r.brake))
        if r.up.get("temporal"):
            yield _family(
                "jobctl_schedule_last_action_age_seconds",
                "Seconds since the schedule last started its job (since it was created when never)",
                ["schedule"],
                (((s,), age) for s, age, _, _ in r.schedules),
            )
            yield _family(
                "jobctl_schedule_missed_total",
                "Actions the schedule missed (past their catch-up window), since it was created",
                ["schedule"],
                (((s,), missed) for s, _, missed, _ in r.schedules),
            )
            yield _family(
                "jobctl_schedule_actions_total",
                "Actions the schedule took (jobs it started), since it was created",
                ["schedule"],
                (((s,), taken) for s, _, _, taken in r.schedules),
            )
            yield _family(
                "jobctl_task_queue_backlog",
                "Tasks waiting on the queue (workflow and activity, approximate)",
                ["queue"],
                (((q,), n) for q, n in r.backlog),
            )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _family(
    name: str, documentation: str, labels: list[str], samples: Iterable[tuple[tuple[str, ...], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _sum_by_bucket(rows: Iterable[tuple[str, str, int, float]]) -> Iterator[tuple[tuple[str, ...], float]]:
    totals: dict[str, int] = dict.fromkeys(AGING_BUCKETS, 0)
    for bucket, _, debits, _ in rows:
        totals[bucket] = totals.get(bucket, 0) + debits
    return (((bucket,), n) for bucket, n in totals.items())
