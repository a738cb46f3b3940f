"""Insights: a retailer's latest nightly figures and the friendly message sent with them."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BaseModel

from schemas.money import Amount
from services.insights import latest_insight
from workers.api.auth import Principal, require
from workers.api.problems import responses
from workers.api.routes import StackDep, router

api = router("/v1/insights", "insights")


class Insight(BaseModel):
    retailer_id: int
    insight_date: date
    orders_30d: int
    orders_prev_30d: int
    gmv_30d: Amount
    gmv_prev_30d: Amount
    avg_order_value: Amount
    top_products: list[str]
    on_time_payment_rate: Decimal | None
    avg_days_to_pay: Decimal | None
    credit_utilisation: Decimal | None
    risk_level: Literal["LOW", "MEDIUM", "HIGH"]
    generated_at: datetime
    message: str


@api.get(
    "/retailers/{retailer_id}", response_model=Insight, responses=responses(404), operation_id="getRetailerInsight"
)
async def retailer_insight(
    retailer_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    stack: StackDep,
    _: Annotated[Principal, require("insights:read")],
    on: Annotated[date | None, Query(alias="date", description="that day's insight; default the latest")] = None,
) -> Insight:
    """The retailer's latest insight (figures for the last 30 days vs the 30 before) and its message."""
    return Insight(**await latest_insight(stack.engine, retailer_id, on))
