"""The nightly integrity audit: every customer whose balance is not the sum of their ledger.

One set-based query (one aggregate over the ledger joined to the customers) finds them; the
audit only reports (result, `loyalty_discrepancies` gauge, one log line per customer): it never
rewrites a balance, because which side is wrong is for a person to decide.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from schemas.loyalty import Discrepancy, LoyaltyAuditRequest, LoyaltyAuditResult

log = structlog.get_logger(__name__)

AUDIT_SQL = text(
    """
WITH ledger AS (
    SELECT customer_id, sum(points) AS total FROM loyalty_transactions GROUP BY customer_id
), checked AS (
    SELECT c.id AS customer_id, c.loyalty_points AS balance, COALESCE(l.total, 0) AS ledger_sum
    FROM customers c LEFT JOIN ledger l ON l.customer_id = c.id
), wrong AS (
    SELECT customer_id, balance, ledger_sum, balance - ledger_sum AS difference
    FROM checked WHERE balance <> ledger_sum OR balance < 0
)
SELECT (SELECT count(*) FROM checked) AS customers_checked,
       (SELECT count(*) FROM wrong) AS discrepancy_count,
       w.customer_id, w.balance, w.ledger_sum, w.difference
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT * FROM wrong ORDER BY abs(difference) DESC, customer_id LIMIT :max_listed
) AS w ON true
"""
)


async def audit_balances(engine: AsyncEngine, max_listed: int) -> tuple[int, int, list[Discrepancy]]:
    """(customers checked, customers wrong, the largest differences first)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(AUDIT_SQL, {"max_listed": max_listed})).all()
    listed = [
        Discrepancy(customer_id=r.customer_id, balance=r.balance, ledger_sum=r.ledger_sum, difference=r.difference)
        for r in rows
        if r.customer_id is not None
    ]
    return int(rows[0].customers_checked), int(rows[0].discrepancy_count), listed


class LoyaltyAuditActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @activity.defn(name="loyalty_audit_balances")
    async def audit(self, request: LoyaltyAuditRequest) -> LoyaltyAuditResult:
        checked_at = datetime.now(UTC)
        audit_date = request.audit_date or checked_at.astimezone(ZoneInfo(request.business_timezone)).date()
        checked, wrong, listed = await audit_balances(self._engine, request.max_listed)
        activity.metric_meter().create_gauge(
            "loyalty_discrepancies", "Customers whose points balance differs from their ledger (last audit)"
        ).set(wrong)
        for d in listed:
            log.warning(
                "loyalty.discrepancy",
                customer_id=d.customer_id,
                balance=d.balance,
                ledger_sum=d.ledger_sum,
                difference=d.difference,
                audit_date=audit_date.isoformat(),
            )
        log.info(
            "loyalty.audit_done", audit_date=audit_date.isoformat(), customers_checked=checked, discrepancies=wrong
        )
        return LoyaltyAuditResult(
            audit_date=audit_date,
            checked_at=checked_at,
            customers_checked=checked,
            discrepancy_count=wrong,
            discrepancies=listed,
        )
