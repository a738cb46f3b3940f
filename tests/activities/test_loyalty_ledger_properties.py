"""The points ledger under random sequences, each step through the code production runs, against a
real PostgreSQL (issue #32, point 5).

A sequence mixes checkout applications (redeeming and earning), retries of an order (the same
request again), refunds (`reverse_points_on_refund`, also of an order never applied), a person's
adjustments both ways, and failed applications queued for reconciliation, then attempted by the
queue's activity or resolved by a person with a points adjustment; most steps may be delivered twice
at once (two transactions on two connections). The test models the balance in points and after
every step compares: the customer's balance is the sum of their ledger and the model's, never
negative; the ledger is one chain (each row starts from the balance the one before left, and
moves it by its points); an order has at most one row of each kind. At the end, replaying any
prefix of the accepted writes changes nothing.

`make test` runs a bounded, derandomized set (tests/properties.py); `make test-money` thousands.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment

from activities.loyalty.errors import InsufficientPoints
from activities.loyalty.ledger import adjust_points, apply_points_at_checkout, reverse_points_on_refund
from activities.loyalty.queue import LoyaltyQueueActivities, insert_queue_item
from schemas.loyalty import (
    ApplyQueuedPoints,
    FailedPointsApplication,
    PointsAdjustment,
    PointsApplication,
    PointsReversal,
    QueueApplyResult,
    QueueItem,
    ResolveItem,
)
from tests.loyalty_factories import new_customer
from tests.properties import ledger_settings

OPENING = 300
points = st.integers(min_value=0, max_value=400)
totals = st.integers(min_value=0, max_value=30_000).map(lambda cents: Decimal(cents) / 100)
pick = st.integers(min_value=0, max_value=63)
twice = st.booleans()
step = st.one_of(
    st.tuples(st.just("apply"), points, totals, twice),  # a checkout: redeem, earn on the total
    st.tuples(st.just("retry"), pick),  # an order applied before, the same request again
    st.tuples(st.just("refund"), pick, twice),  # one of the orders (applied, queued or refused)
    st.tuples(st.just("refund unapplied"), twice),  # a refund that arrives before the order's points
    st.tuples(st.just("adjust"), st.integers(min_value=-500, max_value=500), twice),
    st.tuples(st.just("queue"), points, totals, twice),  # a failed application queued for reconciliation
    st.tuples(st.just("attempt"), pick, twice),  # the queue's retry of an item
    st.tuples(st.just("resolve"), pick, st.integers(min_value=-200, max_value=200), twice),  # by a person
)
sequences = st.lists(step, min_size=1, max_size=16)

Write = Callable[[], Awaitable[Any]]


@dataclass
class Order:
    redeemed: int
    total: Decimal
    applied: tuple[int, int] | None = None  # (redeemed, earned) once applied
    refunded: bool = False


@dataclass
class Model:
    balance: int = OPENING
    orders: dict[str, Order] = field(default_factory=dict)
    items: dict[int, str] = field(default_factory=dict)  # queue item -> order
    resolved: set[int] = field(default_factory=set)
    writes: list[tuple[str, Write]] = field(default_factory=list)

    def application(self, order: Order) -> tuple[int, int] | None:
        """What applying `order` now should do: (redeemed, earned), or None when refused (too few points)."""
        if order.refunded:
            return (0, 0)  # the refund came first: the order never gets its points
        if order.redeemed > self.balance:
            return None
        return order.redeemed, int(order.total)  # earn rate 1, floored


async def deliver(write: Write, at_once: bool) -> list[Any]:
    if at_once:
        return list(await asyncio.gather(write(), write(), return_exceptions=True))
    try:
        return [await write()]
    except Exception as error:  # noqa: BLE001 - the caller asserts which outcome each delivery had
        return [error]


def only(results: list[Any], kind: type | tuple[type, ...]) -> list[Any]:
    unexpected = [r for r in results if not isinstance(r, kind)]
    if unexpected:
        raise AssertionError(f"expected {kind}, got {unexpected!r}") from next(
            (r for r in unexpected if isinstance(r, BaseException)), None
        )
    return results


class Sequence:
    def __init__(self, engine: AsyncEngine, customer: int) -> None:
        self.engine, self.customer, self.model = engine, customer, Model()
        self.queue = LoyaltyQueueActivities(engine)

    def _apply(self, ref: str) -> Callable[[], Awaitable[PointsApplication]]:
        order = self.model.orders[ref]
        return lambda: apply_points_at_checkout(self.engine, self.customer, ref, order.redeemed, order.total)

    def _settle(self, ref: str, outcome: tuple[int, int]) -> None:
        order = self.model.orders[ref]
        if order.refunded:
            return
        order.applied = outcome
        self.model.balance += outcome[1] - outcome[0]

    async def apply(self, redeemed: int, total: Decimal, at_once: bool) -> None:
        ref = f"ord-{uuid.uuid4().hex[:12]}"
        self.model.orders[ref] = order = Order(redeemed, total)
        expected = self.model.application(order)
        results = await deliver(self._apply(ref), at_once)
        if expected is None:
            only(results, InsufficientPoints)
            return
        only(results, PointsApplication)
        assert sorted(r.outcome for r in results) == ["already_applied"] * (len(results) - 1) + ["applied"], results
        assert {(r.points_redeemed, r.points_earned) for r in results} == {expected}, results
        self._settle(ref, expected)
        self.model.writes.append((f"apply {ref}", self._replay_apply(ref)))

    def _replay_apply(self, ref: str) -> Write:
        async def again() -> None:
            result = await self._apply(ref)()
            assert result.outcome == "already_applied", result

        return again

    async def refund(self, ref: str, at_once: bool) -> None:
        order = self.model.orders[ref]
        first = not order.refunded
        net = (order.applied[1] - order.applied[0]) if order.applied else 0
        taken = max(-net, -self.model.balance)  # earned points already spent are not taken back
        results = only(
            await deliver(lambda: reverse_points_on_refund(self.engine, self.customer, ref), at_once), PointsReversal
        )
        fresh = [r for r in results if not r.already_reversed]
        if first:
            assert len(fresh) == 1 and fresh[0].points == taken, results
            order.refunded = True
            self.model.balance += taken
            self.model.writes.append((f"refund {ref}", self._replay_refund(ref)))
        else:
            assert fresh == [], results

    def _replay_refund(self, ref: str) -> Write:
        async def again() -> None:
            assert (await reverse_points_on_refund(self.engine, self.customer, ref)).already_reversed

        return again

    def _adjust(self, points: int, ref: str) -> Callable[[], Awaitable[PointsAdjustment]]:
        async def write() -> PointsAdjustment:
            async with self.engine.begin() as conn:
                return await adjust_points(conn, self.customer, points, reference_type="support", reference_id=ref)

        return write

    async def adjust(self, n: int, points: int, at_once: bool) -> None:
        ref = f"adj-{self.customer}-{n}"
        written = max(points, -self.model.balance)  # a take larger than the balance takes what is there
        results = only(await deliver(self._adjust(points, ref), at_once), PointsAdjustment)
        assert sorted(r.already_adjusted for r in results) == [False] + [True] * (len(results) - 1), results
        assert {r.points for r in results} == {written}, results
        self.model.balance += written
        self.model.writes.append((f"adjust {ref}", self._replay_adjust(points, ref)))

    def _replay_adjust(self, points: int, ref: str) -> Write:
        async def again() -> None:
            assert (await self._adjust(points, ref)()).already_adjusted

        return again

    def _enqueue(self, ref: str) -> Callable[[], Awaitable[tuple[QueueItem, bool]]]:
        order = self.model.orders[ref]
        failed = FailedPointsApplication(
            customer_id=self.customer, order_id=ref, points_redeemed=order.redeemed, order_total=order.total
        )
        return lambda: insert_queue_item(self.engine, failed)

    async def enqueue(self, redeemed: int, total: Decimal, at_once: bool) -> None:
        ref = f"ord-{uuid.uuid4().hex[:12]}"
        self.model.orders[ref] = Order(redeemed, total)
        results = only(await deliver(self._enqueue(ref), at_once), tuple)
        assert sorted(created for _, created in results) == [False] * (len(results) - 1) + [True], results
        assert len({item.item_id for item, _ in results}) == 1
        self.model.items[results[0][0].item_id] = ref
        self.model.writes.append((f"queue {ref}", self._replay_enqueue(ref)))

    def _replay_enqueue(self, ref: str) -> Write:
        async def again() -> None:
            _, created = await self._enqueue(ref)()
            assert not created

        return again

    def _attempt(self, item_id: int) -> Callable[[], Awaitable[QueueApplyResult]]:
        return lambda: ActivityEnvironment().run(self.queue.apply_queued_points, ApplyQueuedPoints(item_id=item_id))

    async def attempt(self, item_id: int, at_once: bool) -> None:
        ref = self.model.items[item_id]
        order = self.model.orders[ref]
        expected = None if item_id in self.model.resolved else self.model.application(order)
        results = await deliver(self._attempt(item_id), at_once)
        if item_id in self.model.resolved:
            assert all(isinstance(r, QueueApplyResult) and r.application is None for r in results), results
            return
        if expected is None:  # too few points: the attempt fails, the item stays PENDING
            only(results, InsufficientPoints)
            return
        applied = [r for r in only(results, QueueApplyResult) if r.application is not None]
        assert len(applied) == 1, results  # a concurrent second attempt finds the item resolved
        application = applied[0].application
        assert application is not None
        assert (application.points_redeemed, application.points_earned) == expected, application
        assert applied[0].item.status == "RESOLVED"
        self.model.resolved.add(item_id)
        self._settle(ref, expected)
        self.model.writes.append((f"attempt {item_id}", self._replay_attempt(item_id)))

    def _replay_attempt(self, item_id: int) -> Write:
        async def again() -> None:
            assert (await self._attempt(item_id)()).application is None

        return again

    def _resolve(self, item_id: int, points: int) -> Callable[[], Awaitable[QueueItem]]:
        adjustment = points or None  # 0: a resolution without points
        request = ResolveItem(item_id=item_id, resolution="manual", resolved_by="prop", points_adjustment=adjustment)
        return lambda: ActivityEnvironment().run(self.queue.resolve_item, request)

    async def resolve(self, item_id: int, points: int, at_once: bool) -> None:
        first = item_id not in self.model.resolved
        only(await deliver(self._resolve(item_id, points), at_once), QueueItem)
        if first:
            self.model.resolved.add(item_id)
            self.model.balance += max(points, -self.model.balance)
            self.model.writes.append((f"resolve {item_id}", self._resolve_again(item_id, points)))

    def _resolve_again(self, item_id: int, points: int) -> Write:
        async def again() -> None:
            assert (await self._resolve(item_id, points)()).status == "RESOLVED"

        return again

    async def run(self, n: int, step: tuple[Any, ...]) -> bool:
        model = self.model
        refs, items = list(model.orders), list(model.items)
        match step:
            case ("apply", redeemed, total, at_once):
                await self.apply(redeemed, total, at_once)
            case ("retry", k) if any(o.applied and not o.refunded for o in model.orders.values()):
                applied = [ref for ref, o in model.orders.items() if o.applied and not o.refunded]
                await self._replay_apply(applied[k % len(applied)])()
            case ("refund", k, at_once) if refs:
                await self.refund(refs[k % len(refs)], at_once)
            case ("refund unapplied", at_once):
                ref = f"ord-{uuid.uuid4().hex[:12]}"
                model.orders[ref] = Order(0, Decimal("10"))
                await self.refund(ref, at_once)
            case ("adjust", points, at_once):
                await self.adjust(n, points, at_once)
            case ("queue", redeemed, total, at_once):
                await self.enqueue(redeemed, total, at_once)
            case ("attempt", k, at_once) if items:
                await self.attempt(items[k % len(items)], at_once)
            case ("resolve", k, points, at_once) if items:
                await self.resolve(items[k % len(items)], points, at_once)
            case _:
                return False
        return True

    async def check(self, where: str) -> None:
        async with self.engine.connect() as conn:
            balance = await conn.scalar(
                text("SELECT loyalty_points FROM customers WHERE id = :c"), {"c": self.customer}
            )
            rows = (
                await conn.execute(
                    text(
                        "SELECT type, points, balance_before, balance_after, reference_type, reference_id"
                        " FROM loyalty_transactions WHERE customer_id = :c ORDER BY id"
                    ),
                    {"c": self.customer},
                )
            ).all()
        assert balance == sum(row.points for row in rows) == self.model.balance, f"balance {balance}: {where}"
        assert balance >= 0, where
        previous = 0
        for row in rows:  # one chain: each row starts where the one before left the balance
            assert (row.balance_before, row.balance_after) == (previous, previous + row.points), f"{row}: {where}"
            previous = row.balance_after
        kinds = [(row.reference_type, row.reference_id, row.type) for row in rows]
        assert len(kinds) == len(set(kinds)), f"a second row of one kind: {where}"

    async def snapshot(self) -> tuple[Any, ...]:
        async with self.engine.connect() as conn:
            return (
                await conn.scalar(text("SELECT loyalty_points FROM customers WHERE id = :c"), {"c": self.customer}),
                (
                    await conn.execute(
                        text("SELECT * FROM loyalty_transactions WHERE customer_id = :c ORDER BY id"),
                        {"c": self.customer},
                    )
                ).all(),
                (
                    await conn.execute(
                        text(
                            "SELECT id, status, resolution, attempts FROM loyalty_reconciliation_queue"
                            " WHERE customer_id = :c ORDER BY id"
                        ),
                        {"c": self.customer},
                    )
                ).all(),
            )


async def run_sequence(engine: AsyncEngine, sequence: list[tuple[Any, ...]], replay: int) -> None:
    run = Sequence(engine, await new_customer(engine, OPENING))
    await run.check("opening")
    for n, step in enumerate(sequence):
        if await run.run(n, step):
            await run.check(f"after {step} (step {n} of {sequence})")
    writes = run.model.writes[: replay % (len(run.model.writes) + 1)]
    before = await run.snapshot()
    for _name, again in writes:
        await again()
    assert await run.snapshot() == before, f"replaying {[name for name, _ in writes]} of {sequence} changed the ledger"


@ledger_settings(examples=45)
@given(sequence=sequences, replay=st.integers(min_value=0, max_value=64))
# Always run: an application twice at once, a queued order attempted twice at once, a redemption
# refused for too few points, refunds (twice at once, and one before any points), an attempt refused
# for too few points then resolved by a person taking more than the balance, an adjustment twice at
# once, a refund after the earned points were partly spent, then every write replayed.
@example(
    sequence=[
        ("apply", 100, Decimal("80.50"), True),
        ("queue", 50, Decimal("200"), True),
        ("attempt", 0, True),
        ("apply", 300, Decimal("0"), False),
        ("refund", 1, True),
        ("retry", 0),
        ("refund unapplied", True),
        ("queue", 400, Decimal("5"), False),
        ("attempt", 1, False),
        ("resolve", 1, -1000, True),
        ("adjust", 40, True),
        ("refund", 0, False),
    ],
    replay=64,
)
async def test_points_balance_is_the_sum_of_the_ledger_after_every_mix_and_replays_change_nothing(
    engine: AsyncEngine, sequence: list[tuple[Any, ...]], replay: int
) -> None:
    await run_sequence(engine, sequence, replay)
