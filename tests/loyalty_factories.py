"""Test data for the loyalty tests: customers whose balance is backed by their ledger."""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def new_customer(engine: AsyncEngine, points: int = 0, *, earn_rate: Decimal | str = "1") -> int:
    """A customer holding `points`, opened by an `adjusted` ledger row (balance == ledger sum)."""
    async with engine.begin() as conn:
        cid = await conn.scalar(
            text(
                "INSERT INTO customers (name, earn_rate) VALUES ('Loyal Customer', CAST(:rate AS numeric)) RETURNING id"
            ),
            {"rate": str(earn_rate)},
        )
        if points:
            await conn.execute(
                text(
                    "INSERT INTO loyalty_transactions (customer_id, type, points, balance_before, balance_after,"
                    " reference_type, reference_id) VALUES (:c, 'adjusted', :p, 0, :p, 'opening', :ref)"
                ),
                {"c": cid, "p": points, "ref": f"opening-{cid}"},
            )
            await conn.execute(text("UPDATE customers SET loyalty_points = :p WHERE id = :c"), {"c": cid, "p": points})
    return int(cid)


async def balance_and_ledger(engine: AsyncEngine, customer_id: int) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT c.loyalty_points AS balance,"
                    " (SELECT COALESCE(sum(points), 0)"
                    " FROM loyalty_transactions t WHERE t.customer_id = c.id) AS ledger"
                    " FROM customers c WHERE c.id = :c"
                ),
                {"c": customer_id},
            )
        ).one()
    return int(row.balance), int(row.ledger)


async def order_rows(engine: AsyncEngine, order_id: str) -> list[tuple[str, int, int, int]]:
    """(type, points, balance_before, balance_after) of an order's ledger rows, in order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT type, points, balance_before, balance_after FROM loyalty_transactions"
                " WHERE reference_type = 'order' AND reference_id = :o ORDER BY id"
            ),
            {"o": order_id},
        )
        return [tuple(r) for r in rows]


def order_ref() -> str:
    return f"ord-{uuid.uuid4().hex[:12]}"
