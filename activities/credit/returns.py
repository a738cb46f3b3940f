"""Money a Stripe payment gives back: refunds and disputes, booked on the one credit ledger.

The webhook's handlers (`services/stripe_money.py`) re-read the charge or dispute at Stripe and
call these with Stripe's current word; each is one transaction under the retailer's row lock
(`ledger.refund_payment`, `ledger.flag_dispute`, `ledger.close_dispute`), so two deliveries of one
event, or two events of one charge, never book twice or interleave.

A payment is found by its PaymentIntent (`credit_transactions.stripe_payment_intent_id`, stored
when the payment was recorded): `UnknownPayment` when jobctl recorded none for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.credit import ledger
from activities.credit.ledger import PaymentReturned

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Payment:
    credit_id: int
    retailer_id: int


async def find_payment(engine: AsyncEngine, intent_id: str) -> Payment | None:
    """The payment jobctl recorded for this PaymentIntent, or None."""
    async with engine.connect() as conn:
        found = await ledger.payment_of_intent(conn, intent_id)
    return None if found is None else Payment(*found)


RETAILER_CUSTOMER = text("SELECT stripe_customer_id FROM retailers WHERE id = :r")


async def retailer_customer(engine: AsyncEngine, retailer_id: int) -> tuple[bool, str | None]:
    """(the retailer exists, its stored Stripe customer): read only, nothing is created at Stripe."""
    async with engine.connect() as conn:
        row = (await conn.execute(RETAILER_CUSTOMER, {"r": retailer_id})).first()
    return (False, None) if row is None else (True, row.stripe_customer_id)


async def book_refund(
    engine: AsyncEngine,
    payment: Payment,
    *,
    kind: str,
    stripe_id: str,
    total: Decimal,
    today: date,
    actor: str = "stripe",
) -> PaymentReturned:
    """What Stripe says has left the payment in all (`total`), booked once: see `ledger.refund_payment`."""
    async with engine.begin() as conn:
        result = await ledger.refund_payment(
            conn,
            payment.credit_id,
            payment.retailer_id,
            kind=kind,
            stripe_id=stripe_id,
            total=total,
            actor=actor,
            today=today,
        )
    log.info(
        "credit.payment_returned",
        retailer_id=payment.retailer_id,
        credit_transaction_id=payment.credit_id,
        kind=kind,
        stripe_id=stripe_id,
        booked=str(result.amount),
        from_balance=str(result.from_balance),
        reopened=len(result.reopened or []),
        owed_again=str(result.owed_again),
        duplicate=result.duplicate,
    )
    return result


async def flag_dispute(engine: AsyncEngine, payment: Payment, dispute_id: str, *, pause: bool) -> tuple[bool, bool]:
    """(flagged now, paused now): see `ledger.flag_dispute`."""
    async with engine.begin() as conn:
        flagged, paused = await ledger.flag_dispute(
            conn, payment.credit_id, payment.retailer_id, dispute_id, actor="stripe", pause=pause
        )
    log.info(
        "credit.payment_disputed",
        retailer_id=payment.retailer_id,
        credit_transaction_id=payment.credit_id,
        dispute_id=dispute_id,
        flagged=flagged,
        paused=paused,
    )
    return flagged, paused


async def close_dispute(engine: AsyncEngine, payment: Payment, dispute_id: str, status: str) -> bool:
    """Clear the payment's dispute flag (True: it was set for this dispute): see `ledger.close_dispute`."""
    async with engine.begin() as conn:
        cleared = await ledger.close_dispute(
            conn, payment.credit_id, payment.retailer_id, dispute_id, status, actor="stripe"
        )
    log.info(
        "credit.dispute_closed",
        retailer_id=payment.retailer_id,
        credit_transaction_id=payment.credit_id,
        dispute_id=dispute_id,
        status=status,
        cleared=cleared,
    )
    return cleared
