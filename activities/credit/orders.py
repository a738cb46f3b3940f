"""Orders on credit: the seed's placement rules, then the order's DEBIT and the credit it takes.

One transaction locks the retailer, checks `validate_order_placement` against the position it
reads under that lock, and for a CREDIT order writes the DEBIT (due `payment_terms_days` after
the business day), recomputes `available_credit`, spends any credit balance on it and writes the
audit row; the writes are the credit ledger's (`activities.credit.ledger`). The DEBIT is unique
per (order, type): a retried call finds it and answers the same, without checking the rules again
(the first call already took the credit). COD orders write no debit and are allowed while paused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.credit import ledger
from activities.credit.guardrails import CreditPosition, PlacementRefused, validate_order_placement
from schemas.money import format_money

LOCK_POSITION = text(
    """
SELECT r.credit_status, ca.available_credit, ca.max_order_value, ca.payment_terms_days, ca.currency, r.locale
FROM retailers r JOIN credit_accounts ca ON ca.retailer_id = r.id
WHERE r.id = :r
FOR UPDATE OF r, ca
"""
)

ORDER_OF = text("SELECT id, retailer_id, payment_mode, total_amount, status FROM orders WHERE id = :o FOR UPDATE")

DEBIT_OF = text("SELECT id, amount, due_date FROM credit_transactions WHERE order_id = :o AND type = 'DEBIT'")

INSERT_ORDER = text(
    "INSERT INTO orders (id, retailer_id, status, payment_mode, total_amount)"
    " VALUES (:o, :r, 'CONFIRMED', :mode, :amount)"
)


@dataclass
class OrderPlaced:
    order_id: int
    retailer_id: int
    payment_mode: str
    amount: Decimal
    debit_id: int | None
    due_date: date | None
    available_credit: Decimal
    duplicate: bool = False
    cleared_from_balance: Decimal = Decimal("0")
    currency: str = "USD"
    """ISO 4217: the credit account's, every amount's."""
    locale: str | None = None
    """The retailer's (BCP 47): how a text for them writes the amounts (`schemas.money.format_money`)."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def money(self, amount: Decimal) -> str:
        return format_money(amount, self.currency, self.locale)


async def place_order(
    engine: AsyncEngine,
    retailer_id: int,
    order_id: int,
    amount: Decimal,
    payment_mode: str,
    *,
    today: date,
    actor: str = "system",
) -> OrderPlaced:
    """Place `order_id` for `retailer_id`; raises `PlacementRefused` with the retailer-facing reason.

    The order row is created (CONFIRMED) when it does not exist yet; an existing one must be the
    same retailer's, for the same amount and mode."""
    async with engine.begin() as conn:
        position = (await conn.execute(LOCK_POSITION, {"r": retailer_id})).first()
        if position is None:
            raise PlacementRefused(f"no retailer {retailer_id} with a credit account", code="unknown_retailer")
        order = (await conn.execute(ORDER_OF, {"o": order_id})).first()
        if order is not None:
            if order.retailer_id != retailer_id:
                raise PlacementRefused(
                    f"order {order_id} belongs to another retailer", code="order_of_another_retailer"
                )
            if order.payment_mode != payment_mode or order.total_amount != amount:

                def money(value: Decimal) -> str:
                    return format_money(value, position.currency, position.locale)

                raise PlacementRefused(
                    f"order {order_id} is {order.payment_mode} for {money(order.total_amount)},"
                    f" not {payment_mode} for {money(amount)}",
                    code="order_mismatch",
                )
            if order.status in ("FAILED", "CANCELLED"):
                raise PlacementRefused(f"order {order_id} is {order.status}", code="order_not_open")
            existing = (await conn.execute(DEBIT_OF, {"o": order_id})).first()
            if existing is not None or payment_mode == "COD":  # placed before: a retry
                return OrderPlaced(
                    order_id,
                    retailer_id,
                    payment_mode,
                    amount,
                    existing.id if existing else None,
                    existing.due_date if existing else None,
                    position.available_credit,
                    duplicate=True,
                    currency=position.currency,
                    locale=position.locale,
                )
        validate_order_placement(
            CreditPosition(
                position.credit_status,
                position.available_credit,
                position.max_order_value,
                currency=position.currency,
                locale=position.locale,
            ),
            amount,
            payment_mode,
        )
        if order is None:
            await conn.execute(INSERT_ORDER, {"o": order_id, "r": retailer_id, "mode": payment_mode, "amount": amount})
        debit_id, due, cleared = None, None, Decimal("0")
        if payment_mode == "CREDIT":
            due = today + timedelta(days=position.payment_terms_days)
            debit_id, allocations = await ledger.debit_order(conn, retailer_id, order_id, amount, due, actor=actor)
            cleared = sum((a.allocated for a in allocations), Decimal("0"))
        available = await ledger.available_credit(conn, retailer_id)
        await ledger.audit(
            conn,
            retailer_id,
            "credit_order_placed",
            actor=actor,
            reference=f"order:{order_id}",
            old={"available_credit": str(position.available_credit)},
            new={
                "order_id": order_id,
                "payment_mode": payment_mode,
                "amount": str(amount),
                "debit_id": debit_id,
                "due_date": str(due) if due else None,
                "available_credit": str(available),
                "cleared_from_balance": str(cleared),
            },
        )
    return OrderPlaced(
        order_id,
        retailer_id,
        payment_mode,
        amount,
        debit_id,
        due,
        available,
        cleared_from_balance=cleared,
        currency=position.currency,
        locale=position.locale,
    )
