"""What an admin does and sees: pause, unpause, block, limits, adjustments (all audited), the risk
view, a retailer's profile.

A pause or block made here names the admin in `paused_by`, so the guardrails never lift it; an
admin's unpause lifts any pause, and an admin's pause of a system-paused retailer makes the pause
theirs. Adjustments are ledger rows: one in the retailer's favour (a return, a write-off, a
dispute settled for them) is a CREDIT allocated like a payment, the rest staying as credit
balance; a charge is a DEBIT due today, which any credit balance clears. Each change and its audit
row commit together; an adjustment's reference makes a repeat a no-op. An adjustment in the
retailer's favour, and a change of limits, say whether a system pause still stands, for the
guardrails to re-check at once (`services.credit_admin`, which every door calls, does).
The money, the limits and the audit rows are written by the credit ledger (`activities.credit.ledger`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Literal

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from activities.credit import ledger
from activities.credit.ledger import LIMIT_COLUMNS, UnknownRetailer
from schemas.credit import RecordPayment
from schemas.errors import Refused
from schemas.money import format_money

AdminAction = Literal["pause", "unpause", "block"]
TARGET = {"pause": "PAUSED", "unpause": "ACTIVE", "block": "BLOCKED"}
AGING_BUCKETS = ("current", "1-7", "8-15", "16-30", "31-60", "60+")
AT_RISK_WITHIN_DAYS = 5


class CreditRefused(Refused):
    """An admin action that cannot apply (unknown retailer, nothing to change); the text says why."""


class AmountOutOfRange(CreditRefused):
    """An amount the ledger cannot hold once applied: a retailer's outstanding and available credit
    are numeric(14,2), so at most 999,999,999,999.99 either way."""


@dataclass
class AdminChange:
    retailer_id: int
    old_status: str
    new_status: str
    audit_id: int


async def change_status(
    engine: AsyncEngine, retailer_id: int, action: AdminAction, *, reason: str, actor: str
) -> AdminChange:
    target = TARGET[action]
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                text("SELECT credit_status, paused_by FROM retailers WHERE id = :r FOR UPDATE"), {"r": retailer_id}
            )
        ).first()
        if row is None:
            raise CreditRefused(f"no retailer {retailer_id}", code="unknown_retailer")
        old = row.credit_status
        system_pause_taken_over = action == "pause" and old == "PAUSED" and row.paused_by == "system"
        if old == target and not system_pause_taken_over:
            raise CreditRefused(
                f"retailer {retailer_id} is already {old}" + (f" (by {row.paused_by})" if row.paused_by else ""),
                code="status_unchanged",
            )
        if action == "pause" and old == "BLOCKED":
            raise CreditRefused(
                f"retailer {retailer_id} is BLOCKED: unpause it first to change a block into a pause",
                code="retailer_blocked",
            )
        await conn.execute(
            text(
                "UPDATE retailers SET credit_status = :s,"
                " credit_paused_at = CASE WHEN :s = 'ACTIVE' THEN NULL ELSE now() END,"
                " credit_pause_reason = CASE WHEN :s = 'ACTIVE' THEN NULL ELSE :reason END,"
                " paused_by = CASE WHEN :s = 'ACTIVE' THEN NULL ELSE :actor END"
                " WHERE id = :r"
            ),
            {"s": target, "reason": reason, "actor": actor, "r": retailer_id},
        )
        audit_id = await ledger.audit(
            conn,
            retailer_id,
            f"credit_{action}d" if action != "block" else "credit_blocked",
            actor=actor,
            old={"credit_status": old, "paused_by": row.paused_by},
            new={"credit_status": target, "paused_by": None if target == "ACTIVE" else actor},
            reason=reason,
        )
    return AdminChange(retailer_id, old, target, audit_id)


SYSTEM_PAUSED = text("SELECT credit_status = 'PAUSED' AND paused_by = 'system' FROM retailers WHERE id = :r")


@dataclass
class LimitsChange:
    retailer_id: int
    old: dict[str, Any]
    new: dict[str, Any]
    audit_id: int
    system_paused: bool = False
    """Under a system pause after this change: the caller re-checks the guardrails at once, so a
    raised limit lifts a pause made for being over the old one."""


async def set_limits(
    engine: AsyncEngine, retailer_id: int, limits: dict[str, Any], *, actor: str, reason: str | None = None
) -> LimitsChange:
    """Change any of credit_limit, max_order_value, max_outstanding_days; available credit follows."""
    limits = {k: v for k, v in limits.items() if v is not None}
    if not limits or set(limits) - set(LIMIT_COLUMNS):
        raise CreditRefused(f"give at least one of {', '.join(LIMIT_COLUMNS)}")
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT credit_limit, max_order_value, max_outstanding_days FROM credit_accounts"
                    " WHERE retailer_id = :r FOR UPDATE"
                ),
                {"r": retailer_id},
            )
        ).first()
        if row is None:
            raise CreditRefused(f"no retailer {retailer_id} with a credit account", code="unknown_retailer")
        old = {k: getattr(row, k) for k in limits}
        audit_id = await ledger.change_limits(conn, retailer_id, old, limits, actor=actor, reason=reason)
        system_paused = await conn.scalar(SYSTEM_PAUSED, {"r": retailer_id})
    return LimitsChange(retailer_id, old, limits, audit_id, bool(system_paused))


@dataclass
class Adjustment:
    retailer_id: int
    reference: str
    amount: Decimal
    transaction_id: int
    duplicate: bool
    cleared: list[dict[str, Any]] = field(default_factory=list)
    credit_balance_added: Decimal = Decimal("0")
    system_paused: bool = False
    """Still under a system pause after this change: the caller re-checks the guardrails at once
    (`services.credit.recheck_guardrails`), so an adjustment lifts it as a payment would."""
    currency: str = "USD"
    """ISO 4217: the credit account's, every amount's."""
    locale: str | None = None
    """The retailer's (BCP 47), for a text that writes the amounts."""

    def money(self, amount: Decimal) -> str:
        return format_money(amount, self.currency, self.locale)


# How a retailer's amounts are written: the account's currency (USD before migration 0011, or with no
# account) in the retailer's locale.
MONEY_STYLE = text(
    "SELECT coalesce(ca.currency, 'USD') AS currency, r.locale"
    " FROM retailers r LEFT JOIN credit_accounts ca ON ca.retailer_id = r.id WHERE r.id = :r"
)


async def money_style(conn: AsyncConnection, retailer_id: int) -> tuple[str, str | None]:
    """(currency, locale) of `retailer_id`; ("USD", None) for no such retailer."""
    row = (await conn.execute(MONEY_STYLE, {"r": retailer_id})).first()
    return (row.currency, row.locale) if row else ("USD", None)


async def adjust(
    engine: AsyncEngine, retailer_id: int, amount: Decimal, *, reason: str, actor: str, reference: str, today: date
) -> Adjustment:
    """+amount: in the retailer's favour (a CREDIT); -amount: a charge (a DEBIT due today)."""
    if amount == 0:
        raise CreditRefused("an adjustment needs a non-zero amount")
    if not reason.strip():
        raise CreditRefused("an adjustment needs a reason")
    ref = f"adjust:{reference}"
    try:
        return await _adjust(engine, retailer_id, amount, reason=reason, actor=actor, ref=ref, today=today)
    except DBAPIError as error:  # the transaction rolled back: nothing was written
        if not isinstance(error.orig, psycopg.errors.NumericValueOutOfRange):
            raise
        async with engine.connect() as conn:
            currency, locale = await money_style(conn, retailer_id)
        largest = format_money(Decimal("999999999999.99"), currency, locale)
        raise AmountOutOfRange(
            f"an adjustment of {format_money(amount, currency, locale)} would take retailer {retailer_id}'s"
            f" ledger past its largest amount ({largest} outstanding or available)"
        ) from None


async def _adjust(
    engine: AsyncEngine, retailer_id: int, amount: Decimal, *, reason: str, actor: str, ref: str, today: date
) -> Adjustment:
    async with engine.begin() as conn:
        style = await money_style(conn, retailer_id)
        if amount > 0:
            try:
                recorded = await ledger.record_credit(
                    conn,
                    RecordPayment(retailer_id=retailer_id, amount=amount, reference=ref, actor=actor),
                    notes=f"adjustment: {reason}",
                    action="credit_adjustment",
                    reason=reason,
                )
            except UnknownRetailer:
                raise CreditRefused(f"no retailer {retailer_id}", code="unknown_retailer") from None
            system_paused = await conn.scalar(SYSTEM_PAUSED, {"r": retailer_id})
            return Adjustment(
                retailer_id,
                ref,
                recorded.amount,
                recorded.credit_transaction_id,
                recorded.duplicate,
                [a.model_dump() for a in recorded.allocations],
                recorded.unallocated,
                bool(system_paused),
                *style,
            )
        try:
            charged = await ledger.charge(
                conn,
                retailer_id,
                -amount,
                due=today,
                reference=ref,
                notes=f"adjustment: {reason}",
                actor=actor,
                reason=reason,
            )
        except UnknownRetailer:
            raise CreditRefused(f"no retailer {retailer_id}", code="unknown_retailer") from None
    if charged.duplicate:
        return Adjustment(retailer_id, ref, -charged.amount, charged.debit_id, True, currency=style[0], locale=style[1])
    cleared = [a.model_dump() for a in charged.cleared]
    return Adjustment(retailer_id, ref, amount, charged.debit_id, False, cleared, currency=style[0], locale=style[1])


async def retailer_exists(engine: AsyncEngine, retailer_id: int) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(text("SELECT 1 FROM retailers WHERE id = :r"), {"r": retailer_id}))


# --- the risk view -----------------------------------------------------------------------------

AGING = text(
    """
SELECT CASE WHEN days <= 0 THEN 'current' WHEN days <= 7 THEN '1-7' WHEN days <= 15 THEN '8-15'
            WHEN days <= 30 THEN '16-30' WHEN days <= 60 THEN '31-60' ELSE '60+' END AS bucket,
       currency, count(*) AS debits, count(DISTINCT retailer_id) AS retailers, sum(outstanding) AS outstanding
FROM (SELECT d.retailer_id, CAST(:today AS date) - d.due_date AS days, d.amount - d.cleared_amount AS outstanding,
             coalesce(ca.currency, 'USD') AS currency
      FROM credit_transactions d LEFT JOIN credit_accounts ca ON ca.retailer_id = d.retailer_id
      WHERE d.type = 'DEBIT' AND d.status <> 'CLEARED') d
GROUP BY 1, 2
"""
)

# Active retailers whose oldest open debit crosses max_outstanding_days within the next days.
AT_RISK = text(
    """
SELECT r.id AS retailer_id, ca.max_outstanding_days, max(CAST(:today AS date) - d.due_date) AS days_overdue,
       sum(d.amount - d.cleared_amount) AS outstanding, ca.credit_limit, ca.currency, r.locale
FROM retailers r
JOIN credit_accounts ca ON ca.retailer_id = r.id
JOIN credit_transactions d ON d.retailer_id = r.id AND d.type = 'DEBIT' AND d.status <> 'CLEARED'
WHERE r.credit_status = 'ACTIVE'
GROUP BY r.id, ca.retailer_id
HAVING max(CAST(:today AS date) - d.due_date) BETWEEN ca.max_outstanding_days - :within AND ca.max_outstanding_days
ORDER BY days_overdue DESC, r.id
LIMIT 200
"""
)


@dataclass
class RiskView:
    today: date
    buckets: list[dict[str, Any]] = field(default_factory=list)
    at_risk: list[dict[str, Any]] = field(default_factory=list)


async def risk_view(engine: AsyncEngine, today: date) -> RiskView:
    async with engine.connect() as conn:
        aging = {(row.bucket, row.currency): row for row in (await conn.execute(AGING, {"today": today})).all()}
        at_risk = (await conn.execute(AT_RISK, {"today": today, "within": AT_RISK_WITHIN_DAYS})).all()
    # Every bucket once per currency owed in (amounts in two currencies are never added up); USD's
    # empty buckets when nothing is owed at all.
    currencies = sorted({currency for _, currency in aging}) or ["USD"]
    buckets = [
        {
            "bucket": name,
            "currency": currency,
            "debits": row.debits if row else 0,
            "retailers": row.retailers if row else 0,
            "outstanding": row.outstanding if row else Decimal("0"),
        }
        for currency in currencies
        for name in AGING_BUCKETS
        for row in [aging.get((name, currency))]
    ]
    risky = [
        {
            "retailer_id": row.retailer_id,
            "days_overdue": row.days_overdue,
            "max_outstanding_days": row.max_outstanding_days,
            "days_left": row.max_outstanding_days - row.days_overdue,
            "outstanding": row.outstanding,
            "currency": row.currency,
            "locale": row.locale,
        }
        for row in at_risk
    ]
    return RiskView(today, buckets, risky)


# --- a retailer's profile ----------------------------------------------------------------------


async def profile(engine: AsyncEngine, retailer_id: int, today: date) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT r.id, r.credit_status, r.credit_paused_at, r.credit_pause_reason, r.paused_by,"
                    " ca.credit_limit, ca.available_credit, ca.max_order_value, ca.max_outstanding_days,"
                    " ca.currency, r.locale"
                    " FROM retailers r LEFT JOIN credit_accounts ca ON ca.retailer_id = r.id WHERE r.id = :r"
                ),
                {"r": retailer_id},
            )
        ).first()
        if row is None:
            raise CreditRefused(f"no retailer {retailer_id}", code="unknown_retailer")
        debits = (
            await conn.execute(
                text(
                    "SELECT id, amount, cleared_amount, due_date, status, reminder_count,"
                    " CAST(:today AS date) - due_date AS days_overdue FROM credit_transactions"
                    " WHERE retailer_id = :r AND type = 'DEBIT' AND status <> 'CLEARED' ORDER BY due_date, id"
                ),
                {"r": retailer_id, "today": today},
            )
        ).all()
        audit = (
            await conn.execute(
                text(
                    "SELECT created_at, action, performed_by, reason FROM audit_log"
                    " WHERE retailer_id = :r ORDER BY id DESC LIMIT 10"
                ),
                {"r": retailer_id},
            )
        ).all()
        balance = await ledger.credit_balance(conn, retailer_id)
        link = (await conn.execute(PAYMENT_LINK, {"r": retailer_id})).first()
        stripe_payments = (await conn.execute(STRIPE_PAYMENTS, {"r": retailer_id})).all()
    return {
        "retailer_id": row.id,
        "credit_balance": balance,
        "stripe_payments": [
            {
                "reference": s.reference,
                "payment_intent": s.stripe_payment_intent_id,
                "amount": s.amount,
                "refunded_amount": s.refunded_amount,
                "disputed": s.disputed_at is not None,
                "dispute_id": s.dispute_id,
                "recorded_at": s.created_at,
            }
            for s in stripe_payments
        ],
        "payment_link": _link(link) if link else None,
        "credit_status": row.credit_status,
        "paused_at": row.credit_paused_at,
        "pause_reason": row.credit_pause_reason,
        "paused_by": row.paused_by,
        "currency": row.currency or "USD",
        "locale": row.locale,
        "credit_limit": row.credit_limit,
        "available_credit": row.available_credit,
        "max_order_value": row.max_order_value,
        "max_outstanding_days": row.max_outstanding_days,
        "outstanding": sum((d.amount - d.cleared_amount for d in debits), Decimal("0")),
        "open_debits": [
            {
                "id": d.id,
                "due_date": d.due_date,
                "amount": d.amount,
                "cleared_amount": d.cleared_amount,
                "status": d.status,
                "days_overdue": d.days_overdue,
                "reminders": d.reminder_count,
            }
            for d in debits
        ],
        "recent_audit": [
            {"at": a.created_at, "action": a.action, "by": a.performed_by, "reason": a.reason} for a in audit
        ],
    }


# The retailer's latest payments through Stripe (a pay link's Checkout Session or PaymentIntent):
# what refunds and lost disputes took back of each, and whether one is disputed now.
STRIPE_PAYMENTS = text(
    "SELECT reference, stripe_payment_intent_id, amount, refunded_amount, disputed_at, dispute_id, created_at"
    " FROM credit_transactions WHERE retailer_id = :r AND type = 'CREDIT' AND stripe_payment_intent_id IS NOT NULL"
    " ORDER BY id DESC LIMIT 10"
)


# --- a retailer's payment link -----------------------------------------------------------------

# The one link a retailer has (payment_links is one row per retailer): the reminders send the same
# /pay/{token} URL while the debits it pays are unchanged, and a new one when they change.
# `sent_at` is when a reminder last carried it: its debits' last mark. The row's updated_at is not,
# since a click that stores the Checkout Session touches the row too.
PAYMENT_LINK = text(
    """
SELECT l.url, l.amount, l.currency, l.checkout_session_id, l.debit_ids,
       (SELECT max(d.reminder_sent_at) FROM credit_transactions d
        WHERE d.retailer_id = l.retailer_id AND d.id = ANY(l.debit_ids)) AS sent_at
FROM payment_links l WHERE l.retailer_id = :r
"""
)


def _link(row: Any) -> dict[str, Any]:
    return {
        "url": row.url,
        "amount": row.amount,
        "currency": row.currency,
        "checkout_session_id": row.checkout_session_id,
        "debit_ids": list(row.debit_ids or []),
        "sent_at": row.sent_at,
    }


async def payment_link(engine: AsyncEngine, retailer_id: int) -> dict[str, Any]:
    """The retailer's open payment link; `CreditRefused` when there is no retailer or no link."""
    async with engine.connect() as conn:
        if not await conn.scalar(text("SELECT 1 FROM retailers WHERE id = :r"), {"r": retailer_id}):
            raise CreditRefused(f"no retailer {retailer_id}", code="unknown_retailer")
        link = (await conn.execute(PAYMENT_LINK, {"r": retailer_id})).first()
    if link is None:
        raise CreditRefused(
            f"retailer {retailer_id} has no payment link (one is made with the first reminder of a debit due)",
            code="no_payment_link",
        )
    return _link(link)
