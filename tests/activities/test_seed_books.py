"""The demo's data keeps the books as the ledger does: `make run`'s first screen is the books."""

from __future__ import annotations

from datetime import date

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devtools.seed import money_loop_retailer, seed_demo
from services.churn_kpis import company_kpis

OFF_THE_BOOKS = text(
    """
SELECT ca.retailer_id, ca.credit_limit, ca.available_credit, COALESCE(o.outstanding, 0) AS outstanding
FROM credit_accounts ca
LEFT JOIN (SELECT retailer_id, sum(amount - cleared_amount) AS outstanding FROM credit_transactions
           WHERE type = 'DEBIT' AND status <> 'CLEARED' GROUP BY retailer_id) o ON o.retailer_id = ca.retailer_id
WHERE ca.available_credit <> ca.credit_limit - COALESCE(o.outstanding, 0)
"""
)


async def test_the_demo_seed_keeps_available_credit_at_limit_minus_outstanding(engine: AsyncEngine) -> None:
    """The seed clamped available credit at 0, so the over-limit demo shop showed 0.00 available
    beside 6,000.00 owed on a 5,000.00 limit; the ledger's first write made it -1,000.00."""
    await seed_demo(engine, today=date(2026, 12, 6))
    shop = await money_loop_retailer(engine)
    async with engine.connect() as conn:
        assert (await conn.execute(OFF_THE_BOOKS)).all() == []
        available = await conn.scalar(
            text("SELECT available_credit FROM credit_accounts WHERE retailer_id = :r"), {"r": shop}
        )
    assert available == -1000


async def test_the_demo_companies_have_churn_results_to_chart(engine: AsyncEngine) -> None:
    """`make run`'s company admin (acme) opens a Results page with weeks of recovered and lost
    cases, revenue in the company's currency, and both channels."""
    await seed_demo(engine, today=date(2026, 12, 6))  # a second call adds nothing
    for company, currency in (("acme", "USD"), ("globex", "EUR"), ("initech", "GBP")):
        kpis = await company_kpis(engine, company, today=date.today())
        assert kpis is not None and kpis.currency == currency
        assert kpis.total.recovered >= 20 and kpis.total.lost >= 10 and kpis.total.open == 2
        assert kpis.total.revenue > 0 and kpis.total.rate is not None
        assert sum(1 for week in kpis.weekly if week.recovered) >= 8
        assert {row.label for row in kpis.by_channel} == {"sms", "whatsapp"} and len(kpis.by_step) >= 3
