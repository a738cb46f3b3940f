"""Payment reminders: which retailers are due one today, their payment links, and the bookkeeping.

A page is one set-based query (debits due today, grouped per retailer, with the reasons to skip a
retailer), then one payment link per retailer for the total due: the stored ones in one read, the
first links of a page in one INSERT, the replaced ones concurrently. After the
sends, one transaction marks every sent retailer's debits reminded; it only touches debits not yet
reminded that day, so a retry or a re-run of the day counts nothing twice.

Links (`payment_links`, one row per retailer, `activities/credit/paylinks.py`): a reminder carries
`{PUBLIC_BASE_URL}/pay/{token}`, a stable URL of ours; the Stripe Checkout Session is made when the
retailer opens it. While the debits a link pays are the same, the same URL is sent again: one read
for the page and no Stripe call at all. When they change, a new token is written (the old one is
retired, and its session, if it was opened, expired at Stripe first); a retry of the page after
that write finds the new token and sends it, so one URL per set of debits ever exists.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.credit.paylinks import LinkDebit, debits_fingerprint, expire_session, new_token, pay_url
from activities.payments.gateway import StripeGateway
from schemas.credit import (
    REMINDER_OFFSETS_DAYS,
    DueRetailer,
    ReminderPage,
    ReminderPageRequest,
    RemindersSent,
)

log = structlog.get_logger(__name__)

MAX_REMINDERS = len(REMINDER_OFFSETS_DAYS)
LINK_CONCURRENCY = 50

_DUE_DEBITS = """
    SELECT d.retailer_id, d.id, d.due_date, d.amount - d.cleared_amount AS outstanding
    FROM credit_transactions d
    WHERE d.type = 'DEBIT' AND d.status <> 'CLEARED'
      AND d.reminder_count < :max_reminders
      AND d.due_date = ANY(CAST(:due_dates AS date[]))
      AND (d.reminder_sent_at IS NULL OR d.reminder_sent_at < CAST(:day_start AS timestamptz))
"""

# `{ids}`: the retailers asked about, an array, so each is read by its key (joined to a list of
# them instead, the planner hashed the whole retailers table for every page).
_DUE_RETAILERS = """
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
       sum(due.outstanding) AS amount_due,
       max(CAST(:day AS date) - due.due_date) AS days_past_due,
       lower(a.currency) AS currency
FROM retailers r JOIN due ON due.retailer_id = r.id
LEFT JOIN credit_accounts a ON a.retailer_id = r.id
WHERE r.id = ANY({ids})
GROUP BY r.id, a.currency
ORDER BY r.id
"""

# The page's retailers are found first, reading the debits in retailer order from :after until
# :page_size retailers have one due: every debit is read once over a day's pages. Built from the
# due debits after :after (a CTE, so materialized whole), each page read every debit left to
# remind, and a day's statement time grew with the square of its retailers (docs/BENCHMARKS.md).
_PAGE_IDS = "CAST((SELECT ids FROM page) AS bigint[])"
DUE_PAGE = text(
    f"""
WITH page AS (
    SELECT COALESCE(array_agg(retailer_id), '{{}}') AS ids FROM (
        SELECT DISTINCT after.retailer_id
        FROM ({_DUE_DEBITS} AND d.retailer_id > :after) after
        ORDER BY after.retailer_id LIMIT :page_size
    ) first_due
), due AS ({_DUE_DEBITS} AND d.retailer_id = ANY({_PAGE_IDS}))
{_DUE_RETAILERS.format(ids=_PAGE_IDS)}"""
)

# The retailers a run handed on when it continued as new (`ReminderPageRequest.retailer_ids`): those
# of them still due and not yet reminded today.
_IDS = "CAST(:ids AS bigint[])"
DUE_AMONG = text(
    f"""
WITH due AS ({_DUE_DEBITS} AND d.retailer_id = ANY({_IDS}))
{_DUE_RETAILERS.format(ids=_IDS)}"""
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


STORED_LINKS = text(
    "SELECT retailer_id, token, url, fingerprint, generation, amount FROM payment_links"
    " WHERE retailer_id = ANY(CAST(:ids AS bigint[]))"
)

# The link's debits or amount at this reminder; the token (and so the URL) stays.
REFRESH_LINK = text(
    "UPDATE payment_links SET amount = :amount, url = :url, updated_at = now()"
    " WHERE retailer_id = :r AND token = :token"
)

CURRENT_LINK = text("SELECT token, checkout_session_id, fingerprint FROM payment_links WHERE retailer_id = :r")

RETIRE_TOKEN = text(
    "INSERT INTO retired_payment_links (token, retailer_id) VALUES (:token, :r) ON CONFLICT (token) DO NOTHING"
)

NEW_LINK = text(
    """
INSERT INTO payment_links (retailer_id, token, url, fingerprint, generation, amount, currency, debit_ids)
VALUES (:r, :token, :url, :fingerprint, :generation, :amount, :currency, CAST(:debit_ids AS bigint[]))
ON CONFLICT (retailer_id) DO NOTHING
RETURNING 1
"""
)

# A page's retailers that have no link yet, in one statement; a retailer whose row another
# attempt wrote meanwhile is not returned, and takes the one-by-one path (which reads it).
NEW_LINKS = text(
    """
INSERT INTO payment_links (retailer_id, token, url, fingerprint, generation, amount, currency, debit_ids)
SELECT x.r, x.token, x.url, x.fingerprint, 1, x.amount, x.currency, CAST(x.debit_ids AS bigint[])
FROM jsonb_to_recordset(CAST(:links AS jsonb))
     AS x(r bigint, token text, url text, fingerprint text, amount numeric, currency text, debit_ids text)
ON CONFLICT (retailer_id) DO NOTHING
RETURNING retailer_id, url
"""
)

# Only if the row is as read: no click stored a session, no other attempt replaced the token meanwhile.
REPLACE_LINK = text(
    """
UPDATE payment_links
SET token = :token, checkout_session_id = NULL, session_fingerprint = NULL, session_count = 0, url = :url,
    fingerprint = :fingerprint, generation = :generation, amount = :amount, currency = :currency,
    debit_ids = CAST(:debit_ids AS bigint[]), updated_at = now()
WHERE retailer_id = :r AND token = :old_token AND checkout_session_id IS NOT DISTINCT FROM :old_session
RETURNING 1
"""
)
REPLACE_ATTEMPTS = 3


def _heartbeat() -> None:
    """Alive, for the page's heartbeat timeout (a dead worker's page is retried within seconds)."""
    if activity.in_activity():
        activity.heartbeat()


class ReminderActivities:
    """`pay_base_url` (setting PUBLIC_BASE_URL): where `jobctl api` serves `/pay/{token}`.
    `stripe` (the process's gateway) is only needed to expire the open session of a link that is replaced."""

    def __init__(self, engine: AsyncEngine, stripe: StripeGateway | None, pay_base_url: str | None = None) -> None:
        self._engine = engine
        self._stripe = stripe
        self._base_url = pay_base_url.rstrip("/") if pay_base_url else None

    @activity.defn(name="credit_reminder_page")
    async def reminder_page(self, request: ReminderPageRequest) -> ReminderPage:
        """The next page of retailers due a reminder, each with its stable pay link for its total
        (or, given `retailer_ids`, those of them still due one)."""
        params = self.statement_params(request.reminder_date, request.business_timezone)
        if request.retailer_ids is None:
            statement, params = DUE_PAGE, params | {"after": request.after_retailer_id, "page_size": request.page_size}
        else:
            statement, params = DUE_AMONG, params | {"ids": request.retailer_ids}
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement, params)).all()
        _heartbeat()
        skipped: dict[str, int] = {}
        due = []
        lines: dict[int, list[LinkDebit]] = {}
        for row in rows:
            if row.skip_reason:
                skipped[row.skip_reason] = skipped.get(row.skip_reason, 0) + 1
            else:
                due.append(
                    DueRetailer(
                        retailer_id=row.retailer_id,
                        debit_ids=list(row.debit_ids),
                        amount_due=row.amount_due,
                        days_past_due=row.days_past_due,
                        currency=row.currency,
                    )
                )
                lines[row.retailer_id] = [
                    LinkDebit(*debit) for debit in zip(row.debit_ids, row.outstanding, row.due_dates, strict=True)
                ]
        links, link_failures = await self._payment_links(due, lines, request)
        return ReminderPage(
            # A read of handed-on retailers leaves the run's own place in its pages where it was.
            after_retailer_id=(
                rows[-1].retailer_id if rows and request.retailer_ids is None else request.after_retailer_id
            ),
            last_page=request.retailer_ids is not None or len(rows) < request.page_size,
            due=[r.model_copy(update={"payment_link": links[r.retailer_id]}) for r in due if r.retailer_id in links],
            skipped=skipped,
            link_failures=link_failures,
        )

    async def _payment_links(
        self, due: list[DueRetailer], lines: dict[int, list[LinkDebit]], request: ReminderPageRequest
    ) -> tuple[dict[int, str], dict[str, int]]:
        """retailer → its pay URL. A stored link for the same debits is sent again as it is (one
        read for the page, no Stripe call); a new or changed one is written (and an open session of
        the old one expired). A retailer whose link cannot be made is reported, not retried forever."""
        if self._base_url is None:
            raise ApplicationError(
                "PUBLIC_BASE_URL is not set: reminders link to {PUBLIC_BASE_URL}/pay/{token}",
                type="PublicBaseUrlNotSet",
                non_retryable=True,
            )
        if not due:
            return {}, {}
        async with self._engine.connect() as conn:
            stored = {
                row.retailer_id: row for row in await conn.execute(STORED_LINKS, {"ids": [r.retailer_id for r in due]})
            }
        links: dict[int, str] = {}
        refresh: list[dict[str, object]] = []
        replace: list[DueRetailer] = []
        for retailer in due:
            debits = lines[retailer.retailer_id]
            row = stored.get(retailer.retailer_id)
            if row is not None and row.fingerprint == debits_fingerprint(
                [d.debit_id for d in debits], retailer.currency or request.currency
            ):
                links[retailer.retailer_id] = url = pay_url(self._base_url, row.token)
                if row.amount != retailer.amount_due or row.url != url:  # a partial payment; a new PUBLIC_BASE_URL
                    refresh.append(
                        {"r": retailer.retailer_id, "token": row.token, "amount": retailer.amount_due, "url": url}
                    )
            else:
                replace.append(retailer)
        if refresh:
            async with self._engine.begin() as conn:
                await conn.execute(REFRESH_LINK, refresh)
        links |= await self._first_links([r for r in replace if r.retailer_id not in stored], lines, request.currency)
        replace = [r for r in replace if r.retailer_id not in links]

        slots = asyncio.Semaphore(LINK_CONCURRENCY)
        failures: dict[str, int] = {}

        async def one(retailer: DueRetailer) -> None:
            async with slots:
                _heartbeat()
                row = stored.get(retailer.retailer_id)
                try:
                    links[retailer.retailer_id] = await self._new_link(
                        retailer.retailer_id,
                        lines[retailer.retailer_id],
                        retailer.currency or request.currency,
                        row.generation + 1 if row else 1,
                    )
                except ApplicationError as error:
                    # Stripe still unavailable after the paced retries, a permanent error, or a link
                    # that kept changing: this retailer's reminder waits for the next run; the page goes on.
                    failures[error.type or "PaymentLinkFailed"] = failures.get(error.type or "PaymentLinkFailed", 0) + 1
                    log.warning("reminder.payment_link_failed", retailer_id=retailer.retailer_id, error_type=error.type)

        await asyncio.gather(*(one(r) for r in replace))
        return links, failures

    async def _first_links(
        self, retailers: list[DueRetailer], lines: dict[int, list[LinkDebit]], default_currency: str
    ) -> dict[int, str]:
        """The first link of each retailer that has none, all in one INSERT (a first cadence day
        writes a link per retailer: one statement instead of two round trips each)."""
        if not retailers:
            return {}
        assert self._base_url is not None
        rows = []
        for retailer in retailers:
            debits = lines[retailer.retailer_id]
            token = new_token()
            currency = retailer.currency or default_currency
            rows.append(
                {
                    "r": retailer.retailer_id,
                    "token": token,
                    "url": pay_url(self._base_url, token),
                    "fingerprint": debits_fingerprint([d.debit_id for d in debits], currency),
                    "currency": currency,
                    "amount": str(sum((d.outstanding for d in debits), Decimal("0"))),
                    "debit_ids": "{" + ",".join(str(d.debit_id) for d in debits) + "}",
                }
            )
        async with self._engine.begin() as conn:
            made = {row.retailer_id: row.url for row in await conn.execute(NEW_LINKS, {"links": json.dumps(rows)})}
        log.info("reminder.payment_links_made", count=len(made), generation=1)
        return made

    async def _new_link(self, retailer_id: int, debits: list[LinkDebit], currency: str, generation: int) -> str:
        """A new token for these debits. The old one's open session (if it was clicked) is expired
        at Stripe first, then the token replaced only if no click stored a session meanwhile
        (otherwise again); the old token is retired. No connection is held while Stripe answers."""
        assert self._base_url is not None
        fingerprint = debits_fingerprint([d.debit_id for d in debits], currency)
        amount = sum((d.outstanding for d in debits), Decimal("0"))
        for _ in range(REPLACE_ATTEMPTS):
            async with self._engine.connect() as conn:
                old = (await conn.execute(CURRENT_LINK, {"r": retailer_id})).first()
            if old is not None and old.fingerprint == fingerprint:  # written meanwhile (another attempt)
                return pay_url(self._base_url, old.token)
            if old is not None and old.checkout_session_id and self._stripe is not None:
                await expire_session(self._stripe, old.checkout_session_id, retailer_id)
            token = new_token()
            url = pay_url(self._base_url, token)
            params = {
                "r": retailer_id,
                "token": token,
                "url": url,
                "fingerprint": fingerprint,
                "generation": generation,
                "amount": amount,
                "currency": currency,
                "debit_ids": [d.debit_id for d in debits],
            }
            async with self._engine.begin() as conn:
                if old is None:
                    done = await conn.scalar(NEW_LINK, params)
                else:
                    done = await conn.scalar(
                        REPLACE_LINK, params | {"old_token": old.token, "old_session": old.checkout_session_id}
                    )
                    if done:
                        await conn.execute(RETIRE_TOKEN, {"token": old.token, "r": retailer_id})
            if done:
                log.info(
                    "reminder.payment_link_made",
                    retailer_id=retailer_id,
                    generation=generation,
                    replaced=old is not None,
                )
                return url
        raise ApplicationError(
            f"retailer {retailer_id}'s link kept changing while it was replaced", type="PaymentLinkContended"
        )

    @activity.defn(name="credit_mark_reminders_sent")
    async def mark_reminders_sent(self, request: RemindersSent) -> int:
        """reminder_count + 1 and reminder_sent_at on the sent retailers' debits, in one transaction."""
        debit_ids = [d for r in request.due for d in r.debit_ids]
        if not debit_ids:
            return 0
        async with self._engine.begin() as conn:
            marked = (
                await conn.execute(
                    MARK_REMINDED,
                    self.statement_params(request.reminder_date, request.business_timezone) | {"debit_ids": debit_ids},
                )
            ).all()
        return len(marked)

    @staticmethod
    def statement_params(day: date, timezone: str) -> dict[str, object]:
        """The parameters every reminders statement of `day` shares (its page, its marks)."""
        return {
            "day": day,
            "day_start": day_start(day, timezone),
            # The cadence as the due dates it reminds on `day`: the planner reads their share of the
            # debits from the column's statistics (it cannot for `day - due_date`, and guessed a
            # few hundred due where a whole page was).
            "due_dates": [day - timedelta(days=offset) for offset in REMINDER_OFFSETS_DAYS],
            "max_reminders": MAX_REMINDERS,
        }
