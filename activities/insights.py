"""Insight regeneration: per-retailer stats computed a page at a time with set-based SQL.

One aggregate query reads a whole page of retailers; one multi-row upsert writes it.
The activity heartbeats its cursor after every page, so a retry (worker crash, deploy)
resumes after the last page it reported instead of starting over.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from schemas.insights import BusinessDay, InsightsChunk, InsightsChunkResult
from schemas.tables import RetailerInsight

log = structlog.get_logger(__name__)

WINDOW_DAYS = 30
TOP_PRODUCTS = 3

# One statement per page: keyset page of retailers + every aggregate the insight needs.
PAGE_STATS_SQL = text(
    """
WITH page AS (
    SELECT r.id, r.name
    FROM retailers r
    WHERE r.id > :after_id
    ORDER BY r.id
    LIMIT :page_size
),
ord AS (
    SELECT o.retailer_id,
           count(*) FILTER (WHERE o.created_at >= :window_start) AS orders_30d,
           count(*) FILTER (WHERE o.created_at < :window_start) AS orders_prev_30d,
           coalesce(sum(o.total_amount) FILTER (WHERE o.created_at >= :window_start), 0) AS gmv_30d,
           coalesce(sum(o.total_amount) FILTER (WHERE o.created_at < :window_start), 0) AS gmv_prev_30d
    FROM orders o
    JOIN page p ON p.id = o.retailer_id
    WHERE o.created_at >= :prev_start AND o.created_at < :as_of
      AND o.status IN ('CONFIRMED', 'DELIVERED')  -- sold: not pending/abandoned, failed or cancelled
    GROUP BY o.retailer_id
),
ranked AS (
    SELECT o.retailer_id, oi.product_name,
           row_number() OVER (PARTITION BY o.retailer_id
                              ORDER BY sum(oi.quantity) DESC, oi.product_name) AS rank
    FROM order_items oi
    JOIN orders o ON o.id = oi.order_id
    JOIN page p ON p.id = o.retailer_id
    WHERE o.created_at >= :prev_start AND o.created_at < :as_of
      AND o.status IN ('CONFIRMED', 'DELIVERED')  -- sold: not pending/abandoned, failed or cancelled
    GROUP BY o.retailer_id, oi.product_name
),
top AS (
    SELECT retailer_id, jsonb_agg(product_name ORDER BY rank) AS top_products
    FROM ranked WHERE rank <= :top_n
    GROUP BY retailer_id
),
pay AS (
    SELECT ct.retailer_id,
           avg(CASE WHEN (ct.cleared_at AT TIME ZONE :tz)::date <= ct.due_date THEN 1.0 ELSE 0.0 END)
               FILTER (WHERE ct.status = 'CLEARED' AND NOT ct.reversed) AS on_time_rate,
           avg(extract(epoch FROM ct.cleared_at - ct.created_at) / 86400.0)
               FILTER (WHERE ct.status = 'CLEARED' AND NOT ct.reversed) AS avg_days_to_pay,
           coalesce(sum(ct.amount - ct.cleared_amount) FILTER (WHERE ct.status <> 'CLEARED'), 0) AS outstanding,
           coalesce(max(:insight_date - ct.due_date)
                    FILTER (WHERE ct.status <> 'CLEARED' AND ct.due_date < :insight_date), 0) AS max_overdue_days
    FROM (SELECT d.*, EXISTS (SELECT 1 FROM credit_transactions r  -- closed by a failed order's reversal, not paid
                              WHERE r.order_id = d.order_id AND r.type = 'CREDIT') AS reversed
          FROM credit_transactions d WHERE d.type = 'DEBIT') ct
    JOIN page p ON p.id = ct.retailer_id
    GROUP BY ct.retailer_id
)
SELECT p.id AS retailer_id, p.name,
       coalesce(ord.orders_30d, 0) AS orders_30d,
       coalesce(ord.orders_prev_30d, 0) AS orders_prev_30d,
       coalesce(ord.gmv_30d, 0) AS gmv_30d,
       coalesce(ord.gmv_prev_30d, 0) AS gmv_prev_30d,
       coalesce(top.top_products, '[]'::jsonb) AS top_products,
       pay.on_time_rate, pay.avg_days_to_pay,
       coalesce(pay.outstanding, 0) AS outstanding,
       coalesce(pay.max_overdue_days, 0) AS max_overdue_days,
       ca.credit_limit
FROM page p
LEFT JOIN ord ON ord.retailer_id = p.id
LEFT JOIN top ON top.retailer_id = p.id
LEFT JOIN pay ON pay.retailer_id = p.id
LEFT JOIN credit_accounts ca ON ca.retailer_id = p.id
ORDER BY p.id
"""
)


@dataclass(frozen=True)
class InsightStats:
    retailer_id: int
    name: str
    orders_30d: int
    orders_prev_30d: int
    gmv_30d: Decimal
    gmv_prev_30d: Decimal
    top_products: list[str]
    on_time_rate: Decimal | None
    avg_days_to_pay: Decimal | None
    outstanding: Decimal
    max_overdue_days: int
    credit_limit: Decimal | None

    @property
    def avg_order_value(self) -> Decimal:
        if not self.orders_30d:
            return Decimal("0.00")
        return (self.gmv_30d / self.orders_30d).quantize(Decimal("0.01"), ROUND_HALF_UP)

    @property
    def credit_utilisation(self) -> Decimal | None:
        if not self.credit_limit:
            return None
        return (self.outstanding / self.credit_limit).quantize(Decimal("0.0001"), ROUND_HALF_UP)

    @property
    def risk_level(self) -> str:
        return risk_level(self.max_overdue_days, self.credit_utilisation)


def risk_level(max_overdue_days: int, utilisation: Decimal | None) -> str:
    """HIGH: a month overdue or nearly out of credit; MEDIUM: a week overdue or 70% used."""
    used = utilisation or Decimal(0)
    if max_overdue_days > 30 or used >= Decimal("0.9"):
        return "HIGH"
    if max_overdue_days > 7 or used >= Decimal("0.7"):
        return "MEDIUM"
    return "LOW"


def _money(value: Decimal) -> str:
    return f"{value:,.2f}"


def render_insight_message(stats: InsightStats) -> str:
    """The friendly WhatsApp text: what changed, what sells, and one nudge about credit."""
    first_name = (stats.name or "there").split()[0]
    lines = [f"Hi {first_name}! Here is your month at a glance."]
    if stats.orders_30d:
        trend = ""
        if stats.gmv_prev_30d > 0:
            change = (stats.gmv_30d - stats.gmv_prev_30d) / stats.gmv_prev_30d * 100
            trend = f" ({'up' if change >= 0 else 'down'} {abs(change):.0f}% on the month before)"
        lines.append(
            f"You placed {stats.orders_30d} order{'s' if stats.orders_30d != 1 else ''} worth "
            f"{_money(stats.gmv_30d)}{trend}, {_money(stats.avg_order_value)} on average."
        )
    else:
        lines.append("We have missed you: no orders in the last 30 days.")
    if stats.top_products:
        lines.append("Your best sellers: " + ", ".join(stats.top_products) + ".")
    if stats.on_time_rate is not None:
        lines.append(f"You paid {stats.on_time_rate * 100:.0f}% of your invoices on time.")
    level = stats.risk_level
    if level == "HIGH":
        lines.append("Some payments are well overdue: settle them to keep ordering on credit.")
    elif level == "MEDIUM":
        lines.append("A payment is coming due soon: paying early keeps your credit line open.")
    else:
        lines.append("Your credit is in great shape. Thank you!")
    return " ".join(lines)


def window(insight_date: date, timezone: str) -> tuple[datetime, datetime, datetime]:
    """(previous window start, current window start, as-of): whole local days before `insight_date`."""
    as_of = datetime.combine(insight_date, datetime.min.time(), tzinfo=ZoneInfo(timezone))
    return as_of - timedelta(days=2 * WINDOW_DAYS), as_of - timedelta(days=WINDOW_DAYS), as_of


def _stats_from_row(row: Any) -> InsightStats:
    return InsightStats(
        retailer_id=row.retailer_id,
        name=row.name,
        orders_30d=row.orders_30d,
        orders_prev_30d=row.orders_prev_30d,
        gmv_30d=Decimal(row.gmv_30d),
        gmv_prev_30d=Decimal(row.gmv_prev_30d),
        top_products=list(row.top_products),
        on_time_rate=None if row.on_time_rate is None else Decimal(row.on_time_rate).quantize(Decimal("0.0001")),
        avg_days_to_pay=None if row.avg_days_to_pay is None else Decimal(row.avg_days_to_pay).quantize(Decimal("0.01")),
        outstanding=Decimal(row.outstanding),
        max_overdue_days=int(row.max_overdue_days),
        credit_limit=None if row.credit_limit is None else Decimal(row.credit_limit),
    )


def _insight_row(stats: InsightStats, insight_date: date) -> dict[str, Any]:
    return {
        "retailer_id": stats.retailer_id,
        "insight_date": insight_date,
        "orders_30d": stats.orders_30d,
        "orders_prev_30d": stats.orders_prev_30d,
        "gmv_30d": stats.gmv_30d,
        "gmv_prev_30d": stats.gmv_prev_30d,
        "avg_order_value": stats.avg_order_value,
        "top_products": stats.top_products,
        "on_time_payment_rate": stats.on_time_rate,
        "avg_days_to_pay": stats.avg_days_to_pay,
        "credit_utilisation": stats.credit_utilisation,
        "risk_level": stats.risk_level,
        "message": render_insight_message(stats),
    }


class InsightActivities:
    """Activities of the insight job; the engine is injected by the worker."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def regenerate_page(self, insight_date: date, timezone: str, after_id: int, page_size: int) -> tuple[int, int]:
        """Recompute and upsert one page; returns (last retailer id, retailers in the page)."""
        prev_start, window_start, as_of = window(insight_date, timezone)
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    PAGE_STATS_SQL,
                    {
                        "after_id": after_id,
                        "page_size": page_size,
                        "prev_start": prev_start,
                        "window_start": window_start,
                        "as_of": as_of,
                        "insight_date": insight_date,
                        "tz": timezone,
                        "top_n": TOP_PRODUCTS,
                    },
                )
            ).all()
            if not rows:
                return after_id, 0
            values = [_insight_row(_stats_from_row(row), insight_date) for row in rows]
            stmt = insert(RetailerInsight).values(values)
            excluded = stmt.excluded
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[RetailerInsight.retailer_id, RetailerInsight.insight_date],
                    set_={
                        **{key: excluded[key] for key in values[0] if key not in ("retailer_id", "insight_date")},
                        "generation": RetailerInsight.generation + 1,
                        "generated_at": text("now()"),
                    },
                )
            )
        return rows[-1].retailer_id, len(rows)

    @activity.defn(name="regenerate_insights_chunk")
    async def regenerate_insights_chunk(self, chunk: InsightsChunk) -> InsightsChunkResult:
        """Pages after the cursor until the page or time budget runs out, heartbeating each page."""
        progress = InsightsChunkResult(
            after_retailer_id=chunk.after_retailer_id, pages_done=0, retailers_done=0, finished=False
        )
        details = activity.info().heartbeat_details
        if details:
            progress = InsightsChunkResult.model_validate(details[0])
            log.info("insights.resume", after_retailer_id=progress.after_retailer_id, pages_done=progress.pages_done)
        deadline = time.monotonic() + chunk.max_seconds
        while progress.pages_done < chunk.max_pages and time.monotonic() < deadline:
            last_id, count = await self.regenerate_page(
                chunk.insight_date, chunk.business_timezone, progress.after_retailer_id, chunk.page_size
            )
            if count == 0:
                progress.finished = True
                break
            progress.after_retailer_id = last_id
            progress.pages_done += 1
            progress.retailers_done += count
            activity.heartbeat(progress)
            if count < chunk.page_size:
                progress.finished = True
                break
            if chunk.throttle_ms:
                await asyncio.sleep(chunk.throttle_ms / 1000)
        log.info(
            "insights.chunk_done",
            pages=progress.pages_done,
            retailers=progress.retailers_done,
            after_retailer_id=progress.after_retailer_id,
            finished=progress.finished,
        )
        return progress


@activity.defn(name="business_day")
async def business_day(request: BusinessDay) -> date:
    """The calendar day of an instant in a time zone (a local activity: zoneinfo reads files)."""
    return request.instant.astimezone(ZoneInfo(request.timezone)).date()


async def get_insight_message(engine: AsyncEngine, retailer_id: int, insight_date: date) -> str | None:
    """The stored friendly text of one retailer's insight for a day (None if not generated yet)."""
    async with engine.connect() as conn:
        return await conn.scalar(
            select(RetailerInsight.message).where(
                RetailerInsight.retailer_id == retailer_id, RetailerInsight.insight_date == insight_date
            )
        )

