"""The money loop's database side: credit orders under the seed's rules, the credit balance,
payments keyed per retailer, late order failures and the admin's credit tools (CLI). Real
PostgreSQL, a real Temporal test server, the real CLI processes."""

from __future__ import annotations

import asyncio
import json
from datetime import date, timedelta
from decimal import Decimal

import pytest
import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.credit.admin import change_status
from activities.credit.guardrails import PlacementRefused
from activities.messaging.twilio_gateway import TwilioGateway
from devtools.twilio_emulator import TwilioEmulator
from services import credit as credit_api
from services.orders import complete_order, fail_order
from tests.activities.test_credit import credit_workers, debit, new_debit, new_retailer, pay
from tests.activities.test_credit_cli import _counts
from tests.activities.test_orders import new_order, order_workers, result_of, sent_to, start
from tests.unit.test_cli_input import jobctl

TODAY = date.today()


async def order_debits(engine: AsyncEngine, order_id: int) -> list:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT * FROM credit_transactions WHERE order_id = :o ORDER BY id"), {"o": order_id}
            )
        ).all()


async def available(engine: AsyncEngine, retailer_id: int) -> Decimal:
    async with engine.connect() as conn:
        return await conn.scalar(
            text("SELECT available_credit FROM credit_accounts WHERE retailer_id = :r"), {"r": retailer_id}
        )


async def next_order_id(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(text("SELECT COALESCE(max(id), 0) + 1000 + floor(random() * 100000)::int FROM orders"))
        )


# --------------------------------------------------------------------------- credit orders


async def test_credit_orders_follow_the_seed_rules_and_write_one_debit(engine: AsyncEngine) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE credit_accounts SET max_order_value = 600 WHERE retailer_id = :r"), {"r": shop})

    with pytest.raises(PlacementRefused, match=r"exceeds the maximum order value of \$600\.00"):
        await credit_api.place_order(engine, shop, await next_order_id(engine), Decimal("700"), "CREDIT", today=TODAY)
    order = await next_order_id(engine)
    placed = await credit_api.place_order(engine, shop, order, Decimal("550"), "CREDIT", today=TODAY)
    retried = await credit_api.place_order(engine, shop, order, Decimal("550"), "CREDIT", today=TODAY)
    assert (placed.due_date, placed.available_credit, placed.duplicate) == (
        TODAY + timedelta(days=30),
        Decimal("450"),
        False,
    )
    assert retried.duplicate and retried.debit_id == placed.debit_id
    assert [(d.type, d.amount, d.status) for d in await order_debits(engine, order)] == [
        ("DEBIT", Decimal("550.00"), "OPEN")
    ]
    assert await available(engine, shop) == Decimal("450")
    with pytest.raises(PlacementRefused, match=r"exceeds the available credit of \$450\.00"):
        await credit_api.place_order(engine, shop, await next_order_id(engine), Decimal("500"), "CREDIT", today=TODAY)

    await change_status(engine, shop, "pause", reason="test", actor="admin-1")
    with pytest.raises(PlacementRefused, match="credit is paused: pay cash on delivery"):
        await credit_api.place_order(engine, shop, await next_order_id(engine), Decimal("10"), "CREDIT", today=TODAY)
    cod = await next_order_id(engine)
    cash = await credit_api.place_order(engine, shop, cod, Decimal("80"), "COD", today=TODAY)
    assert cash.debit_id is None and await order_debits(engine, cod) == []
    assert await available(engine, shop) == Decimal("450")


async def test_paying_twice_leaves_a_credit_balance_that_clears_the_next_debit(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
    database_url: str,
) -> None:
    env = time_skipping_env
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    owed = await new_debit(engine, shop, "100.00", TODAY + timedelta(days=5))
    async with credit_workers(env.client, engine, gateway, stripe_api, task_queue) as messaging:
        first = await pay(env, task_queue, messaging, shop, "100.00", reference="stripe-cs-one")
        second = await pay(env, task_queue, messaging, shop, "100.00", reference="bank-transfer-two")
    assert (first.payment.unallocated, second.payment.unallocated) == (Decimal("0"), Decimal("100.00"))
    assert (await debit(engine, owed)).status == "CLEARED"
    assert await available(engine, shop) == Decimal("1000.00")  # limit minus outstanding; the 100 ahead is the balance

    profile = json.loads(jobctl("credit", "profile", str(shop), "--json", DATABASE_URL=database_url).stdout)
    assert Decimal(str(profile["credit_balance"])) == Decimal("100.00")
    assert "credit balance $100.00" in jobctl("credit", "profile", str(shop), DATABASE_URL=database_url).stdout

    order = await next_order_id(engine)
    placed = await credit_api.place_order(engine, shop, order, Decimal("130"), "CREDIT", today=TODAY)
    assert placed.cleared_from_balance == Decimal("100.00")
    (row,) = await order_debits(engine, order)
    assert (row.status, row.cleared_amount) == ("PARTIALLY_PAID", Decimal("100.00"))
    assert await available(engine, shop) == Decimal("970.00")
    profile = json.loads(jobctl("credit", "profile", str(shop), "--json", DATABASE_URL=database_url).stdout)
    assert Decimal(str(profile["credit_balance"])) == Decimal("0")


async def test_a_reference_is_unique_per_retailer_not_across_retailers(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    ada, _ = await new_retailer(engine)
    bo, _ = await new_retailer(engine)
    ada_debit = await new_debit(engine, ada, "40.00", TODAY + timedelta(days=9))
    bo_debit = await new_debit(engine, bo, "40.00", TODAY + timedelta(days=9))
    async with credit_workers(env.client, engine, gateway, stripe_api, task_queue) as messaging:
        a1 = await pay(env, task_queue, messaging, ada, "40.00", reference="BANK-REF-777")
        a2 = await pay(env, task_queue, messaging, ada, "40.00", reference="BANK-REF-777")
        b1 = await pay(env, task_queue, messaging, bo, "40.00", reference="BANK-REF-777")
    assert not a1.payment.duplicate and a2.payment.credit_transaction_id == a1.payment.credit_transaction_id
    assert not b1.payment.duplicate and b1.payment.retailer_id == bo
    assert b1.payment.credit_transaction_id != a1.payment.credit_transaction_id
    assert (await debit(engine, ada_debit)).status == (await debit(engine, bo_debit)).status == "CLEARED"
    async with engine.connect() as conn:
        credits = await conn.scalar(
            text("SELECT count(*) FROM credit_transactions WHERE type = 'CREDIT' AND reference = 'BANK-REF-777'")
        )
    assert credits == 2


async def test_a_failure_after_the_clock_ended_reverses_the_debit_once_and_tells_the_retailer(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    order, shop, phone = await new_order(engine, on_credit=Decimal("250.00"))
    async with order_workers(env.client, engine, gateway, task_queue) as messaging:
        _, handle, _ = await start(env, engine, order, shop, task_queue, messaging)
        await complete_order(env.client, order)
        assert (await result_of(env, handle)).state == "COMPLETED"
        late = await fail_order(
            env.client, order, "delivery failed", task_queue=task_queue, messaging_task_queue=messaging
        )
        again = await fail_order(
            env.client, order, "delivery failed", task_queue=task_queue, messaging_task_queue=messaging
        )
        # fail_order answers once the reversal is applied; the run tells the retailer after that
        failure = env.client.get_workflow_handle(f"order-failure/{order}")
        await failure.result()
        await record_history(failure, "order_failure")
    assert late is not None and late.changed and late.reversed_amount == Decimal("250.00")
    assert again is not None and not again.changed
    rows = await order_debits(engine, order)
    assert [(r.type, r.status) for r in rows] == [("DEBIT", "CLEARED"), ("CREDIT", "CLEARED")]
    assert await available(engine, shop) == Decimal("1000.00")
    assert sum("order" in m["body"] for m in await sent_to(emulator, phone)) == 1


# --------------------------------------------------------------------------- admin tools


async def test_admin_limits_adjustments_and_taking_over_a_system_pause(
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
    database_url: str,
) -> None:
    shop, _ = await new_retailer(engine, status="PAUSED", paused_by="system", limit=Decimal("1000"))
    old = await new_debit(engine, shop, "300.00", TODAY - timedelta(days=40))
    newer = await new_debit(engine, shop, "200.00", TODAY - timedelta(days=2))
    env = {
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TASK_QUEUE": task_queue,
    }

    async with credit_workers(dev_env.client, engine, gateway, stripe_api, task_queue) as messaging:
        # Under a system pause the new limits re-check the guardrails: 40 days overdue is still past
        # 35, so the pause stands. In a thread: the workers run on this event loop.
        limits = await asyncio.to_thread(
            jobctl,
            "credit",
            "limits",
            str(shop),
            "--credit-limit",
            "2000",
            "--max-order-value",
            "750",
            "--max-outstanding-days",
            "35",
            "--actor",
            "admin-3",
            "--json",
            **env,
            MESSAGING_TASK_QUEUE=messaging,
        )
        assert limits.returncode == 0, limits.stderr
        assert json.loads(limits.stdout)["new"] == {
            "credit_limit": "2000",
            "max_order_value": "750",
            "max_outstanding_days": 35,
        }
        assert json.loads(limits.stdout)["credit_resumed"] is False
        async with engine.connect() as conn:
            account = (
                await conn.execute(text("SELECT * FROM credit_accounts WHERE retailer_id = :r"), {"r": shop})
            ).one()
        assert (account.credit_limit, account.max_order_value, account.max_outstanding_days) == (2000, 750, 35)
        assert account.available_credit == Decimal("1500.00")

        # An admin taking over the system's pause: no adjustment or payment lifts it now.
        taken = await asyncio.to_thread(
            jobctl,
            "credit",
            "pause",
            str(shop),
            "--reason",
            "under review",
            "--actor",
            "admin-4",
            **env,
            MESSAGING_TASK_QUEUE=messaging,
        )
        assert taken.returncode == 0, taken.stderr

    ret = jobctl(
        "credit",
        "adjust",
        str(shop),
        "--amount",
        "350",
        "--reason",
        "return of 3 crates",
        "--actor",
        "admin-3",
        "--reference",
        "RMA-1",
        DATABASE_URL=database_url,
    )
    assert ret.returncode == 0, ret.stderr
    assert (await debit(engine, old)).status == "CLEARED"
    assert ((await debit(engine, newer)).status, (await debit(engine, newer)).cleared_amount) == (
        "PARTIALLY_PAID",
        Decimal("50.00"),
    )
    twice = jobctl(
        "credit",
        "adjust",
        str(shop),
        "--amount",
        "350",
        "--reason",
        "return of 3 crates",
        "--actor",
        "admin-3",
        "--reference",
        "RMA-1",
        DATABASE_URL=database_url,
    )
    assert "already recorded" in twice.stdout
    before = date.today()  # the charge is due the day it is made: a run may cross midnight
    charge = jobctl(
        "credit",
        "adjust",
        str(shop),
        "--amount",
        "-25.50",
        "--reason",
        "dispute lost",
        "--actor",
        "admin-3",
        "--reference",
        "FEE-1",
        "--json",
        DATABASE_URL=database_url,
    )
    assert charge.returncode == 0, charge.stderr
    async with engine.connect() as conn:
        charged = (
            await conn.execute(
                text("SELECT amount, due_date FROM credit_transactions WHERE id = :i"),
                {"i": json.loads(charge.stdout)["transaction_id"]},
            )
        ).one()
    assert charged.amount == Decimal("25.50") and charged.due_date in {before, date.today()}

    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT credit_status, paused_by FROM retailers WHERE id = :r"), {"r": shop})
        ).one()
        actions = list(
            await conn.scalars(text("SELECT action FROM audit_log WHERE retailer_id = :r ORDER BY id"), {"r": shop})
        )
    assert tuple(row) == ("PAUSED", "admin-4")
    assert actions[:2] == ["credit_limits_changed", "credit_paused"]
    assert "credit_adjustment" in actions and actions[-1] == "debit_adjustment" and "credit_resumed" not in actions


async def test_an_adjustment_in_the_retailers_favour_lifts_a_system_pause_at_once(
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    stripe_api: stripe.StripeClient,
    task_queue: str,
    database_url: str,
) -> None:
    """`jobctl credit adjust R --amount +A` re-runs R's guardrails as a payment does: the pause
    lifts within the command, audited as the system's, and the retailer is told once."""
    shop, phone = await new_retailer(engine, status="PAUSED", paused_by="system", limit=Decimal("1000"))
    overdue = await new_debit(engine, shop, "300.00", TODAY - timedelta(days=40))  # past the 30-day limit
    await new_debit(engine, shop, "200.00", TODAY - timedelta(days=2))
    env = {
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TASK_QUEUE": task_queue,
    }
    async with credit_workers(dev_env.client, engine, gateway, stripe_api, task_queue) as messaging:
        args = (
            "credit",
            "adjust",
            str(shop),
            "--amount",
            "+300",
            "--reason",
            "returned 2 crates",
            "--actor",
            "admin-5",
            "--reference",
            "RMA-42",
        )
        # In a thread: the workers run on this event loop.
        first = await asyncio.to_thread(jobctl, *args, "--json", **env, MESSAGING_TASK_QUEUE=messaging)
        again = await asyncio.to_thread(jobctl, *args, **env, MESSAGING_TASK_QUEUE=messaging)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["credit_resumed"] is True
    assert again.returncode == 0 and "already recorded" in again.stdout, again.stderr
    assert (await debit(engine, overdue)).status == "CLEARED"
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT credit_status, paused_by FROM retailers WHERE id = :r"), {"r": shop})
        ).one()
        resumed = (
            await conn.execute(
                text(
                    "SELECT reference, performed_by FROM audit_log WHERE retailer_id = :r AND action = 'credit_resumed'"
                ),
                {"r": shop},
            )
        ).all()
    assert tuple(row) == ("ACTIVE", None)
    assert [tuple(r) for r in resumed] == [("adjust:RMA-42", "system")]
    assert sum("open again" in m["body"] for m in await sent_to(emulator, phone)) == 1


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["adjust", "{r}", "--amount", "0", "--reason", "x", "--actor", "a"], "--amount must be non-zero"),
        (
            ["adjust", "{r}", "--amount", "12", "--reason", " ", "--actor", "a"],
            "Invalid value for '--reason': must not be empty",
        ),
        (["adjust", "{r}", "--amount", "12", "--actor", "a"], "Missing option '--reason'"),
        (
            ["adjust", "999999", "--amount", "12", "--reason", "x", "--actor", "a", "--reference", "r-1"],
            "no retailer 999999",
        ),
        (["adjust", "{r}", "--amount", "12", "--reason", "x", "--actor", "a"], "--reference is required"),
        (["limits", "{r}", "--credit-limit", "-1", "--actor", "a"], "--credit-limit must be zero or more"),
        (["limits", "{r}", "--max-order-value", "0", "--actor", "a"], "--max-order-value must be positive"),
        (["limits", "{r}", "--max-outstanding-days", "-3", "--actor", "a"], "--max-outstanding-days must be 0 to 3650"),
        (["limits", "{r}", "--actor", "a"], "give at least one of"),
        (["limits", "999999", "--credit-limit", "5", "--actor", "a"], "no retailer 999999"),
        (["order", "{r}", "--amount", "-5", "--order", "77"], "--amount must be positive"),
        (["order", "{r}", "--amount", "5", "--order", "77", "--mode", "CHEQUE"], "--mode must be CREDIT or COD"),
        (["order", "999999", "--amount", "5", "--order", "77"], "no retailer 999999"),
        (["order", "{r}", "--amount", "60000", "--order", "77"], "exceeds the maximum order value"),
    ],
)
async def test_bad_credit_admin_input_is_one_line_exit_2_and_changes_nothing(
    engine: AsyncEngine, database_url: str, args: list[str], complaint: str
) -> None:
    shop, _ = await new_retailer(engine)
    before = await _counts(engine)
    result = jobctl("credit", *[a.replace("{r}", str(shop)) for a in args], DATABASE_URL=database_url)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert complaint in result.stderr
    assert await _counts(engine) == before
