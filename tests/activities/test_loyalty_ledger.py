"""The points ledger against a real PostgreSQL: row locks under concurrency, idempotency by unique
ledger keys, server-side earning, reversals, and bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pydantic
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.database import create_engine
from activities.loyalty.errors import InsufficientPoints, OrderOfAnotherCustomer, UnknownCustomer
from activities.loyalty.ledger import apply_points_at_checkout, reverse_points_on_refund
from schemas.loyalty import PointsApplication
from tests.loyalty_factories import balance_and_ledger, new_customer, order_ref, order_rows


@pytest_asyncio.fixture(loop_scope="session")
async def wide_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Enough connections for every concurrent call to be in the database at once (real lock contention)."""
    eng = create_engine(database_url, pool_size=60)
    yield eng
    await eng.dispose()


async def test_fifty_concurrent_redemptions_of_100_against_1000_exactly_ten_succeed(wide_engine: AsyncEngine) -> None:
    cid = await new_customer(wide_engine, 1000)
    orders = [order_ref() for _ in range(50)]
    outcomes = await asyncio.gather(
        *(apply_points_at_checkout(wide_engine, cid, order, 100, Decimal("0")) for order in orders),
        return_exceptions=True,
    )
    applied = [o for o in outcomes if isinstance(o, PointsApplication)]
    refused = [o for o in outcomes if isinstance(o, InsufficientPoints)]
    assert (len(applied), len(refused)) == (10, 40), [type(o).__name__ for o in outcomes]
    assert all(o.outcome == "applied" and o.points_redeemed == 100 for o in applied)
    # Each success saw the balance the previous one left: a chain from 1000 down to 0, no overlap.
    assert sorted(o.balance_before for o in applied) == list(range(100, 1001, 100))
    assert all(
        (r.available, r.requested, r.non_retryable, r.type) == (0, 100, True, "InsufficientPoints") for r in refused
    )
    assert await balance_and_ledger(wide_engine, cid) == (0, 0)
    async with wide_engine.connect() as conn:
        spent = await conn.scalar(
            text("SELECT count(*) FROM loyalty_transactions WHERE customer_id = :c AND type = 'spent'"), {"c": cid}
        )
    assert spent == 10


async def test_the_same_order_applied_five_times_concurrently_writes_one_set_of_rows(wide_engine: AsyncEngine) -> None:
    cid = await new_customer(wide_engine, 500)
    order = order_ref()
    outcomes = await asyncio.gather(
        *(apply_points_at_checkout(wide_engine, cid, order, 200, Decimal("49.99")) for _ in range(5))
    )
    assert sorted(o.outcome for o in outcomes) == ["already_applied"] * 4 + ["applied"]
    first = next(o for o in outcomes if o.outcome == "applied")
    for repeat in outcomes:
        assert repeat.model_dump(exclude={"outcome", "lock_wait_ms"}) == first.model_dump(
            exclude={"outcome", "lock_wait_ms"}
        )
    assert (first.points_redeemed, first.points_earned, first.balance_before, first.balance_after) == (
        200,
        49,
        500,
        349,
    )
    assert await order_rows(wide_engine, order) == [("spent", -200, 500, 300), ("earned", 49, 300, 349)]
    assert await balance_and_ledger(wide_engine, cid) == (349, 349)


async def test_a_repeat_after_the_balance_was_spent_returns_the_first_result_not_a_refusal(engine: AsyncEngine) -> None:
    cid = await new_customer(engine, 300)
    order = order_ref()
    first = await apply_points_at_checkout(engine, cid, order, 300, Decimal("0"))
    again = await apply_points_at_checkout(engine, cid, order, 300, Decimal("0"))
    assert (first.outcome, again.outcome) == ("applied", "already_applied")
    assert (again.balance_before, again.balance_after) == (300, 0)
    assert await balance_and_ledger(engine, cid) == (0, 0)


async def test_points_earned_are_computed_server_side_at_the_customers_rate_floored(engine: AsyncEngine) -> None:
    cid = await new_customer(engine, 0, earn_rate="0.5")
    result = await apply_points_at_checkout(engine, cid, order_ref(), 0, Decimal("99.99"))
    assert (result.points_earned, result.balance_after) == (49, 49)
    assert await balance_and_ledger(engine, cid) == (49, 49)


async def test_bad_input_is_refused_clearly_and_writes_nothing(engine: AsyncEngine) -> None:
    cid = await new_customer(engine, 100)
    order = order_ref()
    with pytest.raises(pydantic.ValidationError, match="points_redeemed"):
        await apply_points_at_checkout(engine, cid, order, -5, Decimal("10"))
    with pytest.raises(pydantic.ValidationError, match="order_total"):
        await apply_points_at_checkout(engine, cid, order, 0, Decimal("-1"))
    with pytest.raises(UnknownCustomer, match="no customer 987654321") as unknown:
        await apply_points_at_checkout(engine, 987654321, order, 0, Decimal("10"))
    assert unknown.value.non_retryable
    assert await order_rows(engine, order) == []

    await apply_points_at_checkout(engine, cid, order, 0, Decimal("10"))
    other = await new_customer(engine, 100)
    with pytest.raises(OrderOfAnotherCustomer, match=f"applied to customer {cid}, not {other}"):
        await apply_points_at_checkout(engine, other, order, 0, Decimal("10"))
    assert await balance_and_ledger(engine, other) == (100, 100)


async def test_a_refund_reverses_the_orders_net_points_once(engine: AsyncEngine) -> None:
    cid = await new_customer(engine, 500)
    order = order_ref()
    await apply_points_at_checkout(engine, cid, order, 100, Decimal("50"))  # 500 - 100 + 50 = 450
    reversal = await reverse_points_on_refund(engine, cid, order)
    assert (reversal.points, reversal.balance_before, reversal.balance_after, reversal.shortfall) == (50, 450, 500, 0)
    again = await reverse_points_on_refund(engine, cid, order)
    assert again.already_reversed and again.points == 50
    assert [r[0] for r in await order_rows(engine, order)] == ["spent", "earned", "reversed"]
    assert await balance_and_ledger(engine, cid) == (500, 500)


async def test_earned_points_already_spent_are_reversed_only_down_to_zero(engine: AsyncEngine) -> None:
    cid = await new_customer(engine, 0)
    earn, spend = order_ref(), order_ref()
    await apply_points_at_checkout(engine, cid, earn, 0, Decimal("80"))  # 80 earned
    await apply_points_at_checkout(engine, cid, spend, 60, Decimal("0"))  # 20 left
    reversal = await reverse_points_on_refund(engine, cid, earn)
    assert (reversal.points, reversal.shortfall, reversal.balance_after) == (-20, 60, 0)
    assert await balance_and_ledger(engine, cid) == (0, 0)


async def test_an_order_refunded_before_its_points_were_applied_never_gets_them(engine: AsyncEngine) -> None:
    cid = await new_customer(engine, 100)
    order = order_ref()
    tombstone = await reverse_points_on_refund(engine, cid, order)
    assert (tombstone.points, tombstone.balance_after) == (0, 100)
    late = await apply_points_at_checkout(engine, cid, order, 50, Decimal("500"))
    assert (late.outcome, late.points_earned, late.balance_after) == ("order_reversed", 0, 100)
    assert await order_rows(engine, order) == [("reversed", 0, 100, 100)]
    assert await balance_and_ledger(engine, cid) == (100, 100)


async def test_reapplying_an_order_with_another_redemption_writes_nothing_and_reports_the_conflict(
    engine: AsyncEngine,
) -> None:
    from activities.loyalty.audit import audit_balances
    from activities.loyalty.errors import OrderAppliedDifferently

    cid = await new_customer(engine, 500)
    order = order_ref()
    first = await apply_points_at_checkout(engine, cid, order, 0, Decimal("40"))  # earned only: 540
    with pytest.raises(OrderAppliedDifferently, match="redeemed 0 points, not 100") as conflict:
        await apply_points_at_checkout(engine, cid, order, 100, Decimal("40"))
    assert conflict.value.non_retryable and conflict.value.type == "OrderAppliedDifferently"
    assert first.balance_after == 540
    assert await order_rows(engine, order) == [("earned", 40, 500, 540)]
    assert await balance_and_ledger(engine, cid) == (540, 540)
    assert (await audit_balances(engine, 10))[1] == 0


async def test_concurrent_applications_of_one_order_with_different_redemptions_apply_exactly_one(
    wide_engine: AsyncEngine,
) -> None:
    from activities.loyalty.audit import audit_balances
    from activities.loyalty.errors import OrderAppliedDifferently

    cid = await new_customer(wide_engine, 1000)
    order = order_ref()
    outcomes = await asyncio.gather(
        *(
            apply_points_at_checkout(wide_engine, cid, order, points, Decimal("10"))
            for points in (0, 100, 200, 300, 0, 100)
        ),
        return_exceptions=True,
    )
    applied = [o for o in outcomes if isinstance(o, PointsApplication) and o.outcome == "applied"]
    assert len(applied) == 1, outcomes
    winner = applied[0].points_redeemed
    for redeemed, outcome in zip((0, 100, 200, 300, 0, 100), outcomes, strict=True):
        if redeemed == winner:
            assert isinstance(outcome, PointsApplication) and outcome.points_redeemed == winner
        else:
            assert isinstance(outcome, OrderAppliedDifferently), outcome
    assert [r[0] for r in await order_rows(wide_engine, order)] == (["spent", "earned"] if winner else ["earned"])
    assert await balance_and_ledger(wide_engine, cid) == (1000 - winner + 10,) * 2
    assert (await audit_balances(wide_engine, 10))[1] == 0


async def test_an_adjustment_is_one_row_per_reference_and_never_overdraws(wide_engine: AsyncEngine) -> None:
    from activities.loyalty.ledger import adjust_points

    cid = await new_customer(wide_engine, 30)

    async def adjust(points: int, ref: str):  # type: ignore[no-untyped-def]
        async with wide_engine.begin() as conn:
            return await adjust_points(conn, cid, points, reference_type="reconciliation_item", reference_id=ref)

    ref = order_ref()
    outcomes = await asyncio.gather(*(adjust(25, ref) for _ in range(5)))
    assert sorted(o.already_adjusted for o in outcomes) == [False] + [True] * 4
    assert {(o.points, o.balance_before, o.balance_after) for o in outcomes} == {(25, 30, 55)}
    take = await adjust(-100, order_ref())  # more than there is: takes what is there
    assert (take.requested, take.points, take.balance_after) == (-100, -55, 0)
    assert await balance_and_ledger(wide_engine, cid) == (0, 0)


# --------------------------------------------------------------------------- one statement under contention


async def test_hundreds_of_concurrent_applications_on_a_few_hot_customers_leave_exact_balances(
    wide_engine: AsyncEngine,
) -> None:
    """The checkout benchmark's shape: every application of a hot customer sees the balance the one
    before it left, and each balance ends exactly at opening - redeemed + earned."""
    opening, hot = 100_000, [await new_customer(wide_engine, 100_000) for _ in range(4)]
    calls = [(hot[i % 4], order_ref(), (i % 7) * 10, Decimal(i % 5) + Decimal("0.99")) for i in range(400)]
    outcomes = await asyncio.gather(*(apply_points_at_checkout(wide_engine, *call) for call in calls))
    assert {o.outcome for o in outcomes} == {"applied"}
    for cid in hot:
        mine = [o for o in outcomes if o.customer_id == cid]
        expected = opening - sum(o.points_redeemed for o in mine) + sum(o.points_earned for o in mine)
        assert await balance_and_ledger(wide_engine, cid) == (expected, expected)
        # One chain: in the order they were written, each row starts from the balance the one before left.
        async with wide_engine.connect() as conn:
            chain = (
                await conn.execute(
                    text(
                        "SELECT balance_before, balance_after FROM loyalty_transactions"
                        " WHERE customer_id = :c ORDER BY id"
                    ),
                    {"c": cid},
                )
            ).all()
        assert all(row.balance_before == before.balance_after for before, row in zip(chain, chain[1:], strict=False))
        assert (chain[0].balance_before, chain[-1].balance_after) == (0, expected)
    assert [o.points_earned for o in outcomes[:5]] == [0, 1, 2, 3, 4]  # floor((i % 5) + 0.99) at rate 1


async def test_concurrent_repeats_of_many_orders_on_one_hot_customer_apply_each_order_once(
    wide_engine: AsyncEngine,
) -> None:
    cid = await new_customer(wide_engine, 10_000)
    orders = [order_ref() for _ in range(60)]
    calls = [order for order in orders for _ in range(3)]  # each order three times, all at once
    outcomes = await asyncio.gather(
        *(apply_points_at_checkout(wide_engine, cid, order, 50, Decimal("20")) for order in calls)
    )
    for order in orders:
        mine = [o for o in outcomes if o.order_id == order]
        assert sorted(o.outcome for o in mine) == ["already_applied", "already_applied", "applied"]
        assert len({(o.balance_before, o.balance_after) for o in mine}) == 1
        assert await order_rows(wide_engine, order) == [
            ("spent", -50, mine[0].balance_before, mine[0].balance_before - 50),
            ("earned", 20, mine[0].balance_before - 50, mine[0].balance_after),
        ]
    assert await balance_and_ledger(wide_engine, cid) == (10_000 - 60 * 30,) * 2


async def test_an_order_written_by_another_customers_open_transaction_is_undone_whole_and_refused(
    engine: AsyncEngine,
) -> None:
    """The insert's race: this customer's `spent` row goes in, the order's `earned` row belongs to
    another customer's transaction still open; once it commits, ours is undone and refused."""
    from activities.loyalty.ledger import apply_points
    from schemas.loyalty import ApplyOrderPoints

    first, second = await new_customer(engine, 500), await new_customer(engine, 500)
    order = order_ref()
    async with engine.begin() as conn:  # the first customer's application, not committed yet
        await apply_points(
            conn, ApplyOrderPoints(customer_id=first, order_id=order, points_redeemed=0, order_total=Decimal("5"))
        )
        late = asyncio.ensure_future(apply_points_at_checkout(engine, second, order, 100, Decimal("5")))
        await asyncio.sleep(0.5)  # the second one waits on the order's unique key
        assert not late.done()
    with pytest.raises(OrderOfAnotherCustomer, match=f"applied to customer {first}, not {second}"):
        await late
    assert await order_rows(engine, order) == [("earned", 5, 500, 505)]
    assert await balance_and_ledger(engine, first) == (505, 505)
    assert await balance_and_ledger(engine, second) == (500, 500)


async def test_an_order_earning_more_than_the_ledger_holds_is_refused_and_writes_nothing(engine: AsyncEngine) -> None:
    from activities.loyalty.errors import PointsOverflow

    cid = await new_customer(engine, 100)
    order = order_ref()
    with pytest.raises(PointsOverflow) as overflow:
        await apply_points_at_checkout(engine, cid, order, 0, Decimal("2000000000"))
    assert overflow.value.non_retryable and overflow.value.type == "PointsOverflow"
    assert await order_rows(engine, order) == []
    assert await balance_and_ledger(engine, cid) == (100, 100)
