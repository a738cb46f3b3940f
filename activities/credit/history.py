"""A retailer's credit history for reading: its ledger with the running balance, its audit log and
its recent messages, a page at a time; and the retailers a search finds. Read-only: every change
goes through `services.credit_admin` and `services.credit` (the console shows, it never writes here).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# The running balance is what the retailer owes after each row, oldest first: a debit adds its
# amount, a credit takes off what it paid less what refunds and lost disputes gave back.
LEDGER = text(
    """
SELECT id, type, amount, refunded_amount, due_date, status, reference, notes, created_at,
       sum(CASE WHEN type = 'DEBIT' THEN amount ELSE -(amount - refunded_amount) END)
           OVER (ORDER BY id) AS balance
FROM credit_transactions WHERE retailer_id = :r
ORDER BY id DESC LIMIT :limit OFFSET :offset
"""
)

AUDIT = text(
    "SELECT id, created_at, action, reference, performed_by, reason FROM audit_log"
    " WHERE retailer_id = :r ORDER BY id DESC LIMIT :limit OFFSET :offset"
)

MESSAGES = text(
    "SELECT template, channel, status, error_code, reason, created_at, sent_at FROM message_log"
    " WHERE recipient_type = 'retailer' AND recipient_id = :r ORDER BY id DESC LIMIT :limit"
)

# Orders that failed, and checkouts whose 24-hour clock expired (or failed), newest first.
FAILED_ORDERS = text(
    """
SELECT o.id, o.external_id, o.payment_mode, o.total_amount,
       CASE WHEN o.status = 'FAILED' THEN 'FAILED' ELSE p.status END AS status,
       coalesce(o.failed_at, p.expired_at, o.created_at) AS at, o.failure_reason
FROM orders o LEFT JOIN pending_orders p ON p.order_id = o.id
WHERE o.retailer_id = :r AND (o.status = 'FAILED' OR p.status IN ('EXPIRED', 'FAILED'))
ORDER BY o.id DESC LIMIT :limit
"""
)

# By id, external id or a part of the name; credit accounts only.
SEARCH = text(
    """
SELECT r.id, r.name, r.external_id, r.credit_status, ca.currency, r.locale,
       coalesce((SELECT sum(d.amount - d.cleared_amount) FROM credit_transactions d
                 WHERE d.retailer_id = r.id AND d.type = 'DEBIT' AND d.status <> 'CLEARED'), 0) AS outstanding
FROM retailers r JOIN credit_accounts ca ON ca.retailer_id = r.id
WHERE CAST(r.id AS text) = :q OR r.external_id = :q OR r.name ILIKE :like
ORDER BY r.id LIMIT :limit OFFSET :offset
"""
)

NAMES = text("SELECT id, name FROM retailers WHERE id = ANY(:ids)")


async def ledger_page(engine: AsyncEngine, retailer_id: int, *, limit: int, offset: int) -> list[dict[str, Any]]:
    """Up to `limit` + 1 ledger rows, newest first, each with the balance owed after it."""
    async with engine.connect() as conn:
        rows = await conn.execute(LEDGER, {"r": retailer_id, "limit": limit + 1, "offset": offset})
        return [dict(row._mapping) for row in rows]


async def audit_page(engine: AsyncEngine, retailer_id: int, *, limit: int, offset: int) -> list[dict[str, Any]]:
    """Up to `limit` + 1 audit rows, newest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(AUDIT, {"r": retailer_id, "limit": limit + 1, "offset": offset})
        return [dict(row._mapping) for row in rows]


async def recent_messages(engine: AsyncEngine, retailer_id: int, *, limit: int = 10) -> list[dict[str, Any]]:
    """The retailer's latest messages and their status (the template's name, never the text or phone)."""
    async with engine.connect() as conn:
        rows = await conn.execute(MESSAGES, {"r": str(retailer_id), "limit": limit})
        return [dict(row._mapping) for row in rows]


async def failed_orders(engine: AsyncEngine, retailer_id: int, *, limit: int = 10) -> list[dict[str, Any]]:
    """The retailer's latest failed orders and expired checkouts."""
    async with engine.connect() as conn:
        rows = await conn.execute(FAILED_ORDERS, {"r": retailer_id, "limit": limit})
        return [dict(row._mapping) for row in rows]


async def search_retailers(engine: AsyncEngine, query: str, *, limit: int, offset: int) -> list[dict[str, Any]]:
    """Up to `limit` + 1 retailers with a credit account whose id or external id is `query`, or
    whose name contains it."""
    like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    async with engine.connect() as conn:
        rows = await conn.execute(SEARCH, {"q": query, "like": like, "limit": limit + 1, "offset": offset})
        return [dict(row._mapping) for row in rows]


async def names(engine: AsyncEngine, retailer_ids: list[int]) -> dict[int, str]:
    """The retailers' names by id (for a list the risk view gives by id)."""
    if not retailer_ids:
        return {}
    async with engine.connect() as conn:
        return {row.id: row.name for row in await conn.execute(NAMES, {"ids": retailer_ids})}
