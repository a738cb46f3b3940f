"""The points ledger: applying an order's points, reversing them on a refund, a person's adjustment.

Every change holds the customer's row lock (`SELECT ... FOR UPDATE`) from the balance check to the
balance update, so concurrent redemptions can never overdraw a balance, and
`customers.loyalty_points` always equals the sum of the customer's ledger.

Applying an order, the checkout path's hot call, is one statement: `loyalty_apply_order`
(migration 0007) locks the row, reads the order's stored rows, refuses or writes, and updates the
balance inside the server, so a hot customer's lock is held for microseconds rather than across
client round trips. At checkout it runs in autocommit (the statement is its transaction); the
reconciliation queue runs it inside its own transaction, with the item it resolves.

Idempotency: under the customer's row lock the order's stored rows are read first; a repeat gets
the first call's result back, and a repeat with another redemption is refused
(`OrderAppliedDifferently`) with nothing written, so the ledger cannot gain a second `spent` row.
The unique key (reference_type, reference_id, type) still guards the insert (undone whole when
another customer's transaction wrote the order's rows first). An order writes
a `spent` row (only when it redeems points) then an `earned` row (always, even for 0 points: it is
the order's marker); a refund writes one `reversed` row; an adjustment one `adjusted` row per
(reference type, id). A refund that arrives before the points were applied leaves a 0-point
`reversed` row, so a late application applies nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity

from activities.database import autocommit, psycopg_connection
from activities.loyalty.errors import (
    InsufficientPoints,
    OrderAppliedDifferently,
    OrderOfAnotherCustomer,
    PointsOverflow,
    UnknownCustomer,
)
from schemas.loyalty import (
    ApplyOrderPoints,
    PointsAdjustment,
    PointsApplication,
    PointsReversal,
    ReverseOrderPoints,
)

log = structlog.get_logger(__name__)

BALANCE_LIMIT = 2**31 - 1  # the ledger's columns are 32-bit integers

LOCK_CUSTOMER = text("SELECT loyalty_points FROM customers WHERE id = :customer_id FOR UPDATE")

# The whole application, server-side: lock, the order's stored rows, refusals, rows, balance
# (migration 0007; it writes only when it returns 'applied'). psycopg's placeholders: it runs on
# the driver's connection (see apply_points); the casts pin the function's signature.
APPLY_ORDER = (
    "SELECT outcome, points_redeemed, points_earned, balance_before, balance_after, owner_id, lock_wait_ms"
    " FROM loyalty_apply_order(%s::bigint, %s::text, %s::integer, %s::numeric)"
)

ORDER_ROWS = text(
    "SELECT customer_id, type, points, balance_before, balance_after FROM loyalty_transactions"
    " WHERE reference_type = 'order' AND reference_id = :order_id ORDER BY id"
)

INSERT_REVERSAL = text(
    """
INSERT INTO loyalty_transactions
    (customer_id, type, points, balance_before, balance_after, reference_type, reference_id)
VALUES (:customer_id, 'reversed', :points, :before, :after, 'order', :order_id)
ON CONFLICT DO NOTHING
RETURNING id
"""
)

INSERT_ADJUSTMENT = text(
    """
INSERT INTO loyalty_transactions
    (customer_id, type, points, balance_before, balance_after, reference_type, reference_id)
VALUES (:customer_id, 'adjusted', :points, :before, :after, :reference_type, :reference_id)
ON CONFLICT DO NOTHING
RETURNING id
"""
)

ADJUSTMENT_OF = text(
    "SELECT customer_id, points, balance_before, balance_after FROM loyalty_transactions"
    " WHERE reference_type = :reference_type AND reference_id = :reference_id AND type = 'adjusted'"
)

SET_BALANCE = text("UPDATE customers SET loyalty_points = :balance WHERE id = :customer_id")


@dataclass(frozen=True)
class _Locked:
    balance: int
    wait_ms: float


async def _lock_customer(conn: AsyncConnection, customer_id: int) -> _Locked:
    started = time.perf_counter()
    row = (await conn.execute(LOCK_CUSTOMER, {"customer_id": customer_id})).first()
    waited = (time.perf_counter() - started) * 1000
    if row is None:
        raise UnknownCustomer(customer_id)
    return _Locked(balance=row.loyalty_points, wait_ms=round(waited, 3))


# --------------------------------------------------------------------------- applying an order


async def apply_points(conn: AsyncConnection, request: ApplyOrderPoints) -> PointsApplication:
    """Apply an order's points inside the caller's transaction (which it leaves holding the row lock).

    One statement: `loyalty_apply_order` takes the lock and does every step in the server, so a
    hot customer's row is held for the function's microseconds, not for client round trips. It
    goes straight to the driver's connection (the same connection and transaction): with the lock
    no longer the limit, hot customers queue on the client's CPU, and SQLAlchemy's execute and
    result cost as much of it as the rest of the call (docs/BENCHMARKS.md, loyalty).
    """
    driver = await psycopg_connection(conn)
    cursor = await driver.execute(
        APPLY_ORDER, (request.customer_id, request.order_id, request.points_redeemed, request.order_total), prepare=True
    )
    row = await cursor.fetchone()
    assert row is not None  # the function returns one row
    outcome, redeemed, earned, before, after, owner_id, lock_wait_ms = row
    if outcome in _APPLIED:
        return PointsApplication(
            customer_id=request.customer_id,
            order_id=request.order_id,
            outcome=outcome,
            points_redeemed=redeemed,
            points_earned=earned,
            balance_before=before,
            balance_after=after,
            lock_wait_ms=round(lock_wait_ms, 3),
        )
    if outcome == "insufficient":
        raise InsufficientPoints(request.customer_id, available=before, requested=request.points_redeemed)
    if outcome == "unknown_customer":
        raise UnknownCustomer(request.customer_id)
    if outcome == "another_customer":
        raise OrderOfAnotherCustomer(request.order_id, request.customer_id, owner_id)
    if outcome == "applied_differently":
        raise OrderAppliedDifferently(request.order_id, applied=redeemed, requested=request.points_redeemed)
    if outcome == "overflow":
        raise PointsOverflow(request.customer_id, after)
    raise RuntimeError(f"order {request.order_id}: loyalty_apply_order returned {outcome!r}")


_APPLIED = frozenset({"applied", "already_applied", "order_reversed"})


async def apply_points_at_checkout(
    engine: AsyncEngine, customer_id: int, order_id: str | int, points_redeemed: int, order_total: Decimal | str | int
) -> PointsApplication:
    """What the checkout path calls: apply an order's points in one transaction.

    Raises `InsufficientPoints` (available, requested), `UnknownCustomer`, `OrderOfAnotherCustomer`,
    `OrderAppliedDifferently` (a repeat with another redemption; nothing written) (all permanent),
    or a `pydantic.ValidationError` for bad input (negative points, ...).
    """
    request = ApplyOrderPoints.model_validate(
        {
            "customer_id": customer_id,
            "order_id": order_id,
            "points_redeemed": points_redeemed,
            "order_total": order_total,
        }
    )
    return await apply(engine, request)


async def apply(engine: AsyncEngine, request: ApplyOrderPoints) -> PointsApplication:
    """One statement in autocommit: it is its own transaction, so the row lock is released inside
    the server as the function returns, not one more round trip (`COMMIT`) later."""
    try:
        async with autocommit(engine).connect() as conn:
            result = await apply_points(conn, request)
    except InsufficientPoints as refused:
        log.info(
            "loyalty.points_refused",
            customer_id=request.customer_id,
            order_id=request.order_id,
            available=refused.available,
            requested=refused.requested,
        )
        raise
    log.info(
        "loyalty.points_applied",
        customer_id=request.customer_id,
        order_id=request.order_id,
        outcome=result.outcome,
        redeemed=result.points_redeemed,
        earned=result.points_earned,
        balance_after=result.balance_after,
        lock_wait_ms=result.lock_wait_ms,
    )
    return result


# --------------------------------------------------------------------------- reversing an order (refunds)


async def reverse_points(conn: AsyncConnection, request: ReverseOrderPoints) -> PointsReversal:
    """Undo an order's net effect inside the caller's transaction: one `reversed` row.

    Earned points the customer has already spent cannot be taken back (the balance never goes
    negative): the reversal takes what is there and reports the rest as `shortfall`.
    """
    locked = await _lock_customer(conn, request.customer_id)
    rows = (await conn.execute(ORDER_ROWS, {"order_id": request.order_id})).all()
    owners = {row.customer_id for row in rows}
    if owners and owners != {request.customer_id}:
        raise OrderOfAnotherCustomer(request.order_id, request.customer_id, owners.pop())
    existing = next((row for row in rows if row.type == "reversed"), None)
    if existing is not None:
        return _reversal(request, existing, already=True)

    wanted = -sum(row.points for row in rows if row.type in ("spent", "earned"))
    points = max(wanted, -locked.balance)
    before, after = locked.balance, locked.balance + points
    if after > BALANCE_LIMIT:
        raise PointsOverflow(request.customer_id, after)
    inserted = await conn.scalar(
        INSERT_REVERSAL,
        {
            "customer_id": request.customer_id,
            "points": points,
            "before": before,
            "after": after,
            "order_id": request.order_id,
        },
    )
    if inserted is None:  # cannot happen under the row lock unless written outside this module
        raise RuntimeError(f"order {request.order_id}: a reversal appeared while the customer was locked")
    await conn.execute(SET_BALANCE, {"balance": after, "customer_id": request.customer_id})
    return PointsReversal(
        customer_id=request.customer_id,
        order_id=request.order_id,
        already_reversed=False,
        points=points,
        shortfall=points - wanted,
        balance_before=before,
        balance_after=after,
    )


def _reversal(request: ReverseOrderPoints, row: Any, *, already: bool) -> PointsReversal:
    return PointsReversal(
        customer_id=request.customer_id,
        order_id=request.order_id,
        already_reversed=already,
        points=row.points,
        balance_before=row.balance_before,
        balance_after=row.balance_after,
    )


async def reverse_points_on_refund(engine: AsyncEngine, customer_id: int, order_id: str | int) -> PointsReversal:
    """What a refund handler calls: reverse an order's points once (a repeat returns the first reversal)."""
    request = ReverseOrderPoints(customer_id=customer_id, order_id=order_id)  # type: ignore[arg-type]
    return await reverse(engine, request)


async def reverse(engine: AsyncEngine, request: ReverseOrderPoints) -> PointsReversal:
    async with engine.begin() as conn:
        result = await reverse_points(conn, request)
    log.info(
        "loyalty.points_reversed",
        customer_id=request.customer_id,
        order_id=request.order_id,
        already_reversed=result.already_reversed,
        points=result.points,
        shortfall=result.shortfall,
    )
    return result


# --------------------------------------------------------------------------- a person's adjustment


async def adjust_points(
    conn: AsyncConnection, customer_id: int, points: int, *, reference_type: str, reference_id: str
) -> PointsAdjustment:
    """Add (or take) `points` inside the caller's transaction, under the customer's row lock: one
    `adjusted` row per reference, so a retried call writes nothing new. It never fails on the
    amount: a take larger than the balance takes what is there, an add stops at the ledger's limit."""
    locked = await _lock_customer(conn, customer_id)
    keys = {"reference_type": reference_type, "reference_id": reference_id}
    existing = (await conn.execute(ADJUSTMENT_OF, keys)).first()
    if existing is not None:
        return PointsAdjustment(
            customer_id=existing.customer_id,
            **keys,
            already_adjusted=True,
            requested=points,
            points=existing.points,
            balance_before=existing.balance_before,
            balance_after=existing.balance_after,
        )
    written = min(max(points, -locked.balance), BALANCE_LIMIT - locked.balance)
    before, after = locked.balance, locked.balance + written
    inserted = await conn.scalar(
        INSERT_ADJUSTMENT, {"customer_id": customer_id, "points": written, "before": before, "after": after, **keys}
    )
    if inserted is None:  # cannot happen under the row lock unless written outside this module
        raise RuntimeError(f"{reference_type} {reference_id}: an adjustment appeared while the customer was locked")
    await conn.execute(SET_BALANCE, {"balance": after, "customer_id": customer_id})
    log.info(
        "loyalty.points_adjusted",
        customer_id=customer_id,
        reference_type=reference_type,
        reference_id=reference_id,
        requested=points,
        points=written,
        balance_after=after,
    )
    return PointsAdjustment(
        customer_id=customer_id,
        **keys,
        already_adjusted=False,
        requested=points,
        points=written,
        balance_before=before,
        balance_after=after,
    )


class LoyaltyLedgerActivities:
    """The ledger as activities, for workflows (refund handling, order flows) that change points."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @activity.defn(name="apply_order_points")
    async def apply_order_points(self, request: ApplyOrderPoints) -> PointsApplication:
        return await apply(self._engine, request)

    @activity.defn(name="reverse_order_points")
    async def reverse_order_points(self, request: ReverseOrderPoints) -> PointsReversal:
        return await reverse(self._engine, request)
