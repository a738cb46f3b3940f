"""The reminders day's statements read what their page needs, however many retailers there are.

A day's statements once grew with the business: each page's statement read every debit still to
remind after it, and each batch's recipient lookup hashed every credit account, so the day's
database time grew with the square of its retailers (docs/BENCHMARKS.md, scale curve). These tests
count the rows PostgreSQL reads (EXPLAIN ANALYZE), not the time it takes.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.credit.reminders import DUE_PAGE, ReminderActivities
from activities.database import driver_connection
from activities.messaging import outbox
from schemas.credit import ReminderPageRequest

pytestmark = pytest.mark.asyncio(loop_scope="session")

DUE = date(2031, 3, 3)
RETAILERS = 3000
PAGE = 100

SEED = text(
    """
WITH shops AS (
    INSERT INTO retailers (name, phone, preferred_channel)
    SELECT 'Scale Shop ' || g, '+1559' || lpad(g::text, 7, '0'), 'sms' FROM generate_series(1, :n) g
    RETURNING id
), accounts AS (
    INSERT INTO credit_accounts (retailer_id, available_credit, currency) SELECT id, 50000, 'EUR' FROM shops
)
INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference)
SELECT s.id, 'DEBIT', 100 + k, CAST(:due AS date), 'scale-' || s.id || '-' || k
FROM shops s CROSS JOIN generate_series(1, 2) k
RETURNING retailer_id
"""
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def retailers(engine: AsyncEngine) -> list[int]:
    """RETAILERS retailers with two debits each due on DUE, and the tables' statistics."""
    async with engine.begin() as conn:
        ids = sorted(set((await conn.execute(SEED, {"n": RETAILERS, "due": DUE})).scalars()))
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE retailers, credit_accounts, credit_transactions"))
        await conn.commit()
    return ids


def scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (ANALYZE, FORMAT JSON) plan that reads a table."""
    found = [plan] if "Relation Name" in plan else []
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


def rows_read(plan: dict[str, Any], table: str) -> int:
    """The rows `plan` read from `table`: those its scans returned and those their filters dropped."""
    return sum(
        (n["Actual Rows"] + n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0))
        * n["Actual Loops"]
        for n in scans(plan)
        if n["Relation Name"] == table
    )


async def explain(engine: AsyncEngine, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    async with engine.connect() as conn:
        (raw,) = (await conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), params)).one()
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]


async def test_a_page_of_the_day_reads_its_own_retailers_debits_not_those_of_every_page_after_it(
    engine: AsyncEngine, retailers: list[int]
) -> None:
    after = retailers[len(retailers) // 2]
    request = ReminderPageRequest(reminder_date=DUE, after_retailer_id=after, page_size=PAGE)

    page = await ReminderActivities(engine, None, "https://pay.example.test").reminder_page(request)

    assert [r.retailer_id for r in page.due] == retailers[len(retailers) // 2 + 1 :][:PAGE]
    assert all(len(r.debit_ids) == 2 and r.currency == "eur" for r in page.due)
    params = ReminderActivities.statement_params(DUE, "UTC") | {"after": after, "page_size": PAGE}
    plan = await explain(engine, DUE_PAGE.text, params)
    # The page's 200 debits, read once to find the page and once for its rows; the 1,500 retailers
    # after it (3,000 debits) are never read. Nor is any table read whole.
    assert rows_read(plan, "credit_transactions") <= 2 * 2 * PAGE + 10
    assert rows_read(plan, "retailers") <= PAGE + 10
    assert not [
        n["Relation Name"]
        for n in scans(plan)
        if n["Node Type"] == "Seq Scan" and n["Relation Name"] != "recipient_opt_outs"
    ]


async def test_a_batchs_recipients_are_read_by_their_keys_not_by_hashing_every_account(
    engine: AsyncEngine, retailers: list[int]
) -> None:
    batch = [("retailer", str(r)) for r in retailers[1000:1100]]
    async with driver_connection(engine) as conn:
        found = await outbox.load_recipients(conn, batch)
    assert sorted(found) == sorted(batch)
    assert {r.currency for r in found.values()} == {"EUR"}

    sql = outbox.RECIPIENTS_SQL["retailer"].replace("%(rids)s", "CAST(:rids AS bigint[])")
    plan = await explain(engine, sql, {"rids": [int(r) for _, r in batch]})
    assert rows_read(plan, "credit_accounts") == len(batch)
    assert rows_read(plan, "retailers") == len(batch)
