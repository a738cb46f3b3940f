"""The money loop end to end on the dev server: a reminder's link (jobctl's `/pay/{token}`, served
by the real API app) is opened, redirects to the Stripe sandbox's page and is paid there; the
signed `checkout.session.completed` reaches our webhook receiver, and the debits clear, the system
pause lifts and `credit_resumed` reaches the Twilio emulator. Links are the same URL while the
debits are unchanged (one session, however often opened) and replaced (the old one says so, its
session expired) when they change; a restarted, persisted sandbox and a customer deleted at
Stripe cost no reminder."""

from __future__ import annotations

import re
import uuid
from datetime import date, timedelta
from pathlib import Path

import aiohttp
import httpx
from aiohttp.test_utils import TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.messaging.twilio_gateway import TwilioGateway
from activities.payments.client import close_stripe_client, stripe_client
from activities.payments.gateway import StripeGateway
from config.settings import load_settings
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas.credit import GuardrailsRequest, PaymentResult
from services import credit as credit_api
from tests.activities.test_credit import (
    PAY_BASE,
    audit_actions,
    credit_workers,
    debit,
    new_debit,
    new_retailer,
    pay_api,
    remind,
    retailer,
    sent_to,
)
from tests.activities.test_webhooks import STRIPE_SECRET, TWILIO_TOKEN
from tests.conftest import STRIPE_TEST_KEY
from workers.webhooks import create_app
from workflows.credit import CreditGuardrailsWorkflow

DAY = date.today() + timedelta(days=700)
LINK = re.compile(re.escape(PAY_BASE) + r"/pay/[A-Za-z0-9_\-]+")


def links_in(messages: list[dict]) -> list[str]:
    return [m for msg in messages for m in LINK.findall(msg["body"])]


async def checkout_of(api: httpx.AsyncClient, link: str) -> str:
    """Open the reminder's link: our API answers 303 to Stripe's Checkout page."""
    opened = await api.get(link)
    assert opened.status_code == 303, opened.text
    return opened.headers["location"]


async def open_and_pay(api: httpx.AsyncClient, link: str, form: dict[str, str] | None = None) -> tuple[str, int]:
    """What a person does: open the link, press the page's button. (The Checkout URL, the answer's status.)"""
    checkout = await checkout_of(api, link)
    async with aiohttp.ClientSession() as http:
        async with http.get(checkout) as page:
            assert page.status == 200 and ">Pay<" in await page.text()
        async with http.post(checkout, data=form or {"action": "pay"}) as paid:
            return checkout, paid.status


async def sessions_of(client, customer: str) -> list:
    return (await client.v1.checkout.sessions.list_async({"customer": customer, "limit": 100})).data


async def stored_customer(engine: AsyncEngine, retailer_id: int) -> str:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT stripe_customer_id FROM retailers WHERE id = :r"), {"r": retailer_id})


async def test_a_reminder_link_is_paid_and_the_loop_closes(
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
    tmp_path: Path,
) -> None:
    env = dev_env
    settings = load_settings(task_queue=task_queue, business_timezone="UTC")
    sandbox = await StripeSandbox(data_dir=tmp_path / "stripe").start()
    port = int(sandbox.url.rsplit(":", 1)[1])
    stripe_api = stripe_client(STRIPE_TEST_KEY, sandbox.url, timeout_s=10)
    try:
        # The paused retailer: a debit 21 days overdue (its limit is 20), another 7 days overdue.
        shop, phone = await new_retailer(engine)
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE credit_accounts SET max_outstanding_days = 20 WHERE retailer_id = :r"), {"r": shop}
            )
        oldest = await new_debit(engine, shop, "120.00", DAY - timedelta(days=21))
        newer = await new_debit(engine, shop, "30.50", DAY - timedelta(days=7))
        # The retailer whose link is reused, then replaced.
        steady, steady_phone = await new_retailer(engine)
        await new_debit(engine, steady, "45.00", DAY)

        async with credit_workers(env.client, engine, gateway, stripe_api, task_queue) as messaging:
            handlers = credit_api.stripe_handlers(
                env.client,
                settings.model_copy(update={"messaging_task_queue": messaging}),
                stripe=StripeGateway(stripe_api, engine),
            )
            app = create_app(
                engine, stripe_webhook_secret=STRIPE_SECRET, twilio_auth_token=TWILIO_TOKEN, stripe_handlers=handlers
            )
            async with TestServer(app) as receiver:
                await sandbox.register_webhook(str(receiver.make_url("/webhooks/stripe")), STRIPE_SECRET)
                paused = await env.client.execute_workflow(
                    CreditGuardrailsWorkflow.run,
                    GuardrailsRequest(check_date=DAY, messaging_task_queue=messaging),
                    id=f"credit-guardrails/{DAY}-{uuid.uuid4().hex[:6]}",
                    task_queue=task_queue,
                )
                assert shop in paused.paused

                day0 = await remind(env, task_queue, messaging, DAY)
                assert day0.failed == {}
                (link,) = links_in(await sent_to(emulator, phone))
                async with pay_api(engine, env.client, sandbox.url) as api:
                    checkout, status = await open_and_pay(api, link)
                    assert status == 200  # the signed event was delivered before the page answered
                    session_id = checkout.rsplit("/", 1)[1]
                    handle = env.client.get_workflow_handle(f"payment/{shop}/{session_id}", result_type=PaymentResult)
                    result = await handle.result()

                    assert [a.debit_id for a in result.payment.allocations] == [oldest, newer]
                    assert (await debit(engine, oldest)).status == (await debit(engine, newer)).status == "CLEARED"
                    assert (
                        result.guardrails.resumed == [shop] and (await retailer(engine, shop)).credit_status == "ACTIVE"
                    )
                    assert sum("credit line is open again" in m["body"] for m in await sent_to(emulator, phone)) == 1
                    actions = await audit_actions(engine, shop)
                    assert ("payment_recorded", "stripe") in actions and ("credit_resumed", "system") in actions
                    assert actions.count(("debit_cleared", "stripe")) == 2
                    async with aiohttp.ClientSession() as http:
                        async with http.post(checkout, data={"action": "pay"}) as again:
                            assert again.status == 409  # a session pays once
                    paid = await api.get(link)  # and the link says it was paid
                    assert (paid.status_code, paid.json()["state"]) == (200, "paid")
                    assert "Already paid" in (await api.get(link, headers={"Accept": "text/html"})).text

                    # Two reminder days without a change: one link; opened on both, one Stripe session.
                    (first,) = links_in(await sent_to(emulator, steady_phone))
                    first_checkout = await checkout_of(api, first)
                    await remind(env, task_queue, messaging, DAY + timedelta(days=1))
                    _, second = links_in(await sent_to(emulator, steady_phone))
                    assert first == second and await checkout_of(api, second) == first_checkout
                    customer = await stored_customer(engine, steady)
                    assert len(await sessions_of(stripe_api, customer)) == 1
                    # A new debit between them: the old link says it was replaced and its session is
                    # expired (paying it is refused); the new link gets a new session.
                    await new_debit(engine, steady, "15.00", DAY + timedelta(days=3))
                    await remind(env, task_queue, messaging, DAY + timedelta(days=3))
                    *_, third = links_in(await sent_to(emulator, steady_phone))
                    assert third != first
                    assert (await api.get(first)).status_code == 410
                    async with aiohttp.ClientSession() as http:
                        async with http.post(first_checkout, data={"action": "pay"}) as refused:
                            assert refused.status == 410
                    assert await checkout_of(api, third) != first_checkout
                    statuses = sorted(s.status for s in await sessions_of(stripe_api, customer))
                    assert statuses == ["expired", "open"]

        # Restart the sandbox (persisted): the stored customers and links are still there.
        await close_stripe_client(stripe_api)
        await sandbox.stop()
        sandbox = await StripeSandbox(data_dir=tmp_path / "stripe").start(port=port)
        stripe_api = stripe_client(STRIPE_TEST_KEY, sandbox.url, timeout_s=10)
        await new_debit(engine, steady, "5.00", DAY + timedelta(days=7))
        lost, lost_phone = await new_retailer(engine)
        await new_debit(engine, lost, "9.99", DAY + timedelta(days=7))
        async with credit_workers(env.client, engine, gateway, stripe_api, task_queue) as messaging:
            after_restart = await remind(env, task_queue, messaging, DAY + timedelta(days=7))
            assert after_restart.failed == {} and after_restart.sent >= 2
            async with pay_api(engine, env.client, sandbox.url) as api:
                (lost_link,) = links_in(await sent_to(emulator, lost_phone))
                await checkout_of(api, lost_link)  # its customer is made on this first click
                # A customer deleted at Stripe: the next session re-creates it, once.
                stale = await stored_customer(engine, lost)
                await stripe_api.v1.customers.delete_async(stale)
                await new_debit(engine, lost, "1.01", DAY + timedelta(days=10))
                relinked = await remind(env, task_queue, messaging, DAY + timedelta(days=10))
                assert relinked.failed == {}
                _, new_link = links_in(await sent_to(emulator, lost_phone))
                await checkout_of(api, new_link)
        fresh = await stored_customer(engine, lost)
        assert fresh != stale
        owners = [
            c
            for c in (await stripe_api.v1.customers.list_async({"limit": 100})).data
            if c.metadata.to_dict().get("owner_id") == str(lost)
        ]
        assert [c.id for c in owners] == [fresh]
    finally:
        await close_stripe_client(stripe_api)
        await sandbox.stop()
