"""What an admin does and sees: pause, unpause, block (audited), the risk view, a retailer's profile.

A pause or block made here names the admin in `paused_by`, so the guardrails never lift it; an
admin's unpause lifts any pause. Each change and its audit row commit together.
"""

from __future__ import annotations

from schemas.errors import Refused
import json
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.credit.payments import credit_balance

AdminAction = Literal["pause", "unpause", "block"]
TARGET = {"pause": "PAUSED", "unpause": "ACTIVE", "block": "BLOCKED"}
AGING_BUCKETS = ("current", "1-7", "8-15", "16-30", "31-60", "60+")
AT_RISK_WITHIN_DAYS = 5


class CreditRefused(Refused):
    """An admin action that cannot apply (unknown retailer, nothing to change); the text says why."""


@dataclass
class AdminChange:
    retailer_id: int
    old_status: str
    new_status: str
    audit_id: int


async def change_status(engine: AsyncEngine, retailer_id: int, action: AdminAction, *, reason: str, actor: str) -> AdminChange:
    target = TARGET[action]
    async with engine.begin() as conn:
        row = (
            await conn.execute(text("SELECT credit_status FROM retailers WHERE id = :r FOR UPDATE"), {"r": retailer_id})
        ).first()
        if row is None:
            raise CreditRefused(f"no retailer {retailer_id}")
        old = row.credit_status
        if old == target:
            raise CreditRefused(f"retailer {retailer_id} is already {old}")
        if action == "pause" and old == "BLOCKED":
            raise CreditRefused(f"retailer {retailer_id} is BLOCKED: unpause it first to change a block into a pause")
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
        audit_id = await conn.scalar(
            text(
                "INSERT INTO audit_log (retailer_id, action, old_value, new_value, performed_by, reason)"
                " VALUES (:r, :action, CAST(:old AS jsonb), CAST(:new AS jsonb), :actor, :reason) RETURNING id"
            ),
            {
                "r": retailer_id,
                "action": f"credit_{action}d" if action != "block" else "credit_blocked",
                "old": json.dumps({"credit_status": old}),
                "new": json.dumps({"credit_status": target}),
                "actor": actor,
                "reason": reason,
            },
        )
    return AdminChange(retailer_id, old, target, audit_id)


async def retailer_exists(engine: AsyncEngine, retailer_id: int) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(text("SELECT 1 FROM retailers WHERE id = :r"), {"r": retailer_id}))


# --- the risk view -----------------------------------------------------------------------------

AGING = text(
    """
SELECT CASE WHEN days <= 0 THEN 'current' WHEN days <= 7 THEN '1-7' WHEN days <= 15 THEN '8-15'
            WHEN days <= 30 THEN '16-30' WHEN days <= 60 THEN '31-60' ELSE '60+' END AS bucket,
       count(*) AS debits, count(DISTINCT retailer_id) AS retailers, sum(outstanding) AS outstanding
FROM (SELECT retailer_id, CAST(:today AS date) - due_date AS days, amount - cleared_amount AS outstanding
      FROM credit_transactions WHERE type = 'DEBIT' AND status <> 'CLEARED') d
GROUP BY 1
"""
)

# Active retailers whose oldest open debit crosses max_outstanding_days within the next days.
AT_RISK = text(
    """
SELECT r.id AS retailer_id, ca.max_outstanding_days, max(CAST(:today AS date) - d.due_date) AS days_overdue,
       sum(d.amount - d.cleared_amount) AS outstanding, ca.credit_limit
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
        aging = {row.bucket: row for row in (await conn.execute(AGING, {"today": today})).all()}
        at_risk = (await conn.execute(AT_RISK, {"today": today, "within": AT_RISK_WITHIN_DAYS})).all()
    buckets = [
        {
            "bucket": name,
            "debits": aging[name].debits if name in aging else 0,
            "retailers": aging[name].retailers if name in aging else 0,
            "outstanding": aging[name].outstanding if name in aging else Decimal("0"),
        }
        for name in AGING_BUCKETS
    ]
    risky = [
        {
            "retailer_id": row.retailer_id,
            "days_overdue": row.days_overdue,
            "max_outstanding_days": row.max_outstanding_days,
            "days_left": row.max_outstanding_days - row.days_overdue,
            "outstanding": row.outstanding,
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
                    " ca.credit_limit, ca.available_credit, ca.max_order_value, ca.max_outstanding_days"
                    " FROM retailers r LEFT JOIN credit_accounts ca ON ca.retailer_id = r.id WHERE r.id = :r"
                ),
                {"r": retailer_id},
            )
        ).first()
        if row is None:
            raise CreditRefused(f"no retailer {retailer_id}")
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
        balance = await credit_balance(conn, retailer_id)
        link = (
            await conn.execute(
                text("SELECT url, amount, checkout_session_id, updated_at FROM payment_links WHERE retailer_id = :r"),
                {"r": retailer_id},
            )
        ).first()
    return {
        "retailer_id": row.id,
        "credit_balance": balance,
        "payment_link": {"url": link.url, "amount": link.amount, "checkout_session_id": link.checkout_session_id,
                         "sent_at": link.updated_at} if link else None,
        "credit_status": row.credit_status,
        "paused_at": row.credit_paused_at,
        "pause_reason": row.credit_pause_reason,
        "paused_by": row.paused_by,
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
