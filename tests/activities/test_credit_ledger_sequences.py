"""The credit ledger under random sequences of everything that moves a retailer's money, each through
the code production runs, against a real PostgreSQL (issue #32, point 5).

A sequence mixes credit orders (with a checkout clock or without), partial, full and over-payments,
adjustments both ways, limit changes, the clock ending (COMPLETED or EXPIRED), order failures
before and after it, late duplicate deliveries of a payment or an adjustment reference, and the
same order, payment, adjustment or failure delivered twice at once (`asyncio.gather`: two
transactions on two connections). The test keeps its own model of the amounts (what was paid in,
charged, which orders are live, the limit) and after every step compares it with the database:

- available credit is the limit minus what the open debits owe, and never above the limit; an
  order is placed exactly when the model says it fits the available credit;
- what is owed and the credit balance are the model's: one is zero whenever the other is not,
  so no money is created or destroyed (balance - owed = paid in - charged - live orders);
- the credit balance is money received - money allocated + money released (a failed order's paid
  part given back), allocations and releases read from the audit rows;
- every movement has its `audit_log` row, no audit row speaks of a movement that is not there, and
  each debit's cleared amount is what its audited allocations and reversal say;
- at the end, replaying any prefix of the accepted writes (same references, same order ids)
  changes nothing at all.

`make test` runs a bounded, derandomized set (tests/properties.py); `make test-money` thousands.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment

from activities.credit import admin
from activities.credit.guardrails import PlacementRefused
from activities.credit.orders import OrderPlaced, place_order
from activities.credit.payments import record_payment
from activities.orders import OrderActivities
from schemas.credit import PaymentRecorded, RecordPayment
from schemas.orders import OrderFailure, OrderFailureResult, SettleOrder
from tests.activities.test_credit import new_retailer
from tests.properties import ledger_settings

TODAY = date.today()
ORDER_IDS = itertools.count(random.randrange(1_000, 2_000) * 1_000_000_000)
OPENING_LIMIT = Decimal("500")
ZERO = Decimal("0")

money = st.integers(min_value=1, max_value=30_000).map(lambda cents: Decimal(cents) / 100)
pick = st.integers(min_value=0, max_value=63)  # one of the earlier orders, payments or adjustments
twice = st.booleans()  # delivered twice at once
step = st.one_of(
    st.tuples(st.just("order"), money, st.booleans(), twice),  # amount, with a checkout clock
    st.tuples(st.just("pay"), money, twice),
    st.tuples(st.just("pay again"), pick),  # a payment reference delivered again, later
    st.tuples(st.just("adjust"), money, st.booleans(), twice),  # in the retailer's favour, or a charge
    st.tuples(st.just("adjust again"), pick),
    st.tuples(st.just("fail"), pick, twice),  # one of the orders placed (again: changes nothing)
    st.tuples(st.just("clock ends"), pick, st.sampled_from(["COMPLETED", "EXPIRED"])),
    # two different writes of the retailer at once: a payment, or a retry of the order's placement,
    # while one of the orders fails
    st.tuples(st.just("pay while failing"), money, pick),
    st.tuples(st.just("retry order while failing"), pick),
    st.tuples(
        st.just("limit"),
        st.sampled_from([ZERO, Decimal("100"), Decimal("250"), Decimal("500"), Decimal("800"), Decimal("1500")]),
    ),
)
sequences = st.lists(step, min_size=1, max_size=16)

Write = Callable[[], Awaitable[Any]]
CLOCKS = text("SELECT order_id, status FROM pending_orders WHERE retailer_id = :r")


@dataclass
class Model:
    """What the sequence did, in amounts: the test's expectations, not the ledger's rules."""

    limit: Decimal = OPENING_LIMIT
    received: Decimal = ZERO  # payments and favourable adjustments
    charged: Decimal = ZERO  # adjustments against the retailer
    live: dict[int, Decimal] = field(default_factory=dict)  # placed orders not failed: their amounts
    orders: list[int] = field(default_factory=list)
    amounts: dict[int, Decimal] = field(default_factory=dict)  # every placed order's amount
    failed: set[int] = field(default_factory=set)
    clocks: dict[int, str] = field(default_factory=dict)  # order -> pending_orders status
    payments: list[tuple[str, Decimal]] = field(default_factory=list)
    adjustments: list[tuple[str, Decimal]] = field(default_factory=list)  # signed
    limit_changes: int = 0
    writes: list[tuple[str, Write]] = field(default_factory=list)  # accepted writes, for the replay

    @property
    def net(self) -> Decimal:
        return self.received - self.charged - sum(self.live.values(), ZERO)

    @property
    def owed(self) -> Decimal:
        return max(ZERO, -self.net)

    @property
    def balance(self) -> Decimal:
        return max(ZERO, self.net)

    @property
    def available(self) -> Decimal:
        return self.limit - self.owed


async def deliver(write: Write, twice: bool) -> list[Any]:
    """One delivery, or two at once on two connections; exceptions are returned, not raised."""
    if twice:
        return list(await asyncio.gather(write(), write(), return_exceptions=True))
    try:
        return [await write()]
    except Exception as error:  # noqa: BLE001 - the caller asserts which outcome each delivery had
        return [error]


def only(results: list[Any], kind: type) -> list[Any]:
    unexpected = [r for r in results if not isinstance(r, kind)]
    if unexpected:
        raise AssertionError(f"expected {kind.__name__}, got {unexpected!r}") from next(
            (r for r in unexpected if isinstance(r, BaseException)), None
        )
    return results


class Sequence:
    def __init__(self, engine: AsyncEngine, shop: int) -> None:
        self.engine, self.shop, self.model = engine, shop, Model()

    # ----------------------------------------------------------------------- the steps

    async def order(self, n: int, amount: Decimal, clock: bool, at_once: bool) -> None:
        order_id, fits = next(ORDER_IDS), amount <= self.model.available

        def write() -> Awaitable[OrderPlaced]:
            return place_order(self.engine, self.shop, order_id, amount, "CREDIT", today=TODAY)

        results = await deliver(write, at_once)
        if not fits:
            only(results, PlacementRefused)
            return
        only(results, OrderPlaced)
        assert sorted(r.duplicate for r in results) == [False] + [True] * (len(results) - 1), results
        self.model.live[order_id] = amount
        self.model.orders.append(order_id)
        self.model.amounts[order_id] = amount
        self.model.writes.append((f"order {order_id}", self._replay_order(order_id, amount)))
        if clock:
            async with self.engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO pending_orders (order_id, retailer_id, amount, status, expires_at)"
                        " VALUES (:o, :r, :a, 'PENDING', now() + interval '24 hours')"
                    ),
                    {"o": order_id, "r": self.shop, "a": amount},
                )
            self.model.clocks[order_id] = "PENDING"

    def _replay_order(self, order_id: int, amount: Decimal) -> Write:
        async def again() -> None:
            try:
                placed = await place_order(self.engine, self.shop, order_id, amount, "CREDIT", today=TODAY)
            except PlacementRefused as refused:  # the order failed since: a retry of it is refused
                assert order_id in self.model.failed, refused
                return
            assert placed.duplicate

        return again

    async def pay(self, n: int, amount: Decimal, at_once: bool) -> None:
        reference = f"pay-{self.shop}-{n}"

        def write() -> Awaitable[PaymentRecorded]:
            return record_payment(
                self.engine, RecordPayment(retailer_id=self.shop, amount=amount, reference=reference, actor="prop")
            )

        results = only(await deliver(write, at_once), PaymentRecorded)
        assert sorted(r.duplicate for r in results) == [False] + [True] * (len(results) - 1), results
        assert {(r.amount, r.credit_transaction_id) for r in results} == {(amount, results[0].credit_transaction_id)}
        self.model.received += amount
        self.model.payments.append((reference, amount))
        self.model.writes.append((f"payment {reference}", self._replay_payment(reference, amount)))

    def _replay_payment(self, reference: str, amount: Decimal) -> Write:
        async def again() -> None:
            recorded = await record_payment(
                self.engine, RecordPayment(retailer_id=self.shop, amount=amount, reference=reference, actor="prop")
            )
            assert recorded.duplicate and recorded.amount == amount, recorded

        return again

    async def adjust(self, n: int, amount: Decimal, favour: bool, at_once: bool) -> None:
        reference, signed = f"adj-{self.shop}-{n}", amount if favour else -amount
        write = self._adjustment(reference, signed)
        results = only(await deliver(write, at_once), admin.Adjustment)
        assert sorted(r.duplicate for r in results) == [False] + [True] * (len(results) - 1), results
        assert {r.amount for r in results} == {signed}, results
        if favour:
            self.model.received += amount
        else:
            self.model.charged += amount
        self.model.adjustments.append((reference, signed))
        self.model.writes.append((f"adjustment {reference}", self._replay_adjustment(reference, signed)))

    def _adjustment(self, reference: str, signed: Decimal) -> Callable[[], Awaitable[admin.Adjustment]]:
        def write() -> Awaitable[admin.Adjustment]:
            return admin.adjust(
                self.engine, self.shop, signed, reason="property", actor="prop", reference=reference, today=TODAY
            )

        return write

    def _replay_adjustment(self, reference: str, signed: Decimal) -> Write:
        async def again() -> None:
            adjusted = await self._adjustment(reference, signed)()
            assert adjusted.duplicate and adjusted.amount == signed, adjusted

        return again

    async def fail(self, k: int, at_once: bool) -> None:
        order_id = self.model.orders[k % len(self.model.orders)]
        first = order_id not in self.model.failed
        failure = self._failure(order_id)
        results = only(await deliver(failure, at_once), OrderFailureResult)
        changed = [r for r in results if r.changed]
        if first:
            assert len(changed) == 1, results
            assert changed[0].reversed_amount + changed[0].returned_to_balance == self.model.live[order_id]
            del self.model.live[order_id]
            self.model.failed.add(order_id)
            if self.model.clocks.get(order_id) == "PENDING":  # failed before the clock ended
                self.model.clocks[order_id] = "FAILED"
            self.model.writes.append((f"failure {order_id}", self._replay_failure(order_id)))
        else:
            assert changed == [], results

    def _failure(self, order_id: int) -> Callable[[], Awaitable[OrderFailureResult]]:
        def write() -> Awaitable[OrderFailureResult]:
            return ActivityEnvironment().run(
                OrderActivities(self.engine).handle_order_failure, OrderFailure(order_id=order_id, reason="property")
            )

        return write

    def _replay_failure(self, order_id: int) -> Write:
        async def again() -> None:
            assert not (await self._failure(order_id)()).changed

        return again

    async def clock_ends(self, k: int, state: str) -> None:
        with_clock = [o for o in self.model.orders if o in self.model.clocks]
        if not with_clock:
            return
        order_id = with_clock[k % len(with_clock)]
        ended = await self._settle(order_id, state)
        if self.model.clocks[order_id] == "PENDING":
            self.model.clocks[order_id] = state
            self.model.writes.append((f"clock {order_id} {state}", self._replay_settle(order_id, state)))
        assert ended == self.model.clocks[order_id]

    async def _settle(self, order_id: int, state: str) -> str:
        request = SettleOrder(order_id=order_id, state=state)  # type: ignore[arg-type]
        return await ActivityEnvironment().run(OrderActivities(self.engine).settle_pending_order, request)

    def _replay_settle(self, order_id: int, state: str) -> Write:
        async def again() -> None:
            assert await self._settle(order_id, state) == self.model.clocks[order_id]

        return again

    async def pay_while_failing(self, n: int, amount: Decimal, k: int) -> None:
        """A payment and a failure at once: whichever takes the retailer's lock first, the same money."""
        await asyncio.gather(self.pay(n, amount, False), self.fail(k, False))

    async def retry_order_while_failing(self, k: int) -> None:
        """The order's placement retried while the order fails: a duplicate, or refused as FAILED.
        Both take the retailer's lock first, then the order's (they deadlocked when the failure
        took the order's first)."""
        order_id = self.model.orders[k % len(self.model.orders)]
        amount = self.model.amounts[order_id]

        async def retry() -> None:
            try:
                placed = await place_order(self.engine, self.shop, order_id, amount, "CREDIT", today=TODAY)
            except PlacementRefused as refused:
                assert "FAILED" in str(refused), refused
                return
            assert placed.duplicate, placed

        await asyncio.gather(retry(), self.fail(k, False))

    async def limit(self, limit: Decimal) -> None:
        await admin.set_limits(self.engine, self.shop, {"credit_limit": limit}, actor="prop")
        self.model.limit = limit
        self.model.limit_changes += 1

    async def run(self, n: int, step: tuple[Any, ...]) -> bool:
        """Apply one step; False when it does not apply (nothing to fail, pay again, ...)."""
        match step:
            case ("order", amount, clock, at_once):
                await self.order(n, amount, clock, at_once)
            case ("pay", amount, at_once):
                await self.pay(n, amount, at_once)
            case ("pay again", k) if self.model.payments:
                await self._replay_payment(*self.model.payments[k % len(self.model.payments)])()
            case ("adjust", amount, favour, at_once):
                await self.adjust(n, amount, favour, at_once)
            case ("adjust again", k) if self.model.adjustments:
                await self._replay_adjustment(*self.model.adjustments[k % len(self.model.adjustments)])()
            case ("fail", k, at_once) if self.model.orders:
                await self.fail(k, at_once)
            case ("clock ends", k, state) if self.model.clocks:
                await self.clock_ends(k, state)
            case ("pay while failing", amount, k) if self.model.orders:
                await self.pay_while_failing(n, amount, k)
            case ("retry order while failing", k) if self.model.orders:
                await self.retry_order_while_failing(k)
            case ("limit", limit):
                await self.limit(limit)
            case _:
                return False
        return True

    # ----------------------------------------------------------------------- what must hold

    async def check(self, where: str) -> None:
        model, r = self.model, {"r": self.shop}
        async with self.engine.connect() as conn:
            limit, available = (
                await conn.execute(
                    text("SELECT credit_limit, available_credit FROM credit_accounts WHERE retailer_id = :r"), r
                )
            ).one()
            rows = (
                await conn.execute(
                    text(
                        "SELECT id, type, amount, cleared_amount, status, reference, order_id"
                        " FROM credit_transactions WHERE retailer_id = :r ORDER BY id"
                    ),
                    r,
                )
            ).all()
            audits = (
                await conn.execute(
                    text("SELECT action, reference, old_value, new_value FROM audit_log WHERE retailer_id = :r"), r
                )
            ).all()
            clock_rows = await conn.execute(CLOCKS, r)
            clocks = {row.order_id: row.status for row in clock_rows}
        debits = [row for row in rows if row.type == "DEBIT"]
        credits = [row for row in rows if row.type == "CREDIT"]
        owed = sum((d.amount - d.cleared_amount for d in debits), ZERO)
        unspent = sum((c.amount - c.cleared_amount for c in credits), ZERO)

        # Available credit: the limit minus what is owed, never above the limit.
        assert limit == model.limit, where
        assert available == limit - owed, f"available {available} != {limit} - {owed}: {where}"
        assert available <= limit, where
        # No money created or destroyed: the model's amounts, owed and balance never side by side.
        assert (owed, unspent) == (model.owed, model.balance), f"(owed, balance) {(owed, unspent)}: {where}"
        assert all(row.status == "CLEARED" for row in rows if row.amount == row.cleared_amount), where
        assert clocks == model.clocks, where

        # Every movement has its audit row, and every audit row of a movement has its movement.
        movements = Counter(_audit_of(row) for row in rows)
        audited = Counter(
            (a.action, a.reference)
            for a in audits
            if a.action
            in ("credit_order_placed", "debit_adjustment", "payment_recorded", "credit_adjustment", "order_failed")
        )
        assert audited == movements, f"audit rows {audited} != movements {movements}: {where}"
        assert Counter(a.action for a in audits)["credit_limits_changed"] == model.limit_changes, where
        by_ref = {(a.action, a.reference): a for a in audits}
        for row in rows:
            action, reference = _audit_of(row)
            if action in ("payment_recorded", "credit_adjustment", "debit_adjustment"):
                assert Decimal(str(by_ref[action, reference].new_value["amount"])) == row.amount, where

        # Each debit's cleared amount is what its audited allocations and its reversal say.
        allocated: dict[int, Decimal] = defaultdict(lambda: ZERO)
        for a in audits:
            if a.action in ("debit_cleared", "debit_partially_paid"):
                delta = Decimal(str(a.new_value["cleared_amount"])) - Decimal(str(a.old_value["cleared_amount"]))
                assert delta > 0, where
                allocated[a.new_value["debit_id"]] += delta
        failures = {a.reference: a.new_value for a in audits if a.action == "order_failed"}
        released = returned = ZERO
        for d in debits:
            reversal = failures.get(d.reference) if d.order_id is not None else None
            reversed_amount = Decimal(reversal["reversed_amount"]) if reversal else ZERO
            assert allocated[d.id] + reversed_amount == d.cleared_amount, f"debit {d.id}: {where}"
            released += reversed_amount
            returned += Decimal(reversal["returned_to_balance"]) if reversal else ZERO
        total_allocated = sum(allocated.values(), ZERO)
        # The sum of the movements balances: what the debits were cleared by is what the credits gave.
        assert sum((c.cleared_amount for c in credits), ZERO) == total_allocated + released, where
        # Credit balance = money received - money allocated + money released (a failed order's paid part).
        assert unspent == model.received - total_allocated + returned, where

    async def snapshot(self) -> tuple[Any, ...]:
        r = {"r": self.shop}
        async with self.engine.connect() as conn:
            return (
                (
                    await conn.execute(
                        text(
                            "SELECT id, type, amount, cleared_amount, status, reference, notes"
                            " FROM credit_transactions WHERE retailer_id = :r ORDER BY id"
                        ),
                        r,
                    )
                ).all(),
                (
                    await conn.execute(
                        text("SELECT credit_limit, available_credit FROM credit_accounts WHERE retailer_id = :r"), r
                    )
                ).all(),
                await conn.scalar(text("SELECT count(*) FROM audit_log WHERE retailer_id = :r"), r),
                (await conn.execute(text("SELECT id, status FROM orders WHERE retailer_id = :r ORDER BY id"), r)).all(),
                (
                    await conn.execute(
                        text("SELECT order_id, status FROM pending_orders WHERE retailer_id = :r ORDER BY order_id"), r
                    )
                ).all(),
            )


def _audit_of(row: Any) -> tuple[str, str]:
    """The audit row (action, reference) a ledger row's movement must have."""
    if row.type == "DEBIT":
        return ("credit_order_placed" if row.order_id is not None else "debit_adjustment", row.reference)
    if row.reference.startswith("order-failed:"):
        return "order_failed", f"order:{row.order_id}"
    return ("credit_adjustment" if row.reference.startswith("adjust:") else "payment_recorded", row.reference)


async def run_sequence(engine: AsyncEngine, sequence: list[tuple[Any, ...]], replay: int) -> None:
    shop, _ = await new_retailer(engine, limit=OPENING_LIMIT)
    run = Sequence(engine, shop)
    await run.check("opening")
    for n, step in enumerate(sequence):
        if await run.run(n, step):
            await run.check(f"after {step} (step {n} of {sequence})")
    # Replaying any prefix of what was written (same references, same order ids) changes nothing.
    writes = run.model.writes[: replay % (len(run.model.writes) + 1)]
    before = await run.snapshot()
    for _name, again in writes:
        await again()
    assert await run.snapshot() == before, f"replaying {[name for name, _ in writes]} of {sequence} changed the ledger"
    await run.check(f"after replaying {len(writes)} writes of {sequence}")


@ledger_settings(examples=45)
@given(sequence=sequences, replay=st.integers(min_value=0, max_value=64))
# Always run: an order on a clock partly paid, delivered twice at once; a payment twice at once; the
# limit lowered below what is owed; the clock ending, then the order failing after it; a charge twice
# at once that the credit balance clears; a late duplicate payment and adjustment; an order failing
# before its clock ended, twice at once; then the whole of it replayed.
@example(
    sequence=[
        ("order", Decimal("400"), True, True),
        ("pay", Decimal("50"), True),
        ("order", Decimal("90"), True, False),
        ("limit", Decimal("100")),
        ("clock ends", 0, "EXPIRED"),
        ("fail", 0, False),
        ("adjust", Decimal("30"), False, True),
        ("pay", Decimal("700"), False),
        ("pay again", 0),
        ("adjust again", 0),
        ("fail", 1, True),
        ("adjust", Decimal("25"), True, True),
        ("fail", 1, True),
    ],
    replay=64,
)
# Two different writes at once: a payment while a partly paid order fails, the placement of another
# retried while it fails, and of the failed one retried while its failure is delivered again.
@example(
    sequence=[
        ("order", Decimal("200"), False, False),
        ("order", Decimal("120"), True, False),
        ("pay", Decimal("50"), False),
        ("pay while failing", Decimal("30"), 0),
        ("retry order while failing", 1),
        ("retry order while failing", 0),
        ("order", Decimal("480"), False, True),
    ],
    replay=5,
)
async def test_every_sequence_of_money_writes_keeps_the_ledger_whole_and_replays_as_a_no_op(
    engine: AsyncEngine, sequence: list[tuple[Any, ...]], replay: int
) -> None:
    await run_sequence(engine, sequence, replay)


async def test_a_limit_lowered_below_todays_available_credit_is_taken(engine: AsyncEngine) -> None:
    """The limit and the available credit it implies change in one statement: the check
    available_credit <= credit_limit refused 250 beside yesterday's 400 (an IntegrityError, a 500)."""
    shop, _ = await new_retailer(engine, limit=OPENING_LIMIT)
    await place_order(engine, shop, next(ORDER_IDS), Decimal("100"), "CREDIT", today=TODAY)
    await admin.set_limits(engine, shop, {"credit_limit": Decimal("250")}, actor="prop")  # available 400 > 250
    run = Sequence(engine, shop)
    run.model.live[0], run.model.limit, run.model.limit_changes = Decimal("100"), Decimal("250"), 1
    await run.check("after lowering the limit to 250 with 100 owed")


async def test_a_placement_retried_while_its_order_fails_never_deadlocks(engine: AsyncEngine) -> None:
    """Found by the sequences: ("order", 100), then ("retry order while failing", 0). The failure
    locked the order, then the retailer; placing locks the retailer, then the order: PostgreSQL
    rolled one back as a deadlock in 17 races of 20. Both now take the retailer's lock first."""
    for _ in range(5):
        shop, _ = await new_retailer(engine, limit=OPENING_LIMIT)
        order_id = next(ORDER_IDS)
        await place_order(engine, shop, order_id, Decimal("100"), "CREDIT", today=TODAY)
        outcomes = await asyncio.gather(
            place_order(engine, shop, order_id, Decimal("100"), "CREDIT", today=TODAY),
            ActivityEnvironment().run(
                OrderActivities(engine).handle_order_failure, OrderFailure(order_id=order_id, reason="race")
            ),
            return_exceptions=True,
        )
        placed, failed = outcomes
        assert isinstance(failed, OrderFailureResult) and failed.changed, failed
        assert (isinstance(placed, PlacementRefused) and "FAILED" in str(placed)) or placed.duplicate, placed
        run = Sequence(engine, shop)
        run.model.failed.add(order_id)
        await run.check("after the race")
