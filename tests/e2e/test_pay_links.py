"""`GET /pay/{token}`, the link every payment reminder carries, through the real ASGI app against the
real stack (`tests/e2e/api_harness.py`: the product's workers, PostgreSQL, the Twilio emulator and
the Stripe sandbox). Sending a reminder costs no Stripe request; a click makes the one Checkout
Session (a second click, or five at once, reuse it); a partial payment gets a session for what is
left; a paid, replaced or unknown link gets a clear page."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import aiohttp
import httpx
import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.credit import admin
from config.settings import Settings
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas.credit import RecordPayment, RemindersRequest, RemindersStatus
from services.credit import record_payment
from tests.activities.test_credit import new_debit, new_retailer, sent_to
from tests.e2e.api_harness import API_BASE, api_settings, assert_problem, http, running_workers  # noqa: F401 - pytest fixtures, taken as test arguments
from workflows.credit import PaymentRemindersWorkflow

DAY = date.today() + timedelta(days=900)  # this module's business dates
LINK = re.compile(re.escape(API_BASE) + r"/pay/([A-Za-z0-9_\-]+)")


async def remind(env: WorkflowEnvironment, settings: Settings, day: date) -> RemindersStatus:
    return await env.client.execute_workflow(
        PaymentRemindersWorkflow.run,
        RemindersRequest(reminder_date=day, messaging_task_queue=settings.messaging_task_queue),
        id=f"payment-reminders/{day}-{uuid.uuid4().hex[:6]}",
        task_queue=settings.task_queue,
    )


async def stripe_requests(sandbox: StripeSandbox) -> dict:
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox.url}/_sandbox/stats") as response:
        return await response.json()


def posts(before: dict, after: dict, endpoint: str) -> int:
    return after["by_endpoint"].get(endpoint, 0) - before["by_endpoint"].get(endpoint, 0)


async def links(emulator: TwilioEmulator, phone: str) -> list[str]:
    return [f"/pay/{t}" for m in await sent_to(emulator, phone) for t in LINK.findall(m["body"])]


async def click(http: httpx.AsyncClient, link: str) -> str:
    opened = await http.get(link)
    assert opened.status_code == 303, opened.text
    assert opened.headers["cache-control"] == "no-store"
    return opened.headers["location"]


def session_id(checkout_url: str) -> str:
    return checkout_url.rsplit("/", 1)[1]


async def pay(
    engine: AsyncEngine, env: WorkflowEnvironment, settings: Settings, retailer_id: int, amount: str, reference: str
) -> None:
    """What the webhook does once Stripe says a session was paid (or a bank transfer, recorded by hand)."""
    await record_payment(
        env.client,
        RecordPayment(
            retailer_id=retailer_id,
            amount=Decimal(amount),
            reference=reference,
            actor="stripe",
            messaging_task_queue=settings.messaging_task_queue,
        ),
        task_queue=settings.task_queue,
    )


async def test_a_reminder_carries_the_stable_url_and_sending_it_costs_no_stripe_request(
    http: httpx.AsyncClient,
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    api_settings: Settings,
    emulator: TwilioEmulator,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
) -> None:
    shop, phone = await new_retailer(engine)
    await new_debit(engine, shop, "40.00", DAY)
    await new_debit(engine, shop, "2.50", DAY)
    before = await stripe_requests(sandbox)
    for offset in (0, 1, 3):  # three cadence steps
        assert (await remind(dev_env, api_settings, DAY + timedelta(days=offset))).sent >= 1
    after = await stripe_requests(sandbox)
    assert after["requests"] == before["requests"]  # no customer, no session, no retrieve
    sent = await links(emulator, phone)
    assert len(sent) == 3 and len(set(sent)) == 1, sent
    assert "2 invoice(s) totalling $42.50" in (await sent_to(emulator, phone))[0]["body"]
    # The profile shows the same link, not yet opened.
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT url, checkout_session_id FROM payment_links WHERE retailer_id = :r"), {"r": shop}
            )
        ).one()
    assert row.url == f"{API_BASE}{sent[0]}" and row.checkout_session_id is None

    # Opened: one customer, one session, for the debits' amounts; opened again: the same session.
    checkout = await click(http, sent[0])
    opened = await stripe_requests(sandbox)
    assert posts(after, opened, "POST /v1/checkout/sessions") == 1 and posts(after, opened, "POST /v1/customers") == 1
    session = await stripe_api.v1.checkout.sessions.retrieve_async(session_id(checkout))
    assert (session.amount_total, session.status, session.metadata["retailer_id"]) == (4250, "open", str(shop))
    assert await click(http, sent[0]) == checkout
    again = await stripe_requests(sandbox)
    assert posts(opened, again, "POST /v1/checkout/sessions") == 0
    # The profile's "sent" is the last reminder's, not the click's (which stored the session).
    shown = await admin.payment_link(engine, shop)
    assert shown["checkout_session_id"] == session.id
    assert shown["sent_at"] == datetime.combine(DAY + timedelta(days=3), time(), tzinfo=UTC)


async def test_concurrent_clicks_make_one_session(
    http: httpx.AsyncClient,
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    api_settings: Settings,
    emulator: TwilioEmulator,
    stripe_api: stripe.StripeClient,
) -> None:
    shop, phone = await new_retailer(engine)
    await new_debit(engine, shop, "12.00", DAY + timedelta(days=40))
    await remind(dev_env, api_settings, DAY + timedelta(days=40))
    (link,) = await links(emulator, phone)
    checkouts = await asyncio.gather(*(click(http, link) for _ in range(5)))
    assert len(set(checkouts)) == 1
    async with engine.connect() as conn:
        customer = await conn.scalar(text("SELECT stripe_customer_id FROM retailers WHERE id = :r"), {"r": shop})
    sessions = (await stripe_api.v1.checkout.sessions.list_async({"customer": customer, "limit": 100})).data
    assert [s.id for s in sessions] == [session_id(checkouts[0])]


async def test_a_partial_payment_gets_a_session_for_what_is_left_and_a_paid_link_says_so(
    http: httpx.AsyncClient,
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    api_settings: Settings,
    emulator: TwilioEmulator,
    stripe_api: stripe.StripeClient,
) -> None:
    day = DAY + timedelta(days=80)
    shop, phone = await new_retailer(engine)
    await new_debit(engine, shop, "100.00", day)
    await new_debit(engine, shop, "50.00", day)
    await remind(dev_env, api_settings, day)
    (link,) = await links(emulator, phone)
    first = await click(http, link)

    # A bank transfer of 30.00 meanwhile: the next click expires the old session and charges 120.00.
    await pay(engine, dev_env, api_settings, shop, "30.00", f"bank-{uuid.uuid4().hex[:8]}")
    second = await click(http, link)
    assert second != first
    old = await stripe_api.v1.checkout.sessions.retrieve_async(session_id(first))
    new = await stripe_api.v1.checkout.sessions.retrieve_async(session_id(second))
    assert (old.status, new.status, new.amount_total) == ("expired", "open", 12000)
    # The next reminder (the same debits) sends the same link.
    await remind(dev_env, api_settings, day + timedelta(days=1))
    assert len(set(await links(emulator, phone))) == 1

    # Paid on Stripe's page; until the webhook's payment is recorded the link says "received".
    async with aiohttp.ClientSession() as browser, browser.post(second, data={"action": "pay"}) as paid:
        assert paid.status == 200
    processing = await http.get(link)
    assert (processing.status_code, processing.json()["state"]) == (200, "processing")
    await pay(engine, dev_env, api_settings, shop, "120.00", session_id(second))  # what the webhook starts
    done = await http.get(link)
    assert (done.status_code, done.json()["state"]) == (200, "paid")
    page = await http.get(link, headers={"Accept": "text/html,application/xhtml+xml"})
    assert (
        page.status_code == 200 and page.headers["content-type"].startswith("text/html") and "Already paid" in page.text
    )


async def test_a_replaced_link_says_so_and_an_unknown_one_is_404(
    http: httpx.AsyncClient,
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    api_settings: Settings,
    emulator: TwilioEmulator,
    stripe_api: stripe.StripeClient,
) -> None:
    day = DAY + timedelta(days=120)
    shop, phone = await new_retailer(engine)
    await new_debit(engine, shop, "10.00", day)
    await remind(dev_env, api_settings, day)
    (old,) = await links(emulator, phone)
    old_checkout = await click(http, old)
    await new_debit(engine, shop, "5.00", day + timedelta(days=1))  # due on day + 1, with the first (its +1 day)
    await remind(dev_env, api_settings, day + timedelta(days=1))
    *_, new = await links(emulator, phone)
    assert new != old
    assert (await stripe_api.v1.checkout.sessions.retrieve_async(session_id(old_checkout))).status == "expired"
    body = assert_problem(await http.get(old), 410)
    assert "newer link" in body["detail"]
    page = await http.get(old, headers={"Accept": "text/html"})
    assert page.status_code == 410 and "replaced" in page.text
    assert await click(http, new) != old_checkout

    for unknown in ("/pay/nosuchtoken", "/pay/" + "x" * 43, "/pay/bad.token"):
        body = assert_problem(await http.get(unknown), 404)
        assert "does not exist" in body["detail"]
    page = await http.get("/pay/nosuchtoken", headers={"Accept": "text/html"})
    assert page.status_code == 404 and "Unknown payment link" in page.text


async def test_clicks_above_stripes_rate_limit_are_paced_not_refused(
    dev_env: WorkflowEnvironment, engine: AsyncEngine
) -> None:
    """A sandbox answering 429 above 5 requests/s: ten first clicks at once (a customer and a session
    each, 20 requests) all reach their Checkout page; the 429s are retried per call with back-off."""
    from activities.credit.paylinks import debits_fingerprint, new_token
    from tests.activities.test_credit import pay_api

    tokens = []
    for _ in range(10):
        shop, _phone = await new_retailer(engine)
        owed = await new_debit(engine, shop, "9.00", DAY + timedelta(days=160))
        token = new_token()
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO payment_links (retailer_id, token, url, fingerprint, amount, currency, debit_ids)"
                    " VALUES (:r, :t, :u, :f, 9, 'usd', ARRAY[CAST(:d AS bigint)])"
                ),
                {
                    "r": shop,
                    "t": token,
                    "u": f"{API_BASE}/pay/{token}",
                    "f": debits_fingerprint([owed], "usd"),
                    "d": owed,
                },
            )
        tokens.append(token)
    async with StripeSandbox(rate_limit=5) as limited, pay_api(engine, dev_env.client, limited.url) as api:
        answers = await asyncio.gather(*(api.get(f"/pay/{t}") for t in tokens))
        stats = await stripe_requests(limited)
    assert [a.status_code for a in answers] == [303] * 10, [a.text for a in answers if a.status_code != 303]
    assert len({a.headers["location"] for a in answers}) == 10
    assert stats["rate_limited"] > 0  # the limit was hit, and respected
    async with engine.connect() as conn:
        made = (
            await conn.execute(
                text("SELECT session_count, checkout_session_id FROM payment_links WHERE token = ANY(:t)"),
                {"t": tokens},
            )
        ).all()
    assert (
        sorted(n for n, _ in made) == [1] * 10 and len({s for _, s in made}) == 10
    )  # one session each, retries replayed
