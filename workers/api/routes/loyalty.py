"""Loyalty: apply an order's points (the checkout path), queue a failed application, the
reconciliation items by state, retry / resolve one (the key's name as the actor), the audit."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from activities.loyalty.errors import LoyaltyRefusal
from activities.loyalty.ledger import apply_points_at_checkout
from schemas.loyalty import (
    MAX_POINTS,
    ApplyOrderPoints,
    FailedPointsApplication,
    LoyaltyAuditResult,
    PointsApplication,
    QueuedItem,
    ReconcileStatus,
    Resolution,
)
from schemas.money import Amount, AmountIn
from schemas.text import Reason
from services import loyalty as service
from workers.api.auth import Principal, require
from workers.api.problems import Problem, responses
from workers.api.routes import Accepted, Page, PagingDep, RequestBody, StackDep, page, router

api = router("/v1/loyalty", "loyalty")
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1, description="loyalty_reconciliation_queue.id")]
OrderRef = Annotated[
    str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9:_\-.]+$", description="the order's reference")
]
QueueState = Literal["PENDING", "RESOLVED", "NEEDS_REVIEW"]


class OrderPoints(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"customer_id": 7, "points_redeemed": 200, "order_total": "84.20"}]}
    )

    customer_id: int = Field(gt=0, le=2**63 - 1)
    points_redeemed: int = Field(default=0, ge=0, le=MAX_POINTS)
    order_total: AmountIn = Field(ge=0, le=Decimal("1e10"), description="zero or more, at most 10,000,000,000")


class FailedApplication(OrderPoints):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"customer_id": 7, "points_redeemed": 200, "order_total": "84.20", "error": "ledger timeout"}]
        }
    )

    payment_intent_id: str | None = Field(default=None, pattern=r"^pi_[A-Za-z0-9_]+$")
    error: Reason | None = Field(default=None, description="why the inline application failed")


class ReconciliationItem(BaseModel):
    item_id: int
    customer_id: int
    order_id: str
    payment_intent_id: str | None
    points_redeemed: int
    order_total: Amount
    status: QueueState
    resolution: str | None
    attempts: int
    last_error: str | None
    resolved_by: str | None
    resolved_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ReconciliationItemPage(Page[ReconciliationItem]):
    """A page of reconciliation items."""


class Audit(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"audit_date": "2026-12-01"}]})

    audit_date: date | None = Field(default=None, description="default: today in the business time zone")


def _refusal(refusal: LoyaltyRefusal) -> Problem:
    return Problem(404 if refusal.type == "UnknownCustomer" else 409, refusal.message, code=refusal.type)


@api.post(
    "/orders/{order_id}/points",
    response_model=PointsApplication,
    responses=responses(404, 409),
    operation_id="applyOrderPoints",
)
async def apply_points(
    order_id: OrderRef, body: OrderPoints, stack: StackDep, _: Annotated[Principal, require("loyalty:write")]
) -> PointsApplication:
    """Apply the order's points in one transaction (redeem, then earn); the same order twice changes nothing."""
    request = ApplyOrderPoints(
        customer_id=body.customer_id,
        order_id=order_id,
        points_redeemed=body.points_redeemed,
        order_total=body.order_total,
    )
    try:
        return await apply_points_at_checkout(
            stack.engine, request.customer_id, request.order_id, request.points_redeemed, request.order_total
        )
    except LoyaltyRefusal as refusal:
        raise _refusal(refusal) from None


@api.post(
    "/orders/{order_id}/failed-points",
    response_model=QueuedItem,
    responses=responses(404),
    operation_id="queueFailedPoints",
)
async def queue_failed(
    order_id: OrderRef, body: FailedApplication, stack: StackDep, _: Annotated[Principal, require("loyalty:write")]
) -> QueuedItem:
    """Queue an order whose points failed to apply; its workflow retries it (once per order)."""
    FailedPointsApplication(order_id=order_id, **body.model_dump())  # the payload's own rules, as 422
    try:
        return await service.enqueue_failed_points(
            stack.client,
            stack.engine,
            body.customer_id,
            order_id,
            body.points_redeemed,
            body.order_total,
            payment_intent_id=body.payment_intent_id,
            error=body.error,
            task_queue=stack.settings.task_queue,
        )
    except LoyaltyRefusal as refusal:
        raise _refusal(refusal) from None


@api.get("/items", response_model=ReconciliationItemPage, operation_id="listReconciliationItems")
async def list_items(
    stack: StackDep,
    paging: PagingDep,
    _: Annotated[Principal, require("loyalty:read")],
    state: Annotated[QueueState | None, Query()] = None,
) -> ReconciliationItemPage:
    """Reconciliation items by state, oldest first (NEEDS_REVIEW: the ones waiting for a person)."""
    rows = await service.list_items(stack.engine, state=state, limit=paging.limit + 1, offset=paging.offset)
    return page(ReconciliationItemPage, [ReconciliationItem(**r) for r in rows], paging)


@api.get(
    "/items/{item_id}", response_model=ReconcileStatus, responses=responses(404), operation_id="getReconciliationItem"
)
async def show_item(
    item_id: ItemId, stack: StackDep, _: Annotated[Principal, require("loyalty:read")]
) -> ReconcileStatus:
    """The item's reconciliation: status, what it is doing, why it needs review."""
    return await service.reconciliation_status(stack.client, item_id)


@api.post(
    "/items/{item_id}/retry",
    status_code=202,
    response_model=Accepted,
    responses=responses(404, 409),
    operation_id="retryReconciliationItem",
)
async def retry(item_id: ItemId, stack: StackDep, caller: Annotated[Principal, require("loyalty:write")]) -> Accepted:
    """Try the item again now (a fresh window of retries)."""
    await service.retry_now(stack.client, item_id, caller.name)
    return Accepted(workflow_id=f"loyalty-reconcile/{item_id}", signal="retry_now")


@api.post(
    "/items/{item_id}/resolve",
    status_code=202,
    response_model=Accepted,
    responses=responses(404, 409),
    operation_id="resolveReconciliationItem",
)
async def resolve(
    item_id: ItemId, body: Resolution, stack: StackDep, caller: Annotated[Principal, require("loyalty:write")]
) -> Accepted:
    """Close the item by hand, recording who (the key) and why, optionally adjusting the customer's
    points through the ledger as it closes (once per item, whatever the retries)."""
    await service.resolve_manually(
        stack.client, item_id, caller.name, body.note.strip(), points_adjustment=body.points_adjustment
    )
    return Accepted(workflow_id=f"loyalty-reconcile/{item_id}", signal="resolve_manually")


@api.post("/audit", response_model=LoyaltyAuditResult, operation_id="runLoyaltyAudit")
async def audit(body: Audit, stack: StackDep, _: Annotated[Principal, require("loyalty:write")]) -> LoyaltyAuditResult:
    """Run the integrity audit now and report every balance that differs from its ledger."""
    day = body.audit_date or datetime.now(stack.settings.tz).date()
    return await service.run_audit(
        stack.client, day, business_timezone=stack.settings.business_timezone, task_queue=stack.settings.task_queue
    )
