"""Payment reminders: which retailers are due one today, their payment links, and the bookkeeping.

A page is one set-based query (debits due today, grouped per retailer, with the reasons to skip a
retailer), then one Stripe payment link per retailer for the total due, made concurrently under
the idempotency key `paylink:{retailer}:{date}`. After the sends, one transaction marks every
sent retailer's debits reminded; it only touches debits not yet reminded that day, so a retry or a
re-run of the day counts nothing twice.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.payments.activities import PaymentActivities
from schemas.credit import (
    REMINDER_OFFSETS_DAYS,
    DueRetailer,
    ReminderPage,
    ReminderPageRequest,
    RemindersSent,
    reminder_key,
)
from schemas.messaging import SendMessage
from schemas.payments import PaymentLinkRequest

log = structlog.get_logger(__name__)

MAX_REMINDERS = len(REMINDER_OFFSETS_DAYS)
LINK_CONCURRENCY = 50

_DUE_DEBITS = """
    SELECT d.retailer_id, d.id, d.amount - d.cleared_amount AS outstanding
    FROM credit_transactions d
    WHERE d.type = 'DEBIT' AND d.status <> 'CLEARED'
      AND d.reminder_count < :max_reminders
      AND (CAST(:day AS date) - d.due_date) = ANY(CAST(:offsets AS int[]))
      AND (d.reminder_sent_at IS NULL OR d.reminder_sent_at < CAST(:day_start AS timestamptz))
"""

DUE_PAGE = text(
    f"""
WITH due AS ({_DUE_DEBITS} AND d.retailer_id > :after),
page AS (SELECT DISTINCT retailer_id FROM due ORDER BY retailer_id LIMIT :page_size)
SELECT r.id AS retailer_id,
       CASE WHEN r.credit_status = 'BLOCKED' THEN 'blocked'
            WHEN r.phone IS NULL THEN 'no_phone'
            WHEN EXISTS (SELECT 1 FROM recipient_opt_outs o
                         WHERE o.recipient_type = 'retailer' AND o.recipient_id = r.id::text
                           AND o.channel = r.preferred_channel) THEN 'opted_out'
       END AS skip_reason,
       array_agg(due.id ORDER BY due.id) AS debit_ids,
       sum(due.outstanding) AS amount_due
FROM page JOIN retailers r ON r.id = page.retailer_id JOIN due ON due.retailer_id = r.id
GROUP BY r.id
ORDER BY r.id
"""
)

# Only debits still unreminded that day, so a repeat changes nothing. The time is never before the
# business day's start, so a run for a later date (a test, a forward backfill) is idempotent too.
MARK_REMINDED = text(
    """
UPDATE credit_transactions
SET reminder_count = reminder_count + 1, reminder_sent_at = GREATEST(now(), CAST(:day_start AS timestamptz))
WHERE id = ANY(CAST(:debit_ids AS bigint[])) AND type = 'DEBIT' AND reminder_count < :max_reminders
  AND (reminder_sent_at IS NULL OR reminder_sent_at < CAST(:day_start AS timestamptz))
RETURNING id
"""
)


def day_start(day: date, timezone: str) -> datetime:
    """Midnight of `day` in the business time zone: "at most one a day" counts from there."""
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(timezone))


def paylink_key(retailer_id: int, day: date) -> str:
    return f"paylink:{retailer_id}:{day.isoformat()}"


class ReminderActivities:
    def __init__(self, engine: AsyncEngine, payments: PaymentActivities | None) -> None:
        self._engine = engine
        self._payments = payments

    @activity.defn(name="credit_reminder_page")
    async def reminder_page(self, request: ReminderPageRequest) -> ReminderPage:
        """The next page of retailers due a reminder, each with one payment link for its total."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(DUE_PAGE, self._params(request.reminder_date, request.business_timezone) | {
                "after": request.after_retailer_id, "page_size": request.page_size,
            })).all()
        skipped: dict[str, int] = {}
        due = []
        for row in rows:
            if row.skip_reason:
                skipped[row.skip_reason] = skipped.get(row.skip_reason, 0) + 1
            else:
                due.append(DueRetailer(retailer_id=row.retailer_id, debit_ids=list(row.debit_ids), amount_due=row.amount_due))
        links, link_failures = await self._payment_links(due, request)
        messages = [
            SendMessage(
                idempotency_key=reminder_key(r.retailer_id, request.reminder_date),
                recipient_type="retailer",
                recipient_id=str(r.retailer_id),
                template="payment_reminder",
                params={"debit_count": len(r.debit_ids), "amount_due": f"{r.amount_due:,.2f}", "payment_link": links[r.retailer_id]},
            )
            for r in due
            if r.retailer_id in links
        ]
        return ReminderPage(
            after_retailer_id=rows[-1].retailer_id if rows else request.after_retailer_id,
            last_page=len(rows) < request.page_size,
            messages=messages,
            due=[r for r in due if r.retailer_id in links],
            skipped=skipped,
            link_failures=link_failures,
        )

    async def _payment_links(self, due: list[DueRetailer], request: ReminderPageRequest) -> tuple[dict[int, str], dict[str, int]]:
        """retailer → link URL. A retailer whose link cannot be made permanently is reported, not retried forever."""
        if self._payments is None:
            raise ApplicationError("STRIPE_SECRET_KEY is not set: reminders need payment links", type="StripeNotConfigured", non_retryable=True)
        slots = asyncio.Semaphore(LINK_CONCURRENCY)
        failures: dict[str, int] = {}

        async def one(retailer: DueRetailer) -> tuple[int, str | None]:
            async with slots:
                try:
                    link = await self._payments.create_payment_link(
                        PaymentLinkRequest(
                            retailer_id=retailer.retailer_id,
                            amount=retailer.amount_due,
                            currency=request.currency,
                            idempotency_key=paylink_key(retailer.retailer_id, request.reminder_date),
                            description=f"{len(retailer.debit_ids)} overdue invoice(s)",
                        )
                    )
                except ApplicationError as error:
                    if not error.non_retryable:
                        raise
                    failures[error.type or "PaymentLinkFailed"] = failures.get(error.type or "PaymentLinkFailed", 0) + 1
                    log.warning("reminder.payment_link_failed", retailer_id=retailer.retailer_id, error_type=error.type)
                    return retailer.retailer_id, None
                return retailer.retailer_id, link.url

        results = await asyncio.gather(*(one(r) for r in due))
        return {rid: url for rid, url in results if url}, failures

    @activity.defn(name="credit_mark_reminders_sent")
    async def mark_reminders_sent(self, request: RemindersSent) -> int:
        """reminder_count + 1 and reminder_sent_at on the sent retailers' debits, in one transaction."""
        debit_ids = [d for r in request.due for d in r.debit_ids]
        if not debit_ids:
            return 0
        async with self._engine.begin() as conn:
            marked = (await conn.execute(MARK_REMINDED, self._params(request.reminder_date, request.business_timezone) | {"debit_ids": debit_ids})).all()
        return len(marked)

    @staticmethod
    def _params(day: date, timezone: str) -> dict[str, object]:
        return {
            "day": day,
            "day_start": day_start(day, timezone),
            "offsets": list(REMINDER_OFFSETS_DAYS),
            "max_reminders": MAX_REMINDERS,
        }

