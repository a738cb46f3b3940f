"""Reading a retailer's insight from outside a workflow: the HTTP API (and any backend) asks here."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.insights import get_insight_message
from schemas.errors import Refused
from schemas.tables import RetailerInsight


class NoInsight(Refused):
    """No insight has been generated for the retailer (or not on that day)."""


async def latest_insight(engine: AsyncEngine, retailer_id: int, on: date | None = None) -> dict[str, Any]:
    """The retailer's newest insight (or the one of day `on`): its figures and friendly message."""
    query = select(RetailerInsight).where(RetailerInsight.retailer_id == retailer_id)
    query = (
        query.where(RetailerInsight.insight_date == on) if on else query.order_by(RetailerInsight.insight_date.desc())
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query.limit(1))).first()
    if row is None:
        raise NoInsight(f"no insight for retailer {retailer_id}" + (f" on {on}" if on else " yet"))
    message = await get_insight_message(engine, retailer_id, row.insight_date)
    fields = (
        "retailer_id",
        "insight_date",
        "orders_30d",
        "orders_prev_30d",
        "gmv_30d",
        "gmv_prev_30d",
        "avg_order_value",
        "top_products",
        "on_time_payment_rate",
        "avg_days_to_pay",
        "credit_utilisation",
        "risk_level",
        "generated_at",
    )
    return {**{f: getattr(row, f) for f in fields}, "message": message}
