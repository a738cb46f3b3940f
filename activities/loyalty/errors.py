"""The loyalty refusals: permanent (non-retryable) errors a retry could never fix.

They are `ApplicationError`s, so the same exception serves the checkout path (a plain call) and
Temporal (an activity failure whose type a workflow can branch on).
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError


class LoyaltyRefusal(ApplicationError):
    """A request the ledger refuses for good; `type` names why."""

    def __init__(self, error_type: str, message: str, **details: object) -> None:
        super().__init__(message, details or None, type=error_type, non_retryable=True)


class InsufficientPoints(LoyaltyRefusal):
    def __init__(self, customer_id: int, available: int, requested: int) -> None:
        super().__init__(
            "InsufficientPoints",
            f"customer {customer_id} has {available} points, {requested} were to be redeemed",
            customer_id=customer_id,
            available=available,
            requested=requested,
        )
        self.available = available
        self.requested = requested


class UnknownCustomer(LoyaltyRefusal):
    def __init__(self, customer_id: int) -> None:
        super().__init__("UnknownCustomer", f"no customer {customer_id}", customer_id=customer_id)


class OrderOfAnotherCustomer(LoyaltyRefusal):
    def __init__(self, order_id: str, customer_id: int, owner_id: int) -> None:
        super().__init__(
            "OrderOfAnotherCustomer",
            f"order {order_id} was applied to customer {owner_id}, not {customer_id}",
            order_id=order_id,
            customer_id=customer_id,
            owner_id=owner_id,
        )


class PointsOverflow(LoyaltyRefusal):
    def __init__(self, customer_id: int, balance: int) -> None:
        super().__init__(
            "PointsOverflow",
            f"customer {customer_id}'s balance would be {balance}, above the ledger's limit",
            customer_id=customer_id,
        )


class OrderAppliedDifferently(LoyaltyRefusal):
    """The order's points were applied with another redemption: a repeat must match the first."""

    def __init__(self, order_id: str, applied: int, requested: int) -> None:
        super().__init__(
            "OrderAppliedDifferently",
            f"order {order_id} was applied having redeemed {applied} points, not {requested}",
            order_id=order_id,
            applied=applied,
            requested=requested,
        )
        self.applied = applied
        self.requested = requested
