"""Payment reminders: which retailers are due one today, their payment links, and the bookkeeping.

A page is one set-based query (debits due today, grouped per retailer, with the reasons to skip a
retailer), then one payment link per retailer for the total due, made concurrently. After the
sends, one transaction marks every sent retailer's debits reminded; it only touches debits not yet
reminded that day, so a retry or a re-run of the day counts nothing twice.

Links (`payment_links`, one row per retailer): a link is a Stripe Checkout Session with one line per
debit. Its fingerprint digests the debits and the amounts it pays; while today's match and the
session is still open at Stripe, the same link is sent again. Otherwise the old session is expired
at Stripe first (it can no longer be paid), then a new one is created under
`paylink:{retailer}:{generation}:{fingerprint}` and stored: a retry before the row was written
gets the same session back, so no second payable link ever exists.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
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
from schemas.payments import PaymentLinkLine, PaymentLinkRequest

log = structlog.get_logger(__name__)

MAX_REMINDERS = len(REMINDER_OFFSETS_DAYS)
LINK_CONCURRENCY = 50

_DUE_DEBITS = """
    SELECT d.retailer_id, d.id, d.due_date, d.amount - d.cleared_amount AS outstanding
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
       array_agg(due.outstanding ORDER BY due.id) AS outstanding,
       array_agg(due.due_date ORDER BY due.id) AS due_dates,
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


def paylink_key(retailer_id: int, generation: int, fingerprint: str) -> str:
    return f"paylink:{retailer_id}:{generation}:{fingerprint}"


@dataclass(frozen=True)
class LinkDebit:
    debit_id: int
    outstanding: Decimal
    due_date: date


def link_fingerprint(debits: list[LinkDebit], currency: str) -> str:
    """The same debits with the same amounts left to pay → the same link."""
    canonical = currency + "|" + ",".join(f"{d.debit_id}:{d.outstanding:.2f}" for d in sorted(debits, key=lambda d: d.debit_id))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


STORED_LINK = text("SELECT checkout_session_id, url, fingerprint, generation FROM payment_links WHERE retailer_id = :r")

STORE_LINK = text(
    """
INSERT INTO payment_links (retailer_id, checkout_session_id, url, fingerprint, generation, amount, currency, debit_ids)
VALUES (:r, :session, :url, :fingerprint, :generation, :amount, :currency, CAST(:debit_ids AS bigint[]))
ON CONFLICT (retailer_id) DO UPDATE
SET checkout_session_id = excluded.checkout_session_id, url = excluded.url, fingerprint = excluded.fingerprint,
    generation = excluded.generation, amount = excluded.amount, currency = excluded.currency,
    debit_ids = excluded.debit_ids, updated_at = now()
"""
)


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
        lines: dict[int, list[LinkDebit]] = {}
        for row in rows:
            if row.skip_reason:
                skipped[row.skip_reason] = skipped.get(row.skip_reason, 0) + 1
            else:
                due.append(DueRetailer(retailer_id=row.retailer_id, debit_ids=list(row.debit_ids), amount_due=row.amount_due))
                lines[row.retailer_id] = [LinkDebit(*debit) for debit in zip(row.debit_ids, row.outstanding, row.due_dates, strict=True)]
        links, link_failures = await self._payment_links(due, lines, request)
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

    async def _payment_links(
        self, due: list[DueRetailer], lines: dict[int, list[LinkDebit]], request: ReminderPageRequest
    ) -> tuple[dict[int, str], dict[str, int]]:
        """retailer → link URL. A retailer whose link cannot be made permanently is reported, not retried forever."""
        if self._payments is None:
            raise ApplicationError("STRIPE_SECRET_KEY is not set: reminders need payment links", type="StripeNotConfigured", non_retryable=True)
        slots = asyncio.Semaphore(LINK_CONCURRENCY)
        failures: dict[str, int] = {}

        async def one(retailer: DueRetailer) -> tuple[int, str | None]:
            async with slots:
                try:
                    url = await self._link_for(retailer.retailer_id, lines[retailer.retailer_id], request.currency)
                except ApplicationError as error:
                    if not error.non_retryable:
                        raise
                    failures[error.type or "PaymentLinkFailed"] = failures.get(error.type or "PaymentLinkFailed", 0) + 1
                    log.warning("reminder.payment_link_failed", retailer_id=retailer.retailer_id, error_type=error.type)
                    return retailer.retailer_id, None
                return retailer.retailer_id, url

        results = await asyncio.gather(*(one(r) for r in due))
        return {rid: url for rid, url in results if url}, failures

    async def _link_for(self, retailer_id: int, debits: list[LinkDebit], currency: str) -> str:
        """The retailer's open link for exactly these debits: the stored one, or a new one."""
        assert self._payments is not None
        fingerprint = link_fingerprint(debits, currency)
        async with self._engine.connect() as conn:
            stored = (await conn.execute(STORED_LINK, {"r": retailer_id})).first()
        generation = 1
        if stored is not None:
            generation = stored.generation + 1
            if stored.fingerprint == fingerprint and await self._still_open(stored.checkout_session_id, retailer_id):
                return stored.url
            if stored.fingerprint != fingerprint:
                await self._expire(stored.checkout_session_id, retailer_id)
        amount = sum((d.outstanding for d in debits), Decimal("0"))
        ids = ",".join(str(d.debit_id) for d in debits)
        link = await self._payments.create_payment_link(
            PaymentLinkRequest(
                retailer_id=retailer_id,
                amount=amount,
                currency=currency,
                idempotency_key=paylink_key(retailer_id, generation, fingerprint),
                description=f"{len(debits)} invoice(s)",
                lines=[PaymentLinkLine(description=f"Invoice {d.debit_id} (due {d.due_date})", amount=d.outstanding) for d in debits],
                metadata={"debit_ids": ids if len(ids) <= 500 else ids[:ids.rindex(",", 0, 496)] + ",...", "fingerprint": fingerprint},
            )
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                STORE_LINK,
                {
                    "r": retailer_id, "session": link.checkout_session_id, "url": link.url, "fingerprint": fingerprint,
                    "generation": generation, "amount": amount, "currency": currency, "debit_ids": [d.debit_id for d in debits],
                },
            )
        return link.url

    async def _still_open(self, session_id: str, retailer_id: int) -> bool:
        assert self._payments is not None
        try:
            return (await self._payments.payment_link(session_id, retailer_id)).status == "open"
        except ApplicationError as error:
            if error.type != "StripeInvalidRequest":  # 404: Stripe no longer has it; make a new one
                raise
            log.warning("reminder.payment_link_missing", retailer_id=retailer_id, checkout_session_id=session_id)
            return False

    async def _expire(self, session_id: str, retailer_id: int) -> None:
        assert self._payments is not None
        try:
            await self._payments.expire_payment_link(session_id, retailer_id)
        except ApplicationError as error:
            if error.type != "StripeInvalidRequest":
                raise
            log.warning("reminder.payment_link_missing", retailer_id=retailer_id, checkout_session_id=session_id)

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

