"""Credit operations on the time-skipping server: a real PostgreSQL, the Stripe sandbox and the
Twilio emulator through the real SDKs. Each test works on its own business dates, far apart, so
the module's other retailers are never due on them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from decimal import Decimal

import aiohttp
import httpx
import pytest
import stripe
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.business_calendar import business_day
from activities.credit.admin import change_status
from activities.credit.guardrails import GuardrailActivities
from activities.credit.payments import PaymentRecordingActivities
from activities.credit.reminders import ReminderActivities
from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway
from activities.payments.gateway import StripeGateway
from config.settings import load_settings
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas.credit import (
    GuardrailsRequest,
    GuardrailsResult,
    PaymentResult,
    RecordPayment,
    ReminderPageRequest,
    RemindersRequest,
    RemindersSent,
    RemindersStatus,
)
from schemas.payments import CheckoutSessionRequest
from services import credit as credit_api
from tests.activities.test_webhooks import STRIPE_SECRET, TWILIO_TOKEN, stripe_signed
from tests.conftest import STRIPE_TEST_KEY
from workers import families
from workers.api.app import create_app as create_api
from workers.webhooks import create_app
from workflows.credit import CreditGuardrailsWorkflow, PaymentRemindersWorkflow
from workflows.messaging import MessageBatchWorkflow

SENDERS = Senders(whatsapp="whatsapp:+15005550006", sms="+15005550006")
CADENCE = (-3, 0, 1, 3, 7, 14, 21, 30)
FAR = date.today() + timedelta(days=400)  # business dates in the future: "today" already passed for none
PAY_BASE = "http://jobctl-api.test"  # PUBLIC_BASE_URL of these tests: `pay_api` serves it in process


@asynccontextmanager
async def credit_workers(
    client: Client, engine: AsyncEngine, gateway: TwilioGateway, stripe_api: stripe.StripeClient, task_queue: str
) -> AsyncIterator[str]:
    """The jobs worker (credit workflows and activities) and a messaging worker; yields the messaging queue."""
    reminders = ReminderActivities(engine, StripeGateway(stripe_api, engine), PAY_BASE)
    guardrails = GuardrailActivities(engine)
    payments = PaymentRecordingActivities(engine)
    sends = MessagingActivities(engine, gateway, SENDERS, SendPolicy(quiet_hours=QuietHours(0, 0)), per_second=500)
    async with (
        Worker(
            client,
            task_queue=task_queue,
            workflows=[*families.by_name("credit").workflows(), MessageBatchWorkflow],  # admins' notices
            activities=[
                reminders.reminder_page,
                reminders.mark_reminders_sent,
                guardrails.apply,
                payments.record,
                business_day,
            ],
        ),
        Worker(client, task_queue=f"{task_queue}-msg", activities=[sends.send_message, sends.send_messages]),
    ):
        yield f"{task_queue}-msg"


@asynccontextmanager
async def pay_api(engine: AsyncEngine, client: Client, sandbox_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API (the real ASGI app, its lifespan run: the API's one Stripe gateway) at PAY_BASE,
    with the module's Stripe sandbox: what opens a reminder's /pay/{token} link."""
    settings = load_settings(stripe_secret_key=SecretStr(STRIPE_TEST_KEY), stripe_api_base=sandbox_url)
    app = create_api(settings, engine, client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PAY_BASE, timeout=30) as http,
    ):
        yield http


def unique_phone() -> str:
    return "+1556" + str(uuid.uuid4().int)[:7]


async def new_retailer(
    engine: AsyncEngine,
    *,
    phone: str | None = "new",
    status: str = "ACTIVE",
    paused_by: str | None = None,
    limit: Decimal = Decimal("50000"),
) -> tuple[int, str | None]:
    phone = unique_phone() if phone == "new" else phone
    async with engine.begin() as conn:
        rid = await conn.scalar(
            text(
                "INSERT INTO retailers (name, phone, preferred_channel, credit_status, paused_by, credit_paused_at)"
                " VALUES ('Ada Stores', :phone, 'sms', :status, :by,"
                " CASE WHEN :status = 'ACTIVE' THEN NULL ELSE now() END)"
                " RETURNING id"
            ),
            {"phone": phone, "status": status, "by": paused_by},
        )
        await conn.execute(
            text("INSERT INTO credit_accounts (retailer_id, credit_limit, available_credit) VALUES (:r, :l, :l)"),
            {"r": rid, "l": limit},
        )
    return rid, phone


async def new_debit(engine: AsyncEngine, retailer_id: int, amount: str, due: date) -> int:
    async with engine.begin() as conn:
        return await conn.scalar(
            text(
                "INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference)"
                " VALUES (:r, 'DEBIT', :a, :d, :ref) RETURNING id"
            ),
            {"r": retailer_id, "a": Decimal(amount), "d": due, "ref": f"inv-{uuid.uuid4().hex[:8]}"},
        )


async def sent_to(emulator: TwilioEmulator, phone: str) -> list[dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/messages", params={"to": phone}) as response:
            return await response.json()


async def reminder_days(engine: AsyncEngine, retailer_id: int) -> list[date]:
    """The business days a reminder went out to the retailer (from the outbox's keys)."""
    async with engine.connect() as conn:
        keys = await conn.scalars(
            text(
                "SELECT idempotency_key FROM message_log WHERE recipient_id = :r AND template LIKE 'payment_reminder%'"
                " AND status = 'sent' ORDER BY idempotency_key"
            ),
            {"r": str(retailer_id)},
        )
        return [date.fromisoformat(k.rsplit(":", 1)[1]) for k in keys]


async def debit(engine: AsyncEngine, debit_id: int):
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT * FROM credit_transactions WHERE id = :i"), {"i": debit_id})).one()


async def retailer(engine: AsyncEngine, retailer_id: int):
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT * FROM retailers WHERE id = :i"), {"i": retailer_id})).one()


async def audit_actions(engine: AsyncEngine, retailer_id: int) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT action, performed_by FROM audit_log WHERE retailer_id = :r ORDER BY id"), {"r": retailer_id}
        )
        return [(row.action, row.performed_by) for row in rows]


async def remind(env: WorkflowEnvironment, task_queue: str, messaging: str, day: date) -> RemindersStatus:
    return await env.client.execute_workflow(
        PaymentRemindersWorkflow.run,
        RemindersRequest(reminder_date=day, messaging_task_queue=messaging, page_size=2),
        id=f"payment-reminders/{day}-{uuid.uuid4().hex[:6]}",
        task_queue=task_queue,
    )


async def pay(
    env: WorkflowEnvironment, task_queue: str, messaging: str, retailer_id: int, amount: str, **kw
) -> PaymentResult:
    payment = RecordPayment(
        retailer_id=retailer_id,
        amount=Decimal(amount),
        reference=kw.pop("reference", f"bank-{uuid.uuid4().hex[:10]}"),
        actor="admin-1",
        messaging_task_queue=messaging,
    )
    return await credit_api.record_payment(env.client, payment, task_queue=task_queue)


# --------------------------------------------------------------------------- reminders


async def test_a_debit_walks_its_whole_cadence_and_payment_stops_the_rest(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    due = FAR
    unpaid, unpaid_phone = await new_retailer(engine)
    payer, payer_phone = await new_retailer(engine)
    unpaid_debit = await new_debit(engine, unpaid, "300.00", due)
    payer_debit = await new_debit(engine, payer, "80.00", due)
    async with credit_workers(env.client, engine, gateway, stripe_api, task_queue) as messaging:
        for offset in range(-6, 36):
            day = due + timedelta(days=offset)
            await remind(env, task_queue, messaging, day)
            if offset == 2:
                await pay(env, task_queue, messaging, payer, "80.00")
        last = await remind(env, task_queue, messaging, due + timedelta(days=30))  # the same day again

    assert await reminder_days(engine, unpaid) == [due + timedelta(days=o) for o in CADENCE]
    assert len(await sent_to(emulator, unpaid_phone)) == 8
    async with engine.connect() as conn:  # one text per tone of the cadence (config/templates.toml)
        kinds = list(
            await conn.scalars(
                text("SELECT template FROM message_log WHERE recipient_id = :r ORDER BY idempotency_key"),
                {"r": str(unpaid)},
            )
        )
    tones = ["before_due", "due_today", "overdue", "overdue", "firm", "firm", "final", "final"]
    assert kinds == [f"payment_reminder_{tone}" for tone in tones]
    row = await debit(engine, unpaid_debit)
    assert row.reminder_count == 8 and row.reminder_sent_at is not None
    # Paid on day +2: reminders on -3, 0 and +1 only.
    assert await reminder_days(engine, payer) == [due + timedelta(days=o) for o in (-3, 0, 1)]
    assert len(await sent_to(emulator, payer_phone)) == 3
    assert (await debit(engine, payer_debit)).status == "CLEARED"
    assert last.sent == 0 and last.due == 0


async def test_three_due_debits_get_one_message_with_one_link_and_a_rerun_sends_none(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
    record_history,
    sandbox: StripeSandbox,
) -> None:
    env = time_skipping_env
    day = FAR + timedelta(days=100)
    shop, phone = await new_retailer(engine)
    for amount, offset in (("100.00", 1), ("50.50", 3), ("25.00", 7)):
        await new_debit(engine, shop, amount, day - timedelta(days=offset))
    blocked, blocked_phone = await new_retailer(engine, status="BLOCKED", paused_by="admin-9")
    await new_debit(engine, blocked, "10.00", day)
    no_phone, _ = await new_retailer(engine, phone=None)
    await new_debit(engine, no_phone, "10.00", day)
    opted_out, opted_phone = await new_retailer(engine)
    await new_debit(engine, opted_out, "10.00", day)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO recipient_opt_outs (recipient_type, recipient_id, channel) VALUES ('retailer', :r, 'sms')"
            ),
            {"r": str(opted_out)},
        )

    async with credit_workers(env.client, engine, gateway, stripe_api, task_queue) as messaging:
        handle = await env.client.start_workflow(
            PaymentRemindersWorkflow.run,
            RemindersRequest(reminder_date=day, messaging_task_queue=messaging),
            id=f"payment-reminders/{day}",
            task_queue=task_queue,
        )
        first = await handle.result()
        await record_history(handle, "credit_payment_reminders")
        again = await remind(env, task_queue, messaging, day)

    (message,) = await sent_to(emulator, phone)
    assert "3 invoice(s) totalling $175.50" in message["body"]
    assert message["body"].count(f"{PAY_BASE}/pay/") == 1
    link = message["body"].split(f"{PAY_BASE}/pay/", 1)[1].split()[0]
    async with pay_api(engine, env.client, sandbox.url) as http:
        opened = await http.get(f"/pay/{link}")  # the retailer clicks: only now is there a session
    assert opened.status_code == 303, opened.text
    session_id = opened.headers["location"].rsplit("/", 1)[1]
    session = await stripe_api.v1.checkout.sessions.retrieve_async(session_id)
    assert (session.amount_total, session.status, session.metadata["retailer_id"]) == (17550, "open", str(shop))
    items = await stripe_api.v1.checkout.sessions.line_items.list_async(session_id)
    assert sorted(i.amount_total for i in items.data) == [2500, 5050, 10000]  # one line per debit
    assert (first.due, first.sent, first.skipped) == (4, 1, {"blocked": 1, "no_phone": 1, "opted_out": 1})
    # The re-run: the reminded retailer is done for the day; the skipped ones are skipped again.
    assert (again.due, again.sent, again.duplicates, sum(again.skipped.values())) == (3, 0, 0, 3)
    assert await sent_to(emulator, blocked_phone) == [] and await sent_to(emulator, opted_phone) == []
    memo = await (await handle.describe()).memo()
    assert memo == {"reminders_sent": 1, "reminders_skipped": 3}


async def test_two_overlapping_attempts_of_a_first_page_give_each_retailer_one_link(engine: AsyncEngine) -> None:
    """A first cadence day writes every new link in one statement; an attempt that overlaps it
    (a retry after a timeout) sends the same URLs, never a second link."""
    day = FAR + timedelta(days=120)
    shops = [(await new_retailer(engine))[0] for _ in range(6)]
    for shop in shops:
        await new_debit(engine, shop, "40.00", day)
        await new_debit(engine, shop, "2.50", day - timedelta(days=1))
    reminders = ReminderActivities(engine, None, PAY_BASE)
    request = ReminderPageRequest(
        reminder_date=day, business_timezone="UTC", after_retailer_id=min(shops) - 1, page_size=len(shops)
    )

    first, second = await asyncio.gather(reminders.reminder_page(request), reminders.reminder_page(request))
    again = await reminders.reminder_page(request)

    def links(page) -> dict[str, str]:
        return {str(r.retailer_id): r.payment_link for r in page.due}

    assert sorted(int(r) for r in links(first)) == shops
    assert links(first) == links(second) == links(again)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT retailer_id, url, amount, debit_ids FROM payment_links WHERE retailer_id = ANY(:ids)"),
                {"ids": shops},
            )
        ).all()
    assert {str(r.retailer_id): r.url for r in rows} == links(first)
    assert {r.amount for r in rows} == {Decimal("42.50")} and all(len(r.debit_ids) == 2 for r in rows)


async def test_the_retailers_a_run_handed_on_are_read_again_only_while_still_due_and_not_yet_reminded(
    engine: AsyncEngine,
) -> None:
    """The next run of a day that continued as new reads the retailers handed to it: the one whose
    reminder went out meanwhile (marked) and the one that paid are not read again."""
    day = FAR + timedelta(days=130)
    waiting, reminded, paid, other = [(await new_retailer(engine))[0] for _ in range(4)]
    debits = {shop: await new_debit(engine, shop, "30.00", day) for shop in (waiting, reminded, paid, other)}
    reminders = ReminderActivities(engine, None, PAY_BASE)
    page = await reminders.reminder_page(
        ReminderPageRequest(reminder_date=day, after_retailer_id=0, page_size=1, retailer_ids=[reminded])
    )
    await reminders.mark_reminders_sent(RemindersSent(reminder_date=day, due=page.due))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE credit_transactions SET status = 'CLEARED' WHERE id = :d"), {"d": debits[paid]})

    again = await reminders.reminder_page(
        ReminderPageRequest(reminder_date=day, after_retailer_id=0, page_size=1, retailer_ids=[waiting, reminded, paid])
    )

    assert [r.retailer_id for r in again.due] == [waiting]  # not `other`: only those handed on
    assert again.due[0].payment_link and again.due[0].payment_link.startswith(f"{PAY_BASE}/pay/")
    assert again.last_page and again.after_retailer_id == 0  # where the run's own pages go on from


# --------------------------------------------------------------------------- guardrails and payments


async def test_paying_through_the_stripe_webhook_clears_oldest_first_and_lifts_the_system_pause(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    day = FAR + timedelta(days=200)
    shop, phone = await new_retailer(engine)
    oldest = await new_debit(engine, shop, "100.00", day - timedelta(days=40))  # 40 days overdue: past the 30-day limit
    newer = await new_debit(engine, shop, "50.00", day - timedelta(days=3))
    settings = load_settings(task_queue=task_queue, business_timezone="UTC")

    async with credit_workers(env.client, engine, gateway, stripe_api, task_queue) as messaging:
        guard = await env.client.start_workflow(
            CreditGuardrailsWorkflow.run,
            GuardrailsRequest(check_date=day, messaging_task_queue=messaging),
            id=f"credit-guardrails/{day}",
            task_queue=task_queue,
        )
        paused: GuardrailsResult = await guard.result()
        await record_history(guard, "credit_guardrails")
        assert shop in paused.paused
        assert (await retailer(engine, shop)).credit_status == "PAUSED"

        # The retailer pays a pay link's PaymentIntent (as jobctl made them before Checkout
        # Sessions: the retailer's customer, our metadata); Stripe's signed event reaches the webhook.
        gateway_ = StripeGateway(stripe_api, engine)
        customer = await gateway_.ensure_customer("retailer", shop)
        intent = await stripe_api.v1.payment_intents.create_async(
            {
                "amount": 15000,
                "currency": "usd",
                "customer": customer.stripe_customer_id,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "metadata": {"retailer_id": str(shop), "payment_link_key": f"test-{uuid.uuid4().hex}"},
            }
        )
        event = {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {"object": intent.to_dict()},
        }
        handlers = credit_api.stripe_handlers(
            env.client, settings.model_copy(update={"messaging_task_queue": messaging}), stripe=gateway_, engine=engine
        )
        app = create_app(
            engine, stripe_webhook_secret=STRIPE_SECRET, twilio_auth_token=TWILIO_TOKEN, stripe_handlers=handlers
        )
        async with TestClient(TestServer(app)) as http:
            payload, headers = stripe_signed(event)
            assert (await http.post("/webhooks/stripe", data=payload, headers=headers)).status == 200
            assert (await http.post("/webhooks/stripe", data=payload, headers=headers)).status == 200  # Stripe retries
        handle = env.client.get_workflow_handle(f"payment/{shop}/{intent.id}", result_type=PaymentResult)
        result = await handle.result()
        await record_history(handle, "credit_record_payment")
        after = await remind(env, task_queue, messaging, day + timedelta(days=4))  # newer's +7 reminder day

    assert [a.debit_id for a in result.payment.allocations] == [oldest, newer]
    assert (await debit(engine, oldest)).status == (await debit(engine, newer)).status == "CLEARED"
    assert result.guardrails.resumed == [shop]
    assert (await retailer(engine, shop)).credit_status == "ACTIVE"
    actions = await audit_actions(engine, shop)
    assert ("credit_paused", "system") in actions and ("credit_resumed", "system") in actions
    assert ("payment_recorded", "stripe") in actions and actions.count(("debit_cleared", "stripe")) == 2
    bodies = [m["body"] for m in await sent_to(emulator, phone)]
    assert sum("credit line is paused" in b for b in bodies) == 1
    assert sum("credit line is open again" in b for b in bodies) == 1
    assert after.sent == 0 and not any("reminder" in b for b in bodies)
    async with engine.connect() as conn:
        credits = await conn.scalar(
            text("SELECT count(*) FROM credit_transactions WHERE retailer_id = :r AND type = 'CREDIT'"), {"r": shop}
        )
    assert credits == 1


async def test_a_signed_checkout_completed_event_records_nothing_unless_stripe_says_the_session_is_paid(
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    stripe_api: stripe.StripeClient,
    stripe_gateway: StripeGateway,
) -> None:
    """The event is only a hint: the session is re-read at Stripe before a payment is recorded.
    A forged event (signed with the right secret, say by a leaked one) claiming an open session
    was paid, naming a session Stripe never made, or pointing a paid session at another retailer
    records nothing; the genuinely paid session records once. On the dev server: the payment's
    workflow is only started here, and a run left waiting on the time-skipping server stops its clock
    for the tests after it."""
    env = dev_env
    shop, _ = await new_retailer(engine)
    other, _ = await new_retailer(engine)
    await new_debit(engine, shop, "80.00", FAR + timedelta(days=520))
    link = await stripe_gateway.create_checkout_session(
        CheckoutSessionRequest(
            retailer_id=shop, amount=Decimal("80.00"), currency="usd", idempotency_key=f"forged-{uuid.uuid4().hex}"
        )
    )
    session = (await stripe_api.v1.checkout.sessions.retrieve_async(link.checkout_session_id)).to_dict()
    assert session["payment_status"] == "unpaid"

    def completed(obj: dict) -> dict:
        return {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": "checkout.session.completed",
            "data": {"object": obj},
        }

    forged = {**session, "status": "complete", "payment_status": "paid"}
    events = [
        completed(forged),
        completed({**forged, "id": "cs_test_never_made_by_stripe"}),
        completed({**forged, "metadata": {**forged["metadata"], "retailer_id": str(other)}}),
    ]
    handlers = credit_api.stripe_handlers(env.client, load_settings(), stripe=stripe_gateway)
    app = create_app(
        engine, stripe_webhook_secret=STRIPE_SECRET, twilio_auth_token=TWILIO_TOKEN, stripe_handlers=handlers
    )
    async with TestClient(TestServer(app)) as http:
        for e in events:
            payload, headers = stripe_signed(e)
            assert (await http.post("/webhooks/stripe", data=payload, headers=headers)).status == 200

    async with engine.connect() as conn:
        credits = await conn.scalar(
            text("SELECT count(*) FROM credit_transactions WHERE retailer_id = ANY(:r) AND type = 'CREDIT'"),
            {"r": [shop, other]},
        )
    assert credits == 0
    for rid, sid in ((shop, session["id"]), (shop, "cs_test_never_made_by_stripe"), (other, session["id"])):
        with pytest.raises(RPCError, match="not found"):
            await env.client.get_workflow_handle(f"payment/{rid}/{sid}").describe()

    # Paid for real at the sandbox's page: the same event now starts the payment.
    async with aiohttp.ClientSession() as pay_page:
        async with pay_page.post(link.url, data={"action": "pay"}) as paid:
            assert paid.status == 200
    paid_session = (await stripe_api.v1.checkout.sessions.retrieve_async(session["id"])).to_dict()
    async with TestClient(TestServer(app)) as http:
        payload, headers = stripe_signed(completed(paid_session))
        assert (await http.post("/webhooks/stripe", data=payload, headers=headers)).status == 200
    started = await env.client.get_workflow_handle(f"payment/{shop}/{session['id']}").describe()
    assert started.workflow_type == "RecordPaymentWorkflow"
    await env.client.get_workflow_handle(started.id).terminate("test: no worker here")


async def test_a_partial_payment_leaves_the_oldest_debit_partially_paid_and_the_same_reference_records_once(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    shop, _ = await new_retailer(engine)
    first = await new_debit(engine, shop, "100.00", FAR + timedelta(days=300))
    second = await new_debit(engine, shop, "100.00", FAR + timedelta(days=310))
    async with credit_workers(env.client, engine, gateway, stripe_api, task_queue) as messaging:
        once = await pay(env, task_queue, messaging, shop, "60.00", reference="bank-ref-001")
        twice = await pay(env, task_queue, messaging, shop, "60.00", reference="bank-ref-001")
    row = await debit(engine, first)
    assert (row.status, row.cleared_amount) == ("PARTIALLY_PAID", Decimal("60.00"))
    assert (await debit(engine, second)).status == "OPEN"
    assert [a.debit_id for a in once.payment.allocations] == [first]
    assert twice.payment.credit_transaction_id == once.payment.credit_transaction_id
    async with engine.connect() as conn:
        available = await conn.scalar(
            text("SELECT available_credit FROM credit_accounts WHERE retailer_id = :r"), {"r": shop}
        )
    assert available == Decimal("50000") - Decimal("140.00")


async def test_an_admin_pause_is_not_lifted_by_payment(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    shop, phone = await new_retailer(engine)
    owed = await new_debit(engine, shop, "70.00", FAR - timedelta(days=390))
    await change_status(engine, shop, "pause", reason="disputed invoices", actor="admin-2")
    async with credit_workers(env.client, engine, gateway, stripe_api, task_queue) as messaging:
        result = await pay(env, task_queue, messaging, shop, "70.00")
    assert (await debit(engine, owed)).status == "CLEARED"
    assert result.guardrails.resumed == []
    row = await retailer(engine, shop)
    assert (row.credit_status, row.paused_by) == ("PAUSED", "admin-2")
    assert not any("open again" in m["body"] for m in await sent_to(emulator, phone))
