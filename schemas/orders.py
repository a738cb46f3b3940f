"""Payloads of order recovery: a pending checkout's clock, its signals, and the safety-net sweep.

Only ids and instants travel through Temporal: the retailer's phone, name and time zone are
read inside activities, so the UI and the histories never show them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from schemas.money import Amount
from schemas.text import Clean

OrderState = Literal["PENDING", "COMPLETED", "RECOVERED", "EXPIRED", "FAILED"]
"""The states of `pending_orders.status` (and the `CaseStatus` search attribute)."""

REFUSALS = ["UnknownOrder", "OrderNotPending"]
"""Why registering a clock is refused for good (non-retryable): the `register_pending_order` activity's error type."""

FOLLOW_UP_AFTER = timedelta(hours=2)
ORDER_TTL = timedelta(hours=24)


class PendingOrderInput(BaseModel):
    """Start input of `pending-order/{order_id}`: what the shop's backend knows at checkout start.

    `created_at` None means "now" (`start_pending_order`) or "when the workflow started" (any
    other starter); `retailer_id` None means "the order's" (read from the database; the
    `RetailerId` search attribute is then set from it). The delays are inputs (not constants)
    so operators can tune ORDER_FOLLOWUP_AFTER and tests can run a whole clock in seconds;
    an existing `pending_orders` row keeps its own `created_at` and `expires_at`.
    """

    order_id: int = Field(gt=0)
    retailer_id: int | None = Field(
        default=None, gt=0, description="for the UI from the first moment; None: the order's"
    )
    created_at: datetime | None = None
    follow_up_after: timedelta = Field(default=FOLLOW_UP_AFTER, gt=timedelta(0))
    ttl: timedelta = Field(default=ORDER_TTL, gt=timedelta(0))
    messaging_task_queue: str = Field(default="messaging", min_length=1)
    registered: PendingOrderRecord | None = Field(
        default=None,
        description="the row as the starter registered it (`start_pending_order`): the clock told to its caller,"
        " kept as told; None: the workflow registers the row itself",
    )


class RegisterPendingOrder(BaseModel):
    order_id: int
    created_at: datetime
    follow_up_after: timedelta
    ttl: timedelta


class PendingOrderRecord(BaseModel):
    """The `pending_orders` row as the workflow starts from it, and when its follow-up is due."""

    order_id: int
    retailer_id: int
    state: OrderState
    created_at: datetime
    expires_at: datetime
    follow_up_at: datetime = Field(description="created_at + follow-up delay, moved out of the recipient's quiet hours")
    follow_up_sent_at: datetime | None = None


class OrderCompleted(BaseModel):
    """Signal `completed`: the checkout went through (every field optional)."""

    actor_id: Clean | None = Field(default=None, max_length=64)


class OrderFailed(BaseModel):
    """Signal `failed`: the order could not be completed; `reason` is stored on the order."""

    reason: Clean = Field(min_length=1, max_length=500)


class FollowUpSent(BaseModel):
    order_id: int
    sent_at: datetime


class SettleOrder(BaseModel):
    """Close a pending row if (and only if) it is still PENDING."""

    order_id: int
    state: Literal["COMPLETED", "RECOVERED", "EXPIRED"]


class OrderFailure(BaseModel):
    order_id: int
    reason: str
    performed_by: str = "system"


class LateOrderFailure(BaseModel):
    """Start input of `order-failure/{order_id}`: a failure reported after the order's clock ended."""

    order_id: int = Field(gt=0)
    reason: Clean = Field(min_length=1, max_length=500)
    messaging_task_queue: str = "messaging"


class OrderFailureResult(BaseModel):
    order_id: int
    retailer_id: int
    changed: bool = Field(description="False: a repeat call, nothing written")
    reversed_amount: Amount | None = Field(
        default=None, description="what the debit still owed, released to available credit; None: not paid on credit"
    )
    returned_to_balance: Amount | None = Field(
        default=None, description="what had been paid on the debit, back on the credit balance; None: not on credit"
    )
    currency: str | None = Field(default=None, description="ISO 4217: the credit account's; None: not on credit")


class PendingOrderStatus(BaseModel):
    """The `status` query and the answer to a start."""

    order_id: int
    state: OrderState
    follow_up_at: datetime | None = None
    follow_up_sent_at: datetime | None = None
    expires_at: datetime | None = None

    @classmethod
    def of(
        cls, order_id: int, state: OrderState, record: PendingOrderRecord | None, follow_up_sent_at: datetime | None
    ) -> PendingOrderStatus:
        """What the shop is told of a clock: the starter's answer and the workflow's `status` query."""
        return cls(
            order_id=order_id,
            state=state,
            follow_up_sent_at=follow_up_sent_at,
            follow_up_at=record.follow_up_at if record else None,
            expires_at=record.expires_at if record else None,
        )


class PendingOrderResult(BaseModel):
    order_id: int
    state: OrderState
    follow_up_sent_at: datetime | None = None
    settled_at: datetime


class OrderSweepRequest(BaseModel):
    """Start input of `order-expiry-sweep/{timestamp}`."""

    page_size: int = Field(default=500, ge=1, le=5_000)
    max_concurrent_checks: int = Field(default=50, ge=1, le=500, description="describe calls in flight per page")
    follow_up_after: timedelta = Field(default=FOLLOW_UP_AFTER, gt=timedelta(0))
    messaging_task_queue: str = "messaging"
    # Carried across continue-as-new:
    progress: OrderSweepProgress | None = None


class OrderSweepProgress(BaseModel):
    as_of: datetime
    phase: Literal["expire", "start", "done"] = "expire"
    after_order_id: int = 0
    expired: int = 0
    started: int = 0
    left_alone: int = 0


class OrderSweepPage(BaseModel):
    """One page of the sweep: PENDING rows after a cursor, either stale (expire) or live (start)."""

    as_of: datetime
    after_order_id: int
    page_size: int
    max_concurrent_checks: int
    follow_up_after: timedelta = FOLLOW_UP_AFTER
    messaging_task_queue: str = "messaging"


class OrderSweepPageResult(BaseModel):
    after_order_id: int
    rows: int = Field(description="rows read; fewer than the page size means the phase is done")
    changed: int = Field(description="rows expired, or workflows started")
    left_alone: int = Field(description="rows whose workflow is running")


OrderSweepRequest.model_rebuild()


PendingOrderInput.model_rebuild()  # `registered` names a model defined after it
