"""Payloads of the loyalty family: points applications, the reconciliation queue, the audit.

Only ids, points, amounts and states travel through Temporal: customers' names and phone
numbers stay in the database. An order is named by its reference (`orders.id` of the shop
that sold it, or any business key): the ledger's `reference_id`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.money import Amount
from schemas.text import Clean

QueueStatus = Literal["PENDING", "RESOLVED", "NEEDS_REVIEW"]
"""`loyalty_reconciliation_queue.status`, and the `CaseStatus` search attribute of its workflow."""

REFUSALS = [
    "InsufficientPoints",
    "UnknownCustomer",
    "OrderOfAnotherCustomer",
    "PointsOverflow",
    "OrderAppliedDifferently",
]
"""The ledger's refusal types (`activities.loyalty.errors`): non-retryable, so a workflow sends an
item that fails with one of them to review."""

MAX_POINTS = 1_000_000_000  # the ledger's columns are 32-bit integers
_ORDER_REF = Field(
    min_length=1, max_length=100, pattern=r"^[A-Za-z0-9:_\-./]+$", description="the order's business reference"
)
_ACTOR = Field(min_length=1, max_length=64, pattern=r"^\S(.*\S)?$", description="who acted (an admin id)")


class ApplyOrderPoints(BaseModel):
    """Apply one order's points: redeem `points_redeemed`, earn on `order_total` (rate read server-side)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)  # an order id may be given as a number

    customer_id: int = Field(gt=0)
    order_id: str = _ORDER_REF
    points_redeemed: int = Field(default=0, ge=0, le=MAX_POINTS)
    order_total: Decimal = Field(ge=0, le=Decimal("1e10"), allow_inf_nan=False)


class PointsApplication(BaseModel):
    """What an order did to a customer's points (for a repeat call: what the first call did)."""

    customer_id: int
    order_id: str
    outcome: Literal["applied", "already_applied", "order_reversed"] = Field(
        description="already_applied: a repeat, nothing written;"
        " order_reversed: refunded before it was applied, nothing written"
    )
    points_redeemed: int
    points_earned: int
    balance_before: int
    balance_after: int
    lock_wait_ms: float = Field(default=0.0, description="how long this call waited for the customer's row lock")


class ReverseOrderPoints(BaseModel):
    """Undo an order's points (a refund): one `reversed` ledger row, at most once per order."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    customer_id: int = Field(gt=0)
    order_id: str = _ORDER_REF


class PointsReversal(BaseModel):
    customer_id: int
    order_id: str
    already_reversed: bool = Field(description="a repeat: nothing written, the first reversal is returned")
    points: int = Field(description="the signed change of the balance (earned taken back, redeemed given back)")
    shortfall: int = Field(
        default=0,
        description="earned points the customer had already spent: not taken back (the balance never goes negative)",
    )
    balance_before: int
    balance_after: int


# --------------------------------------------------------------------------- the reconciliation queue


class FailedPointsApplication(BaseModel):
    """What the checkout path hands over when its inline application failed (`enqueue_failed_points`)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    customer_id: int = Field(gt=0)
    order_id: str = _ORDER_REF
    points_redeemed: int = Field(default=0, ge=0, le=MAX_POINTS)
    order_total: Decimal = Field(ge=0, le=Decimal("1e10"), allow_inf_nan=False)
    payment_intent_id: str | None = Field(
        default=None,
        pattern=r"^pi_[A-Za-z0-9_]+$",
        description="the order's Stripe PaymentIntent; None: not paid through Stripe",
    )
    error: Clean | None = Field(default=None, max_length=500, description="why the inline application failed")


class QueuedItem(BaseModel):
    item_id: int
    workflow_id: str
    status: QueueStatus
    created: bool = Field(description="False: the order was queued already (nothing new written)")
    started: bool = Field(description="a reconciliation workflow was started by this call")


class ReconcileRequest(BaseModel):
    """Start input of `loyalty-reconcile/{item_id}`."""

    item_id: int = Field(gt=0)


class QueueItem(BaseModel):
    """A queue row as a workflow sees it (ids, points and amounts only).

    Not `last_error`: the checkout path's error text could carry anything, and histories are shown
    in the UI; people read it from the row (or the workflow's `status` query, for its own reasons).
    """

    item_id: int
    customer_id: int
    order_id: str
    payment_intent_id: str | None
    points_redeemed: int
    order_total: Amount
    status: QueueStatus
    resolution: str | None = None
    attempts: int = 0
    resolved_by: str | None = None


class ApplyQueuedPoints(BaseModel):
    item_id: int


class QueueApplyResult(BaseModel):
    item: QueueItem = Field(description="the row after the attempt (RESOLVED when applied)")
    application: PointsApplication | None = Field(default=None, description="None: the item was no longer PENDING")


class MarkNeedsReview(BaseModel):
    item_id: int
    reason: str = Field(max_length=500)


class ResolveItem(BaseModel):
    item_id: int
    resolution: Literal["applied", "refunded", "manual"]
    resolved_by: str = "system"
    note: str | None = Field(default=None, max_length=500)
    points_adjustment: int | None = Field(default=None, description="a manual resolution's points, written with it")


class ReopenItem(BaseModel):
    item_id: int
    actor_id: str


class RetryNow(BaseModel):
    """Signal `retry_now`: a person asks for another attempt now (a fresh 24-hour window)."""

    model_config = ConfigDict(extra="forbid")

    actor_id: Clean = _ACTOR


class Resolution(BaseModel):
    """How a person closes an item: why, and optionally a points correction through the ledger
    (the HTTP body; the signal below adds who)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "customer called: points applied by hand", "points_adjustment": 120}]},
    )

    note: Clean = Field(min_length=1, max_length=500, pattern=r"\S", description="why, stored with the resolution")
    points_adjustment: int | None = Field(
        default=None,
        ge=-MAX_POINTS,
        le=MAX_POINTS,
        description="points to add (negative: take) through the ledger as the item closes; once per item. "
        "A take is capped at the customer's balance.",
    )

    @field_validator("points_adjustment")
    @classmethod
    def _non_zero(cls, points: int | None) -> int | None:
        if points == 0:
            raise ValueError("must be non-zero (leave it out for no adjustment)")
        return points


class ResolveManually(Resolution):
    """Signal `resolve_manually`: a person closes the item (points handled by hand, or not owed)."""

    actor_id: Clean = _ACTOR


class PointsAdjustment(BaseModel):
    """An `adjusted` ledger row: a person's correction, once per reference."""

    customer_id: int
    reference_type: str
    reference_id: str
    already_adjusted: bool = Field(description="a repeat: nothing written, the first adjustment is returned")
    requested: int
    points: int = Field(description="what was written: a balance never goes below 0 nor past the ledger's limit")
    balance_before: int
    balance_after: int


class ReconcileStatus(BaseModel):
    """The `status` query of `loyalty-reconcile/{item_id}`."""

    item_id: int
    customer_id: int | None = None
    status: QueueStatus | None = None
    phase: str = Field(description="what the workflow is doing: checking payment, applying, waiting for review, done")
    resolution: str | None = None
    reason: str | None = Field(default=None, description="why it needs review")


class ReconcileResult(BaseModel):
    item_id: int
    customer_id: int
    status: QueueStatus
    resolution: str | None
    resolved_by: str | None
    attempts: int
    points_earned: int | None = None
    points_redeemed: int | None = None


# --------------------------------------------------------------------------- the sweep


class LoyaltySweepRequest(BaseModel):
    """Start input of the `loyalty-reconcile-sweep` schedule's workflow."""

    page_size: int = Field(default=500, ge=1, le=5_000)
    max_concurrent_starts: int = Field(default=20, ge=1, le=200)


class LoyaltySweepPage(BaseModel):
    after_item_id: int
    page_size: int
    max_concurrent_starts: int


class LoyaltySweepPageResult(BaseModel):
    after_item_id: int
    rows: int
    started: int
    already_running: int


class LoyaltySweepResult(BaseModel):
    pending_seen: int
    started: int
    already_running: int


# --------------------------------------------------------------------------- the integrity audit


class LoyaltyAuditRequest(BaseModel):
    """Start input of `loyalty-audit/{date}` (and of the nightly schedule)."""

    audit_date: date | None = Field(default=None, description="None: today in the business time zone")
    business_timezone: str = "UTC"
    max_listed: int = Field(default=1_000, ge=1, le=100_000, description="discrepancies listed in the result")


class Discrepancy(BaseModel):
    customer_id: int
    balance: int
    ledger_sum: int
    difference: int = Field(description="balance - ledger_sum")


class LoyaltyAuditResult(BaseModel):
    audit_date: date
    checked_at: datetime
    customers_checked: int
    discrepancy_count: int
    discrepancies: list[Discrepancy] = Field(description="largest differences first, at most max_listed")
