"""Insight regeneration: per-retailer stats computed a page at a time with set-based SQL.

One aggregate query reads a whole page of retailers; one multi-row upsert writes it.
The activity heartbeats its cursor after every page, so a retry (worker crash, deploy)
resumes after the last page it reported instead of starting over.

Why it is shaped as it is (issue #38 point 4, >= 25,000 retailers/s at 100,000): the page's
sold orders read once from a covering index, one loop deriving a row's figures, orjson, and
reads ahead of the render with the upsert beside it took the activity alone from 12,000 to
about 30,000 retailers/s on two loaded cores (docs/BENCHMARKS.md, "Insight regeneration").
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import structlog
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from activities.database import autocommit, driver_connection
from schemas.insights import InsightMessages, InsightMessagesPage, InsightsChunk, InsightsChunkResult
from schemas.messaging import SendMessage
from schemas.money import money_formatter
from schemas.tables import RetailerInsight

log = structlog.get_logger(__name__)

WINDOW_DAYS = 30
TOP_PRODUCTS = 3

# One statement per page: keyset page of retailers + every aggregate the insight needs.
# The page's sold orders are read once (`sold`, by the retailer-id range on
# ix_orders_retailer_id_created_at) and feed both the order figures and the best sellers, and the
# best sellers are the head of one sorted array per retailer. Before, the orders were read twice (a
# nested loop of index probes per retailer each time) and the best sellers ranked by a window over
# a sort of every (retailer, product): about two thirds of the statement's time (EXPLAIN ANALYZE).
PAGE_STATS_SQL = text(
    """
WITH page AS (
    SELECT r.id, r.name, r.locale
    FROM retailers r
    WHERE r.id > :after_id
    ORDER BY r.id
    LIMIT :page_size
),
bounds AS (SELECT max(id) AS last_id FROM page),
sold AS MATERIALIZED (  -- the page's ids are every id in (after_id, last_id]: the range is the page
    SELECT o.id, o.retailer_id, o.total_amount, o.created_at >= :window_start AS recent
    FROM orders o
    WHERE o.retailer_id > :after_id AND o.retailer_id <= (SELECT last_id FROM bounds)
      AND o.created_at >= :prev_start AND o.created_at < :as_of
      AND o.status IN ('CONFIRMED', 'DELIVERED')  -- sold: not pending/abandoned, failed or cancelled
),
ord AS (
    SELECT retailer_id,
           count(*) FILTER (WHERE recent) AS orders_30d,
           count(*) FILTER (WHERE NOT recent) AS orders_prev_30d,
           coalesce(sum(total_amount) FILTER (WHERE recent), 0) AS gmv_30d,
           coalesce(sum(total_amount) FILTER (WHERE NOT recent), 0) AS gmv_prev_30d
    FROM sold
    GROUP BY retailer_id
),
quantities AS (
    SELECT s.retailer_id, oi.product_name, sum(oi.quantity) AS quantity
    FROM sold s
    JOIN order_items oi ON oi.order_id = s.id
    GROUP BY s.retailer_id, oi.product_name
),
top AS (  -- most sold first, ties by name
    SELECT retailer_id,
           to_jsonb((array_agg(product_name ORDER BY quantity DESC, product_name))[1 : :top_n]) AS top_products
    FROM quantities
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
          FROM credit_transactions d
          WHERE d.type = 'DEBIT' AND d.retailer_id > :after_id AND d.retailer_id <= (SELECT last_id FROM bounds)) ct
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
       ca.credit_limit, coalesce(ca.currency, 'USD') AS currency, p.locale
FROM page p
LEFT JOIN ord ON ord.retailer_id = p.id
LEFT JOIN top ON top.retailer_id = p.id
LEFT JOIN pay ON pay.retailer_id = p.id
LEFT JOIN credit_accounts ca ON ca.retailer_id = p.id
    AND ca.retailer_id > :after_id AND ca.retailer_id <= (SELECT last_id FROM bounds)
ORDER BY p.id
"""
)


# The page's upsert: the page travels as one JSON document (`json_to_recordset`), so the
# statement's text never changes (psycopg prepares it once) and the rows cross in one string
# that orjson writes (the standard C encoder took eight times as long). Before: a multi-row
# VALUES compiled 13 binds a row in SQLAlchemy on every page, then one array per column spent
# most of the job's CPU in psycopg's pure-Python list dumper.
UPSERT_PAGE_SQL = text(
    """
INSERT INTO retailer_insights (
    retailer_id, insight_date, orders_30d, orders_prev_30d, gmv_30d, gmv_prev_30d, avg_order_value,
    top_products, on_time_payment_rate, avg_days_to_pay, credit_utilisation, risk_level, message)
SELECT retailer_id, :insight_date, orders_30d, orders_prev_30d, gmv_30d, gmv_prev_30d, avg_order_value,
       top_products, on_time_payment_rate, avg_days_to_pay, credit_utilisation, risk_level, message
FROM json_to_recordset(CAST(:page AS json)) AS page(
    retailer_id bigint, orders_30d int, orders_prev_30d int, gmv_30d numeric, gmv_prev_30d numeric,
    avg_order_value numeric, top_products jsonb, on_time_payment_rate numeric, avg_days_to_pay numeric,
    credit_utilisation numeric, risk_level text, message text)
ON CONFLICT (retailer_id, insight_date) DO UPDATE SET
    orders_30d = excluded.orders_30d, orders_prev_30d = excluded.orders_prev_30d,
    gmv_30d = excluded.gmv_30d, gmv_prev_30d = excluded.gmv_prev_30d,
    avg_order_value = excluded.avg_order_value, top_products = excluded.top_products,
    on_time_payment_rate = excluded.on_time_payment_rate, avg_days_to_pay = excluded.avg_days_to_pay,
    credit_utilisation = excluded.credit_utilisation, risk_level = excluded.risk_level,
    message = excluded.message, generation = retailer_insights.generation + 1, generated_at = now()
"""
)


# The two statements as psycopg runs them: a page's rows come back as psycopg's tuples, and each
# statement is one autocommit round trip, without SQLAlchemy's Row objects, its parameter
# processing and the ROLLBACK it sends when a read's connection goes back to the pool.
_PAGE_STATS = str(PAGE_STATS_SQL.compile(dialect=psycopg_dialect()))
_UPSERT_PAGE = str(UPSERT_PAGE_SQL.compile(dialect=psycopg_dialect()))


READS_AHEAD = 2
"""Pages being read while one renders. Two: each page's statement runs on one core, so one read at
a time kept PostgreSQL to one core while the worker's core was idle between pages (a page's read
was the run's critical path)."""

# The end of the page that starts after `after_id`, from the primary key alone: the next page's
# read can start before this page's rows arrive.
_PAGE_END = """
SELECT max(id), count(*) FROM (
    SELECT id FROM retailers WHERE id > %(after_id)s ORDER BY id LIMIT %(page_size)s
) AS page
"""


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
    currency: str = "USD"
    locale: str | None = None

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


def render_insight_message(stats: InsightStats) -> str:
    """The friendly WhatsApp text: what changed, what sells, and one nudge about credit."""
    return _render(
        stats.name,
        stats.orders_30d,
        stats.gmv_30d,
        stats.gmv_prev_30d,
        stats.avg_order_value,
        stats.top_products,
        stats.on_time_rate,
        stats.risk_level,
        money_formatter(stats.currency, stats.locale),  # the account's currency, as the retailer's locale writes it
    )


def _render(
    name: str | None,
    orders_30d: int,
    gmv_30d: Decimal,
    gmv_prev_30d: Decimal,
    avg_order_value: Decimal,
    top_products: list[str],
    on_time_rate: Decimal | None,
    level: str,
    money: Callable[[Decimal], str],
) -> str:
    """`render_insight_message` of figures already derived, so a page derives each once."""
    first_name = (name or "there").split()[0]
    lines = [f"Hi {first_name}! Here is your month at a glance."]
    if orders_30d:
        trend = ""
        if gmv_prev_30d > 0:
            change = (gmv_30d - gmv_prev_30d) / gmv_prev_30d * 100
            trend = f" ({'up' if change >= 0 else 'down'} {abs(change):.0f}% on the month before)"
        lines.append(
            f"You placed {orders_30d} order{'s' if orders_30d != 1 else ''} worth "
            f"{money(gmv_30d)}{trend}, {money(avg_order_value)} on average."
        )
    else:
        lines.append("We have missed you: no orders in the last 30 days.")
    if top_products:
        lines.append("Your best sellers: " + ", ".join(top_products) + ".")
    if on_time_rate is not None:
        lines.append(f"You paid {on_time_rate * 100:.0f}% of your invoices on time.")
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


RATE, DAYS, CENTS = Decimal("0.0001"), Decimal("0.01"), Decimal("0.01")
NO_ORDERS_AVERAGE = Decimal("0.00")


def _stats_from_row(row: Any) -> InsightStats:
    """A PAGE_STATS_SQL row, unpacked by position (a row's attribute lookups cost more than the
    rest of a page's Python); numerics arrive as Decimal already."""
    (
        retailer_id,
        name,
        orders_30d,
        orders_prev_30d,
        gmv_30d,
        gmv_prev_30d,
        top_products,
        on_time_rate,
        avg_days_to_pay,
        outstanding,
        max_overdue_days,
        credit_limit,
        currency,
        locale,
    ) = row
    return InsightStats(
        retailer_id,
        name,
        orders_30d,
        orders_prev_30d,
        Decimal(gmv_30d),
        Decimal(gmv_prev_30d),
        list(top_products),
        None if on_time_rate is None else Decimal(on_time_rate).quantize(RATE),
        None if avg_days_to_pay is None else Decimal(avg_days_to_pay).quantize(DAYS),
        Decimal(outstanding),
        int(max_overdue_days),
        None if credit_limit is None else Decimal(credit_limit),
        currency,
        locale,
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


def _page_json(rows: list[Any]) -> str:
    """A page of PAGE_STATS_SQL rows as UPSERT_PAGE_SQL's document, in one loop.

    What `_insight_row(_stats_from_row(row))` writes, derived once a row: the dataclass, its
    properties (each read twice), one `format_money` lookup an amount and the JSON encoder's
    call back for every Decimal were over half of a page's Python (py-spy). Decimals go as
    their exact text (`str`), as the encoder's `default=str` wrote them.
    """
    page: list[dict[str, Any]] = []
    append = page.append
    for (
        retailer_id,
        name,
        orders_30d,
        orders_prev_30d,
        gmv_30d,
        gmv_prev_30d,
        top_products,
        on_time_rate,
        avg_days_to_pay,
        outstanding,
        max_overdue_days,
        credit_limit,
        currency,
        locale,
    ) in rows:
        if on_time_rate is not None:
            on_time_rate = on_time_rate.quantize(RATE)
        if avg_days_to_pay is not None:
            avg_days_to_pay = avg_days_to_pay.quantize(DAYS)
        average = (gmv_30d / orders_30d).quantize(CENTS, ROUND_HALF_UP) if orders_30d else NO_ORDERS_AVERAGE
        used = (outstanding / credit_limit).quantize(RATE, ROUND_HALF_UP) if credit_limit else None
        level = risk_level(max_overdue_days, used)
        message = _render(
            name,
            orders_30d,
            gmv_30d,
            gmv_prev_30d,
            average,
            top_products,
            on_time_rate,
            level,
            money_formatter(currency, locale),
        )
        append(
            {
                "retailer_id": retailer_id,
                "orders_30d": orders_30d,
                "orders_prev_30d": orders_prev_30d,
                "gmv_30d": str(gmv_30d),
                "gmv_prev_30d": str(gmv_prev_30d),
                "avg_order_value": str(average),
                "top_products": top_products,
                "on_time_payment_rate": None if on_time_rate is None else str(on_time_rate),
                "avg_days_to_pay": None if avg_days_to_pay is None else str(avg_days_to_pay),
                "credit_utilisation": None if used is None else str(used),
                "risk_level": level,
                "message": message,
            }
        )
    return orjson.dumps(page, default=str).decode()


# The week's insight messages due now: opted-in retailers in their local morning whose latest insight
# is at most a week old and who have no message under this ISO week's key yet (of their own calendar).
# A page is read by retailer id; a retailer not due is skipped, and the next hourly run finds it.
WEEKLY_MESSAGES_SQL = text(
    """
SELECT r.id, to_char(l.local, 'IYYY-"W"IW') AS week,
       i.orders_30d, i.gmv_30d, i.gmv_prev_30d, i.avg_order_value, i.top_products, i.on_time_payment_rate
FROM retailers r
CROSS JOIN LATERAL (SELECT CAST(:now AS timestamptz) AT TIME ZONE r.timezone AS local) l
JOIN LATERAL (
    SELECT * FROM retailer_insights ri
    WHERE ri.retailer_id = r.id AND ri.insight_date > CAST(l.local AS date) - 8
    ORDER BY ri.insight_date DESC LIMIT 1
) i ON true
WHERE r.insights_opt_in AND r.id > :after_id
  AND extract(hour FROM l.local) >= :morning_start AND extract(hour FROM l.local) < :morning_end
  AND NOT EXISTS (
      SELECT 1 FROM message_log m WHERE m.idempotency_key = 'insight:' || r.id || ':' || to_char(l.local, 'IYYY-"W"IW')
  )
ORDER BY r.id
LIMIT :page_size
"""
)


def _change(now: Decimal, before: Decimal) -> str:
    if before > 0:
        change = (now - before) / before * 100
        return "no change" if abs(change) < Decimal("0.5") else f"{'up' if change > 0 else 'down'} {abs(change):.0f}%"
    return "up from none" if now > 0 else "no change"


def weekly_message(row: Any) -> SendMessage:
    """The `insight_weekly` message of a WEEKLY_MESSAGES_SQL row: figures only, the text is made at send time."""
    rid, week, orders, gmv, gmv_before, average, top, on_time = row
    return SendMessage(
        idempotency_key=f"insight:{rid}:{week}",
        recipient_type="retailer",
        recipient_id=str(rid),
        template="insight_weekly",
        template_version=1,
        params={
            "orders_30d": int(orders),
            "gmv_30d": str(Decimal(gmv)),  # formatted at send time, in the account's currency
            "gmv_change": _change(Decimal(gmv), Decimal(gmv_before)),
            "avg_order_value": str(Decimal(average)),
            "top_products": ", ".join(top or []) or "none yet",
            "on_time_rate": "no invoices yet" if on_time is None else f"{Decimal(on_time) * 100:.0f}%",
        },
    )


class InsightActivities:
    """Activities of the insight job; the engine is injected by the worker."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def regenerate_page(
        self, insight_date: date, timezone: str, after_id: int, page_size: int
    ) -> tuple[int, int]:
        """Recompute and upsert one page; returns (last retailer id, retailers in the page)."""
        rows = await self._page_stats(insight_date, timezone, after_id, page_size)
        if not rows:
            return after_id, 0
        await self._write(_page_json(rows), insight_date)
        return rows[-1][0], len(rows)

    async def _page_stats(self, insight_date: date, timezone: str, after_id: int, page_size: int) -> list[Any]:
        prev_start, window_start, as_of = window(insight_date, timezone)
        async with driver_connection(autocommit(self._engine)) as conn:
            cursor = await conn.execute(
                _PAGE_STATS,
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
            return await cursor.fetchall()

    async def _page_end(self, after_id: int, page_size: int) -> int | None:
        """Where the page after the one starting after `after_id` starts: its last retailer's id,
        or None if that page is not full (it is the last)."""
        async with driver_connection(autocommit(self._engine)) as conn:
            cursor = await conn.execute(_PAGE_END, {"after_id": after_id, "page_size": page_size})
            row = await cursor.fetchone()
        if row is None or row[1] < page_size:
            return None
        return int(row[0])

    async def _write(self, page: str, insight_date: date) -> None:
        async with driver_connection(autocommit(self._engine)) as conn:
            await conn.execute(_UPSERT_PAGE, {"page": page, "insight_date": insight_date})

    @activity.defn(name="insight_messages")
    async def insight_messages(self, page: InsightMessagesPage) -> InsightMessages:
        """A page of the week's insight messages due at `page.now` (one statement)."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    WEEKLY_MESSAGES_SQL,
                    {
                        "now": page.now,
                        "after_id": page.after_retailer_id,
                        "morning_start": page.morning_start,
                        "morning_end": page.morning_end,
                        "page_size": page.page_size,
                    },
                )
            ).all()
        return InsightMessages(
            messages=[weekly_message(row) for row in rows],
            after_retailer_id=rows[-1][0] if rows else page.after_retailer_id,
            finished=len(rows) < page.page_size,
        )

    @activity.defn(name="regenerate_insights_chunk")
    async def regenerate_insights_chunk(self, chunk: InsightsChunk) -> InsightsChunkResult:
        """Pages after the cursor until the page or time budget runs out, heartbeating each page.

        A page is three steps: its statistics read (PostgreSQL), its messages rendered (Python),
        its upsert (PostgreSQL). They overlap: while a page renders, the next `READS_AHEAD` pages
        are being read (each page's start is the end of the one before, which `_PAGE_END`
        finds from the index at once) and the previous page's upsert is still running, so on two
        cores PostgreSQL works on several pages while Python renders one, instead of each step
        waiting for the others. Upserts still run one at a time and in page order, and the cursor
        is heartbeated only once a page's upsert has returned, so a retry resumes after the last
        page written. With `throttle_ms` a page is read only after the pause that follows the one
        before, as the throttle promises the database.
        """
        progress = InsightsChunkResult(
            after_retailer_id=chunk.after_retailer_id, pages_done=0, retailers_done=0, finished=False
        )
        details = activity.info().heartbeat_details
        if details:
            progress = InsightsChunkResult.model_validate(details[0])
            log.info("insights.resume", after_retailer_id=progress.after_retailer_id, pages_done=progress.pages_done)
        deadline = time.monotonic() + chunk.max_seconds
        reads: deque[asyncio.Task[list[Any]]] = deque()  # the pages being read, in page order
        next_after: int | None = progress.after_retailer_id  # where the next page to read starts; None: no more
        launched = progress.pages_done  # pages read or being read, for the page budget

        async def read_ahead(depth: int) -> None:
            nonlocal next_after, launched
            while next_after is not None and len(reads) < depth and launched < chunk.max_pages:
                if time.monotonic() >= deadline:
                    return
                after = next_after
                reads.append(
                    asyncio.create_task(
                        self._page_stats(chunk.insight_date, chunk.business_timezone, after, chunk.page_size)
                    )
                )
                launched += 1
                next_after = await self._page_end(after, chunk.page_size)

        def written(last_id: int, count: int) -> None:
            progress.after_retailer_id = last_id
            progress.pages_done += 1
            progress.retailers_done += count
            activity.heartbeat(progress)

        writing: asyncio.Task[None] | None = None  # the previous page's upsert
        wrote = (progress.after_retailer_id, 0)  # the (last id, retailers) it writes
        depth = 1 if chunk.throttle_ms else READS_AHEAD
        try:
            await read_ahead(depth)
            while reads:
                rows = await reads.popleft()
                if not chunk.throttle_ms:
                    await read_ahead(depth)  # the next pages' reads go out before the render holds the event loop
                page = _page_json(rows) if rows else None
                if writing is not None:
                    await writing
                    writing = None
                    written(*wrote)
                if page is None:
                    progress.finished = True
                    break
                writing, wrote = (
                    asyncio.create_task(self._write(page, chunk.insight_date)),
                    (rows[-1][0], len(rows)),
                )
                if len(rows) < chunk.page_size or chunk.throttle_ms:
                    await writing
                    writing = None
                    written(*wrote)
                    if len(rows) < chunk.page_size:
                        progress.finished = True
                        break
                    await asyncio.sleep(chunk.throttle_ms / 1000)
                    await read_ahead(depth)
            if writing is not None:  # the budget ran out with the last page's upsert in flight
                await writing
                writing = None
                written(*wrote)
        finally:
            for task in (*reads, writing):
                if task is not None:
                    task.cancel()
        log.info(
            "insights.chunk_done",
            pages=progress.pages_done,
            retailers=progress.retailers_done,
            after_retailer_id=progress.after_retailer_id,
            finished=progress.finished,
        )
        return progress


async def get_insight_message(engine: AsyncEngine, retailer_id: int, insight_date: date) -> str | None:
    """The stored friendly text of one retailer's insight for a day (None if not generated yet)."""
    async with engine.connect() as conn:
        return await conn.scalar(
            select(RetailerInsight.message).where(
                RetailerInsight.retailer_id == retailer_id, RetailerInsight.insight_date == insight_date
            )
        )
