"""Orders: a checkout's 24-hour clock (started, completed, failed, shown), and placing an order under
the credit rules (validation alone, or placement with a credit order's debit)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Literal

from fastapi import Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from activities.messaging.outbox import QuietHours
from schemas import ids
from schemas.money import Amount, AmountIn
from schemas.orders import OrderFailureResult, PendingOrderInput, PendingOrderStatus
from schemas.text import Reason
from services import orders as service
from workers.api.auth import Principal, require
from workers.api.problems import Problem, responses
from workers.api.routes import Accepted, RequestBody, StackDep, router

api = router("/v1/orders", "orders")
OrderId = Annotated[int, Path(ge=1, le=2**63 - 1, description="orders.id")]


class CheckoutStarted(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"retailer_id": 42, "follow_up_after_seconds": 3600}]})

    retailer_id: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="shown in the UI at once; None: the order's"
    )
    follow_up_after_seconds: int | None = Field(
        default=None, ge=60, le=86_400, description="default ORDER_FOLLOWUP_AFTER"
    )


class OrderFailed(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "the courier could not deliver"}]})

    reason: Reason = Field(description="stored on the order")


class ValidatePlacement(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"retailer_id": 42, "amount": "250.00", "payment_mode": "CREDIT"}]}
    )

    retailer_id: int = Field(ge=1, le=2**63 - 1)
    amount: AmountIn = Field(gt=0, description="the order's total: positive")
    payment_mode: Literal["CREDIT", "COD"]


class Placement(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"retailer_id": 42, "amount": "250.00", "payment_mode": "CREDIT"}]}
    )

    retailer_id: int = Field(ge=1, le=2**63 - 1)
    amount: AmountIn = Field(gt=0, description="the order's total: positive")
    payment_mode: Literal["CREDIT", "COD"]


class Placed(BaseModel):
    order_id: int
    retailer_id: int
    payment_mode: Literal["CREDIT", "COD"]
    amount: Amount
    debit_id: int | None = Field(description="the order's DEBIT; None: cash on delivery")
    due_date: date | None
    available_credit: Amount
    duplicate: bool = Field(description="True: placed before; nothing changed")
    cleared_from_balance: Amount = Field(description="credit balance the debit used at once")
    currency: str = Field(description="ISO 4217: the credit account's, every amount's")


class FailureReported(BaseModel):
    workflow_id: str
    signal: str | None = Field(description="`failed`: the running clock fails the order; None: the clock had ended")
    result: OrderFailureResult | None = Field(
        description="once the clock had ended: order-failure/{order_id} reversed the debit (once) and told the retailer"
    )


class PlacementAnswer(BaseModel):
    allowed: bool
    reason: str | None = Field(default=None, description="why not, for the retailer's screen")


@api.post(
    "/{order_id}/checkout-started",
    response_model=PendingOrderStatus,
    responses=responses(404, 409),
    operation_id="startCheckout",
)
async def checkout_started(
    order_id: OrderId,
    stack: StackDep,
    _: Annotated[Principal, require("orders:write")],
    body: Annotated[CheckoutStarted | None, Body()] = None,
) -> PendingOrderStatus:
    """Start the order's clock (expiry after ORDER_TTL, 24 h by default; one follow-up): idempotent by order id.

    Answered from the database (the order's row holds the clock) once the workflow is started,
    without waiting for its first task."""
    body = body or CheckoutStarted()
    order = PendingOrderInput(
        order_id=order_id,
        retailer_id=body.retailer_id,
        messaging_task_queue=stack.settings.messaging_task_queue,
        follow_up_after=timedelta(seconds=body.follow_up_after_seconds)
        if body.follow_up_after_seconds
        else stack.settings.order_followup_after,
        ttl=stack.settings.order_ttl,
    )
    return await service.start_pending_order(
        stack.client,
        stack.engine,
        order,
        task_queue=stack.settings.task_queue,
        quiet_hours=QuietHours(stack.settings.quiet_hours_start, stack.settings.quiet_hours_end),
    )


@api.post(
    "/{order_id}/completed",
    status_code=202,
    response_model=Accepted,
    responses=responses(404, 409),
    operation_id="completeCheckout",
)
async def completed(
    order_id: OrderId, stack: StackDep, caller: Annotated[Principal, require("orders:write")]
) -> Accepted:
    """The checkout went through: COMPLETED, or RECOVERED if the follow-up went out first."""
    await service.complete_order(stack.client, order_id, actor_id=caller.name)
    return Accepted(workflow_id=ids.pending_order(order_id), signal="completed")


@api.post(
    "/{order_id}/failed",
    status_code=202,
    response_model=FailureReported,
    responses={
        200: {"model": FailureReported, "description": "the clock had ended: the failure is done"},
        **responses(404, 409),
    },
    operation_id="failOrder",
)
async def failed(
    order_id: OrderId,
    body: OrderFailed,
    stack: StackDep,
    response: Response,
    _: Annotated[Principal, require("orders:write")],
) -> FailureReported:
    """The order failed: its credit debit is reversed (once) and the retailer told.

    202 while its clock runs (the clock does it); 200 with the outcome once the clock has ended
    (a delivery that failed after checkout completed), as soon as it is written: the retailer's
    message follows from `workflow_id` when quiet hours or the brake let it; a repeat reverses
    nothing twice (`changed: false`)."""
    done = await service.fail_order(
        stack.client,
        order_id,
        body.reason,
        task_queue=stack.settings.task_queue,
        messaging_task_queue=stack.settings.messaging_task_queue,
    )
    if done is None:
        return FailureReported(workflow_id=ids.pending_order(order_id), signal="failed", result=None)
    response.status_code = 200
    return FailureReported(workflow_id=f"order-failure/{order_id}", signal=None, result=done)


@api.get("/{order_id}", response_model=PendingOrderStatus, responses=responses(404), operation_id="getOrder")
async def show(
    order_id: OrderId, stack: StackDep, _: Annotated[Principal, require("orders:read")]
) -> PendingOrderStatus:
    """The order's clock: state, follow-up, expiry."""
    return await service.order_status(stack.client, order_id)


@api.post("/validate", response_model=PlacementAnswer, responses=responses(404), operation_id="validatePlacement")
async def validate(
    body: ValidatePlacement, stack: StackDep, _: Annotated[Principal, require("orders:read")]
) -> PlacementAnswer:
    """May this order be placed this way? COD always (unless blocked); CREDIT only within limits."""
    from activities.credit.guardrails import PlacementRefused, credit_position, validate_order_placement

    position = await credit_position(stack.engine, body.retailer_id)
    if position is None:
        raise Problem(404, f"no retailer {body.retailer_id} with a credit account", code="unknown_retailer")
    try:
        validate_order_placement(position, body.amount, body.payment_mode)
    except PlacementRefused as refused:
        return PlacementAnswer(allowed=False, reason=str(refused))
    return PlacementAnswer(allowed=True)


@api.post("/{order_id}/placement", response_model=Placed, responses=responses(404, 409), operation_id="placeOrder")
async def place(
    order_id: OrderId, body: Placement, stack: StackDep, caller: Annotated[Principal, require("orders:write")]
) -> Placed:
    """Place the order under the credit rules; on CREDIT its debit is written (due after the account's
    terms) and the credit taken, in one transaction, once per order. Refused (409): why, for the retailer."""
    from services.credit import place_order

    placed = await place_order(
        stack.engine,
        body.retailer_id,
        order_id,
        body.amount,
        body.payment_mode,
        today=datetime.now(stack.settings.tz).date(),
        actor=caller.name,
    )
    return Placed.model_validate(placed.as_dict())
