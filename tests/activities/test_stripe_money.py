"""Every Stripe event that moves money reaches the credit ledger (issue #32, point 3), end to end on
real parts: the Stripe sandbox (its pay page, refunds, disputes and delayed payments send the signed
events), our webhook receiver with the credit family's handlers, a real PostgreSQL, the credit
workflows on the time-skipping server. Each test is a story told through Stripe's own objects;
after each, the books balance: available = limit - outstanding, the credit balance = its ledger."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import stripe
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.credit.admin import profile
from activities.credit.paylinks import open_pay_link
from activities.loyalty.ledger import apply_points_at_checkout
from activities.messaging.twilio_gateway import TwilioGateway
from activities.payments.gateway import StripeGateway
from config.settings import load_settings
from devtools.stripe_sandbox import StripeSandbox
from schemas.credit import GuardrailsResult, PaymentResult
from schemas.payments import CheckoutSessionRequest
from services import credit as credit_api
from tests.activities.test_credit import audit_actions, credit_workers, debit, new_debit, new_retailer, retailer
from tests.activities.test_webhooks import STRIPE_SECRET, TWILIO_TOKEN, stripe_signed
from tests.conftest import STRIPE_TEST_KEY
from tests.loyalty_factories import balance_and_ledger, new_customer, order_ref, order_rows
from workers.webhooks import create_app

TODAY = date.today()
EVENTS = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "payment_intent.succeeded",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
]


@dataclass
class Money:
    env: WorkflowEnvironment
    engine: AsyncEngine
    sandbox: StripeSandbox
    stripe_api: stripe.StripeClient
    gateway: StripeGateway
    http: aiohttp.ClientSession
    receiver: str

    async def checkout(self, retailer_id: int, amount: str) -> str:
        """A Checkout Session for the retailer (as its pay link makes them); its id."""
        session = await self.gateway.create_checkout_session(
            CheckoutSessionRequest(
                retailer_id=retailer_id,
                amount=Decimal(amount),
                currency="usd",
                idempotency_key=f"test-{uuid.uuid4().hex}",
            )
        )
        assert session.checkout_session_id
        return session.checkout_session_id

    async def pay_page(self, session_id: str, action: str = "pay") -> None:
        async with self.http.post(f"{self.sandbox.url}/pay/{session_id}", data={"action": action}) as paid:
            assert paid.status == 200, await paid.text()

    async def recorded(self, retailer_id: int, session_id: str) -> PaymentResult:
        handle = self.env.client.get_workflow_handle(f"payment/{retailer_id}/{session_id}", result_type=PaymentResult)
        return await handle.result()

    async def paid(self, retailer_id: int, amount: str) -> tuple[str, str]:
        """The retailer pays `amount` on the sandbox's page; the payment is recorded. (session, charge)"""
        session_id = await self.checkout(retailer_id, amount)
        await self.pay_page(session_id)
        await self.recorded(retailer_id, session_id)
        return session_id, await self.charge_of(session_id)

    async def charge_of(self, session_id: str) -> str:
        session = await self.stripe_api.v1.checkout.sessions.retrieve_async(session_id)
        intent = await self.gateway.payment_intent(str(session.payment_intent))
        assert intent.latest_charge
        return intent.latest_charge

    async def refund(self, charge_id: str, minor: int) -> None:
        """A refund at Stripe; the sandbox delivers `charge.refunded` before it answers."""
        await self.stripe_api.v1.refunds.create_async({"charge": charge_id, "amount": minor})

    async def control(self, path: str, body: dict) -> dict:
        async with self.http.post(f"{self.sandbox.url}{path}", json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def deliver(self, event_type: str, obj: dict) -> dict:
        """A signed event straight to our receiver, as Stripe delivers one again (late, or twice)."""
        event = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": event_type, "data": {"object": obj}}
        payload, headers = stripe_signed(event)
        async with self.http.post(self.receiver, data=payload, headers=headers) as answer:
            assert answer.status == 200, await answer.text()
            return await answer.json()

    async def guardrails_after(self, retailer_id: int, reference: str) -> GuardrailsResult:
        handle = self.env.client.get_workflow_handle(
            f"credit-guardrails/{retailer_id}/{reference}", result_type=GuardrailsResult
        )
        return await handle.result()


@asynccontextmanager
async def money_loop(
    env: WorkflowEnvironment,
    engine: AsyncEngine,
    twilio: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
    **settings_overrides: object,
) -> AsyncIterator[Money]:
    """The credit workers, and our webhook receiver registered at the sandbox for the money events."""
    async with credit_workers(env.client, engine, twilio, stripe_api, task_queue) as messaging:
        settings = load_settings(
            task_queue=task_queue,
            messaging_task_queue=messaging,
            business_timezone="UTC",
            stripe_secret_key=SecretStr(STRIPE_TEST_KEY),
            stripe_api_base=sandbox.url,
            **settings_overrides,
        )
        gateway = StripeGateway(stripe_api, engine)
        handlers = credit_api.stripe_handlers(env.client, settings, stripe=gateway, engine=engine)
        app = create_app(
            engine, stripe_webhook_secret=STRIPE_SECRET, twilio_auth_token=TWILIO_TOKEN, stripe_handlers=handlers
        )
        async with TestServer(app) as server, aiohttp.ClientSession() as http:
            receiver = str(server.make_url("/webhooks/stripe"))
            await sandbox.register_webhook(receiver, STRIPE_SECRET, events=EVENTS)
            yield Money(env, engine, sandbox, stripe_api, gateway, http, receiver)


async def one(engine: AsyncEngine, sql: str, **params: object):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).one()


async def assert_books_balance(engine: AsyncEngine, retailer_id: int) -> None:
    """available = limit - outstanding (never above the limit); credit balance = its ledger."""
    books = await one(
        engine,
        "SELECT ca.credit_limit, ca.available_credit,"
        " (SELECT COALESCE(sum(amount - cleared_amount), 0) FROM credit_transactions"
        "  WHERE retailer_id = :r AND type = 'DEBIT' AND status <> 'CLEARED') AS outstanding,"
        " (SELECT COALESCE(sum(amount - cleared_amount), 0) FROM credit_transactions"
        "  WHERE retailer_id = :r AND type = 'CREDIT') AS balance,"
        " (SELECT COALESCE(sum(c.amount), 0) - COALESCE((SELECT sum(amount) FROM credit_allocations"
        "   WHERE retailer_id = :r), 0) + COALESCE((SELECT sum(reopened_amount) FROM credit_allocations"
        "   WHERE retailer_id = :r), 0) - COALESCE((SELECT sum(amount) FROM payment_returns WHERE retailer_id = :r), 0)"
        "  FROM credit_transactions c WHERE c.retailer_id = :r AND c.type = 'CREDIT'"
        "  AND c.reference NOT LIKE 'order-failed:%') AS ledger"
        " FROM credit_accounts ca WHERE ca.retailer_id = :r",
        r=retailer_id,
    )
    assert books.available_credit == books.credit_limit - books.outstanding <= books.credit_limit
    assert books.balance == books.ledger, "the credit balance is not what its ledger says"


async def webhook_event(engine: AsyncEngine, event_type: str):
    """The latest processed_webhook_events row of that type."""
    return await one(
        engine,
        "SELECT status, error FROM processed_webhook_events WHERE event_type = :t ORDER BY received_at DESC LIMIT 1",
        t=event_type,
    )


async def credits_of(engine: AsyncEngine, retailer_id: int) -> list:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT * FROM credit_transactions WHERE retailer_id = :r AND type = 'CREDIT' ORDER BY id"),
            {"r": retailer_id},
        )
        return list(rows.all())


# --------------------------------------------------------------------------- checkout, delayed methods


async def test_a_bank_debit_is_pending_on_the_pay_link_then_its_failure_offers_a_new_session_that_pays_once(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    owed = await new_debit(engine, shop, "120.00", TODAY + timedelta(days=10))
    token = f"tok{uuid.uuid4().hex}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO payment_links (retailer_id, token, url, fingerprint, amount, currency, debit_ids)"
                " VALUES (:r, :t, 'http://jobctl-api.test/pay/x', 'f', 120, 'usd', ARRAY[CAST(:d AS bigint)])"
            ),
            {"r": shop, "t": token, "d": owed},
        )
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        first = await open_pay_link(engine, money.gateway, token)
        assert first.state == "redirect" and first.url
        session_id = first.url.rsplit("/", 1)[1]
        await money.pay_page(session_id, action="delayed")  # completed, unpaid: processing
        assert await credits_of(engine, shop) == []
        assert (await webhook_event(engine, "checkout.session.completed")).status == "processed"
        assert (await open_pay_link(engine, money.gateway, token)).state == "pending"  # never a second session

        await money.control(f"/_sandbox/checkout/sessions/{session_id}/async_payment", {"outcome": "failed"})
        assert (await webhook_event(engine, "checkout.session.async_payment_failed")).status == "processed"
        assert await credits_of(engine, shop) == []
        again = await open_pay_link(engine, money.gateway, token)
        assert again.state == "redirect" and again.created and again.url and session_id not in again.url
        second = again.url.rsplit("/", 1)[1]
        await money.pay_page(second)
        result = await money.recorded(shop, second)

    assert result.payment.amount == Decimal("120.00") and not result.payment.duplicate
    assert (await debit(engine, owed)).status == "CLEARED"
    assert [c.reference for c in await credits_of(engine, shop)] == [second]
    await assert_books_balance(engine, shop)


async def test_a_bank_debit_that_succeeds_records_once_even_when_its_completed_event_is_replayed_late(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    owed = await new_debit(engine, shop, "75.00", TODAY + timedelta(days=10))
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        session_id = await money.checkout(shop, "75.00")
        await money.pay_page(session_id, action="delayed")
        completed_unpaid = (await stripe_api.v1.checkout.sessions.retrieve_async(session_id)).to_dict()
        await money.control(f"/_sandbox/checkout/sessions/{session_id}/async_payment", {"outcome": "succeeded"})
        result = await money.recorded(shop, session_id)
        # Stripe delivers the old completed (unpaid) event again, late: it is re-read, and the
        # session's payment is the one recorded, under the same reference.
        await money.deliver("checkout.session.completed", completed_unpaid)
        again = await money.recorded(shop, session_id)

    assert result.payment.amount == Decimal("75.00")
    assert again.payment.credit_transaction_id == result.payment.credit_transaction_id
    (credit,) = await credits_of(engine, shop)
    assert credit.stripe_payment_intent_id == completed_unpaid["payment_intent"]
    assert (await debit(engine, owed)).status == "CLEARED"
    await assert_books_balance(engine, shop)


# --------------------------------------------------------------------------- refunds


async def test_two_partial_refunds_reopen_the_most_recently_cleared_debit_first_and_a_late_event_books_nothing(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    oldest = await new_debit(engine, shop, "100.00", TODAY + timedelta(days=5))
    newer = await new_debit(engine, shop, "50.00", TODAY + timedelta(days=9))
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        _, charge = await money.paid(shop, "150.00")
        assert await one(engine, "SELECT available_credit FROM credit_accounts WHERE retailer_id = :r", r=shop) == (
            Decimal("1000.00"),
        )
        await money.refund(charge, 3000)
        first_event = await stripe_api.v1.charges.retrieve_async(charge)
        assert (await debit(engine, newer)).cleared_amount == Decimal("20.00")  # the newer allocation goes first
        assert (await debit(engine, oldest)).status == "CLEARED"
        await money.refund(charge, 4000)  # 70.00 refunded in all: 40.00 more
        await money.guardrails_after(shop, f"refund:{charge}:70.00")

        # The first refund's event delivered again, late (its charge said 30.00): Stripe now says
        # 70.00, all booked already, so nothing moves.
        late = await money.deliver("charge.refunded", {**first_event.to_dict(), "amount_refunded": 3000})
        assert not late.get("failed")

    assert ((await debit(engine, newer)).status, (await debit(engine, newer)).cleared_amount) == ("OPEN", Decimal("0"))
    assert ((await debit(engine, oldest)).status, (await debit(engine, oldest)).cleared_amount) == (
        "PARTIALLY_PAID",
        Decimal("80.00"),
    )
    (credit,) = await credits_of(engine, shop)
    assert credit.refunded_amount == Decimal("70.00")
    async with engine.connect() as conn:
        returns = (
            await conn.execute(
                text("SELECT reference, amount, reopened FROM payment_returns WHERE retailer_id = :r ORDER BY id"),
                {"r": shop},
            )
        ).all()
    assert [(r.reference, r.amount) for r in returns] == [
        (f"refund:{charge}:30.00", Decimal("30.00")),
        (f"refund:{charge}:70.00", Decimal("40.00")),
    ]
    assert (await one(engine, "SELECT available_credit FROM credit_accounts WHERE retailer_id = :r", r=shop))[
        0
    ] == Decimal("930.00")
    actions = [a for a, _ in await audit_actions(engine, shop)]
    assert actions.count("payment_refunded") == 2 and actions.count("debit_reopened") == 3
    await assert_books_balance(engine, shop)


async def test_a_refund_reopens_the_latest_due_debit_first_whatever_order_the_debits_were_written_in(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    """One payment clears three debits in one allocation; a refund reopens the latest due first and
    the oldest last, also after an earlier refund rewrote the debits' rows (by allocation id
    alone, the order was RETURNING's: on the dev stack a lost dispute reopened the oldest first)."""
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    latest = await new_debit(engine, shop, "30.00", TODAY + timedelta(days=20))
    middle = await new_debit(engine, shop, "30.00", TODAY + timedelta(days=10))
    oldest = await new_debit(engine, shop, "30.00", TODAY - timedelta(days=3))
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        _, first = await money.paid(shop, "90.00")
        await money.refund(first, 2000)  # the debits' rows rewritten, in reopening order
        await money.refund(first, 7000)  # 90.00 in all
        await money.guardrails_after(shop, f"refund:{first}:90.00")
        _, charge = await money.paid(shop, "90.00")
        await money.refund(charge, 4500)
        await money.guardrails_after(shop, f"refund:{charge}:45.00")
    assert [((await debit(engine, d)).cleared_amount) for d in (latest, middle, oldest)] == [
        Decimal("0.00"),
        Decimal("15.00"),
        Decimal("30.00"),
    ]
    await assert_books_balance(engine, shop)


async def test_a_refund_of_a_payment_still_unspent_comes_off_the_credit_balance_and_reopens_nothing(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("500"))
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        _, charge = await money.paid(shop, "100.00")  # nothing owed: all of it is credit balance
        await money.refund(charge, 6000)
        await money.guardrails_after(shop, f"refund:{charge}:60.00")
    (credit,) = await credits_of(engine, shop)
    assert (credit.amount - credit.cleared_amount, credit.refunded_amount) == (Decimal("40.00"), Decimal("60.00"))
    returned = await one(
        engine, "SELECT from_balance, reopened, owed_again FROM payment_returns WHERE credit_id = :c", c=credit.id
    )
    assert tuple(returned) == (Decimal("60.00"), Decimal("0"), Decimal("0"))
    await assert_books_balance(engine, shop)


async def test_a_refund_larger_than_the_payment_is_refused_once_and_changes_nothing(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("500"))
    owed = await new_debit(engine, shop, "80.00", TODAY + timedelta(days=3))
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        _, charge = await money.paid(shop, "80.00")
        before = await audit_actions(engine, shop)
        await money.refund(charge, 9000)  # localstripe lets it through; Stripe's word is 90.00 of 80.00
    event = await webhook_event(engine, "charge.refunded")
    assert event.status == "failed" and "more than payment" in event.error
    assert (await debit(engine, owed)).status == "CLEARED"
    (credit,) = await credits_of(engine, shop)
    assert credit.refunded_amount == Decimal("0")
    assert await audit_actions(engine, shop) == before
    await assert_books_balance(engine, shop)


async def test_a_refund_of_a_charge_jobctl_never_recorded_is_refused_and_books_nothing(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        stranger = await stripe_api.v1.payment_intents.create_async(
            {"amount": 2500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
        )
        charge = await money.gateway.payment_intent(stranger.id)
        assert charge.latest_charge
        returns_before = await one(engine, "SELECT count(*) FROM payment_returns")
        await money.refund(charge.latest_charge, 2500)
        event = await webhook_event(engine, "charge.refunded")
        assert event.status == "failed" and "no payment or loyalty order jobctl knows" in event.error
        forged = await money.deliver("charge.refunded", {"id": "ch_never_made_by_stripe", "object": "charge"})
    assert forged["failed"]  # recorded as failed, answered 2xx: Stripe stops retrying
    assert "unknown at Stripe" in (await webhook_event(engine, "charge.refunded")).error
    assert await one(engine, "SELECT count(*) FROM payment_returns") == returns_before


async def test_a_refund_that_reopens_an_overdue_debit_pauses_the_retailer_again(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    overdue = await new_debit(engine, shop, "200.00", TODAY - timedelta(days=45))  # past the 30-day limit
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        _, charge = await money.paid(shop, "200.00")
        assert (await retailer(engine, shop)).credit_status == "ACTIVE"
        await money.refund(charge, 20000)
        checked = await money.guardrails_after(shop, f"refund:{charge}:200.00")
    assert checked.paused == [shop]
    assert ((await retailer(engine, shop)).credit_status, (await retailer(engine, shop)).paused_by) == (
        "PAUSED",
        "system",
    )
    assert (await debit(engine, overdue)).status == "OPEN"
    assert ("credit_paused", "system") in await audit_actions(engine, shop)
    await assert_books_balance(engine, shop)


async def test_a_fully_refunded_loyalty_order_gives_back_the_points_it_earned(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    customer = await new_customer(engine, 100)
    order = order_ref()
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        intent = await stripe_api.v1.payment_intents.create_async(
            {
                "amount": 4000,
                "currency": "usd",
                "payment_method": "pm_card_visa",
                "confirm": True,
                "metadata": {"loyalty_customer_id": str(customer), "loyalty_order_id": order},
            }
        )
        await apply_points_at_checkout(engine, customer, order, 0, Decimal("40"))  # earns 40: 140
        charge = (await money.gateway.payment_intent(intent.id)).latest_charge
        assert charge
        await money.refund(charge, 1000)  # partial: the points stay
        assert await balance_and_ledger(engine, customer) == (140, 140)
        await money.refund(charge, 3000)  # now fully refunded
    assert [r[0] for r in await order_rows(engine, order)] == ["earned", "reversed"]
    assert await balance_and_ledger(engine, customer) == (100, 100)
    assert (await webhook_event(engine, "charge.refunded")).status == "processed"


# --------------------------------------------------------------------------- disputes


async def test_a_dispute_flags_the_payment_and_pauses_the_retailer_and_winning_it_clears_the_flag(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    owed = await new_debit(engine, shop, "60.00", TODAY + timedelta(days=4))
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        _, charge = await money.paid(shop, "60.00")
        dispute = await money.control(f"/_sandbox/charges/{charge}/dispute", {})
        (flagged,) = await credits_of(engine, shop)
        assert (flagged.disputed_at is not None, flagged.dispute_id) == (True, dispute["id"])
        assert ((await retailer(engine, shop)).credit_status, (await retailer(engine, shop)).paused_by) == (
            "PAUSED",
            "stripe-dispute",
        )
        shown = (await profile(engine, shop, TODAY))["stripe_payments"]
        assert [(p["disputed"], p["dispute_id"]) for p in shown] == [(True, dispute["id"])]
        created = (await stripe_api.v1.disputes.retrieve_async(dispute["id"])).to_dict()
        await money.control(f"/_sandbox/disputes/{dispute['id']}/close", {"outcome": "won"})
        await money.deliver("charge.dispute.created", created)  # late: Stripe now says won
    (credit,) = await credits_of(engine, shop)
    assert (credit.disputed_at, credit.refunded_amount) == (None, Decimal("0"))
    assert (await debit(engine, owed)).status == "CLEARED"
    actions = [a for a, _ in await audit_actions(engine, shop)]
    assert actions.count("payment_disputed") == 1 and actions.count("payment_dispute_closed") == 1
    assert (await retailer(engine, shop)).credit_status == "PAUSED"  # a person lifts a dispute's pause
    await assert_books_balance(engine, shop)


async def test_a_lost_dispute_gives_the_disputed_amount_back_like_a_refund_and_its_replay_books_nothing(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    owed = await new_debit(engine, shop, "90.00", TODAY + timedelta(days=4))
    async with money_loop(
        time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue, pause_on_dispute=False
    ) as money:
        session_id, charge = await money.paid(shop, "90.00")
        intent = (await stripe_api.v1.checkout.sessions.retrieve_async(session_id)).payment_intent
        dispute = await money.control(f"/_sandbox/charges/{intent}/dispute", {"amount": 9000})  # the intent's charge
        assert dispute["charge"] == charge
        assert (await retailer(engine, shop)).credit_status == "ACTIVE"  # PAUSE_ON_DISPUTE=false
        closed = await money.control(f"/_sandbox/disputes/{dispute['id']}/close", {"outcome": "lost"})
        await money.guardrails_after(shop, f"dispute_lost:{dispute['id']}:90.00")
        await money.deliver("charge.dispute.closed", closed)  # Stripe delivers it again
        await money.deliver("charge.dispute.created", {**closed, "status": "needs_response"})  # and the old one, late
    (credit,) = await credits_of(engine, shop)
    assert (credit.disputed_at, credit.refunded_amount) == (None, Decimal("90.00"))
    assert ((await debit(engine, owed)).status, (await debit(engine, owed)).cleared_amount) == ("OPEN", Decimal("0"))
    assert await one(engine, "SELECT count(*) FROM payment_returns WHERE retailer_id = :r", r=shop) == (1,)
    assert [a for a, _ in await audit_actions(engine, shop)].count("payment_dispute_lost") == 1
    (shown,) = (await profile(engine, shop, TODAY))["stripe_payments"]
    assert (shown["refunded_amount"], shown["disputed"]) == (Decimal("90.00"), False)
    await assert_books_balance(engine, shop)


# --------------------------------------------------------------------------- pay links' PaymentIntents


async def test_a_pay_link_intent_jobctl_did_not_make_or_in_another_currency_records_nothing(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    shop, _ = await new_retailer(engine, limit=Decimal("1000"))
    async with money_loop(time_skipping_env, engine, gateway, sandbox, stripe_api, task_queue) as money:
        customer = await money.gateway.ensure_customer("retailer", shop)
        ours = {"retailer_id": str(shop), "payment_link_key": f"test-{uuid.uuid4().hex}"}
        answers = []
        cases: list[dict[str, Any]] = [
            {"currency": "eur", "customer": customer.stripe_customer_id, "metadata": ours},  # another currency
            {"currency": "usd", "metadata": ours},  # not the retailer's customer
            {"currency": "usd", "customer": customer.stripe_customer_id, "metadata": {"retailer_id": str(shop)}},
        ]
        for params in cases:
            create: Any = {"amount": 5000, "payment_method": "pm_card_visa", "confirm": True, **params}
            intent = await stripe_api.v1.payment_intents.create_async(create)
            answers.append(await money.deliver("payment_intent.succeeded", intent.to_dict()))
    assert [a.get("failed") for a in answers] == [True, True, True]
    assert await credits_of(engine, shop) == []
