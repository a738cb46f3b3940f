"""The Stripe sandbox, driven through the real `stripe` SDK over HTTP (no mocks).

What the payments activities rely on: a retried call with the same Idempotency-Key creates
nothing new and gets the first answer back (marked replayed), a key reused for other parameters is
refused with Stripe's `idempotency_error`, GET/DELETE ignore the key, and the PaymentIntent /
refund / webhook flows the product uses work through the sandbox. The timing rules (concurrent
same-key requests, what is stored, expiry) are checked against a tiny counting backend, where
"the backend was called once" can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp import web

from activities.payments.client import close_stripe_client, stripe_client
from devtools.stripe_sandbox import KEY_TTL_S, StripeSandbox, api_key_of, request_fingerprint

API_KEY = "sk_test_jobctl"  # the key of the shared `stripe_api` fixture
WEBHOOK_SECRET = "whsec_jobctl_test"
ROOT = Path(__file__).resolve().parents[2]


# --- harness -----------------------------------------------------------------------------------


@pytest.fixture
def client(stripe_api: stripe.StripeClient) -> stripe.StripeClient:
    return stripe_api


def key(label: str) -> str:
    return f"test:{label}:{uuid.uuid4().hex}"


def email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.test"


async def customers_with_email(client: stripe.StripeClient, address: str) -> list[str]:
    page = await client.v1.customers.list_async({"email": address, "limit": 100})
    return [c.id for c in page.data]


async def raw_post(url: str, form: dict[str, str], idempotency_key: str) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": idempotency_key}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.json()


# --- idempotency against localstripe -----------------------------------------------------------


async def test_same_key_creates_one_customer_and_replays(sandbox: StripeSandbox, client: stripe.StripeClient) -> None:
    address, k = email(), key("customer")
    first = await client.v1.customers.create_async({"email": address, "name": "Kiosk 7"}, {"idempotency_key": k})
    again = await client.v1.customers.create_async({"email": address, "name": "Kiosk 7"}, {"idempotency_key": k})

    assert again.id == first.id
    assert await customers_with_email(client, address) == [first.id]
    assert first.last_response is not None and again.last_response is not None
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.last_response.headers["Original-Request"] == first.last_response.request_id

    # The same request without the SDK (field order differs): still the same request, replayed.
    status, headers, body = await raw_post(f"{sandbox.url}/v1/customers", {"name": "Kiosk 7", "email": address}, k)
    assert (status, body["id"], headers["Idempotency-Key"]) == (200, first.id, k)
    assert headers["Idempotent-Replayed"] == "true"
    assert await customers_with_email(client, address) == [first.id]


async def test_same_key_other_params_or_endpoint_is_an_idempotency_error(client: stripe.StripeClient) -> None:
    address, k = email(), key("mismatch")
    first = await client.v1.customers.create_async({"email": address}, {"idempotency_key": k})

    with pytest.raises(stripe.IdempotencyError) as params_error:
        await client.v1.customers.create_async({"email": address, "name": "other"}, {"idempotency_key": k})
    assert params_error.value.http_status == 400
    assert params_error.value.json_body["error"]["type"] == "idempotency_error"
    assert "same parameters" in params_error.value.user_message

    with pytest.raises(stripe.IdempotencyError) as endpoint_error:
        await client.v1.customers.update_async(first.id, {"name": "renamed"}, {"idempotency_key": k})
    assert "same endpoint" in endpoint_error.value.user_message

    assert await customers_with_email(client, address) == [first.id]
    assert (await client.v1.customers.retrieve_async(first.id)).name is None  # the update never ran


async def test_different_keys_create_two_objects(client: stripe.StripeClient) -> None:
    address = email()
    one = await client.v1.customers.create_async({"email": address}, {"idempotency_key": key("a")})
    two = await client.v1.customers.create_async({"email": address}, {"idempotency_key": key("b")})
    assert one.id != two.id
    assert sorted(await customers_with_email(client, address)) == sorted([one.id, two.id])


async def test_keys_are_scoped_by_api_key(sandbox: StripeSandbox, client: stripe.StripeClient) -> None:
    address, k = email(), key("scope")
    other = stripe_client("sk_test_another_account", sandbox.url)
    try:
        one = await client.v1.customers.create_async({"email": address}, {"idempotency_key": k})
        two = await other.v1.customers.create_async({"email": address}, {"idempotency_key": k})
    finally:
        await close_stripe_client(other)
    assert one.id != two.id


async def test_get_and_delete_ignore_the_key(client: stripe.StripeClient) -> None:
    k = key("reads")
    customer = await client.v1.customers.create_async({"email": email()}, {"idempotency_key": key("c")})
    before = await client.v1.customers.retrieve_async(customer.id, options={"idempotency_key": k})
    await client.v1.customers.update_async(customer.id, {"metadata": {"tier": "gold"}}, {"idempotency_key": key("u")})
    after = await client.v1.customers.retrieve_async(customer.id, options={"idempotency_key": k})
    assert before.metadata.to_dict() == {} and after.metadata.to_dict() == {"tier": "gold"}
    assert after.last_response is not None and "Idempotent-Replayed" not in after.last_response.headers

    # DELETE is idempotent by definition at Stripe: the key neither replays nor conflicts.
    other = await client.v1.customers.create_async({"email": email()}, {"idempotency_key": key("c")})
    for target in (customer.id, other.id):
        deleted = await client.v1.customers.delete_async(target, options={"idempotency_key": k})
        assert (deleted.id, deleted.deleted) == (target, True)


async def test_lists_show_exactly_the_live_objects_of_their_type(client: stripe.StripeClient) -> None:
    # The sandbox indexes localstripe's store by type (devtools/localstripe_index.py): a list must
    # still see every create and delete, and nothing of another type.
    address = email()
    one = await client.v1.customers.create_async({"email": address}, {"idempotency_key": key("l1")})
    two = await client.v1.customers.create_async({"email": address}, {"idempotency_key": key("l2")})
    await client.v1.payment_intents.create_async(
        {"amount": 500, "currency": "usd", "customer": one.id}, {"idempotency_key": key("l3")}
    )
    assert sorted(await customers_with_email(client, address)) == sorted([one.id, two.id])
    await client.v1.customers.delete_async(one.id)
    assert await customers_with_email(client, address) == [two.id]
    assert (await client.v1.customers.retrieve_async(two.id)).subscriptions.data == []


async def test_concurrent_same_key_requests_create_one_object(client: stripe.StripeClient) -> None:
    address, k = email(), key("burst")
    results = await asyncio.gather(
        *(client.v1.customers.create_async({"email": address}, {"idempotency_key": k}) for _ in range(8))
    )
    assert {c.id for c in results} == set(await customers_with_email(client, address))
    assert len({c.id for c in results}) == 1
    replayed = [c for c in results if c.last_response and c.last_response.headers.get("Idempotent-Replayed")]
    assert len(replayed) == 7


async def test_reset_forgets_objects_and_keys() -> None:
    async with StripeSandbox() as own:
        c = stripe_client(API_KEY, own.url)
        try:
            k, address = key("reset"), email()
            first = await c.v1.customers.create_async({"email": address}, {"idempotency_key": k})
            await own.reset()
            assert len(own.idempotency) == 0
            assert await customers_with_email(c, address) == []
            second = await c.v1.customers.create_async({"email": address}, {"idempotency_key": k})
            assert second.id != first.id and second.last_response is not None
            assert "Idempotent-Replayed" not in second.last_response.headers
        finally:
            await close_stripe_client(c)


async def test_what_localstripe_lacks_fails_fast_as_an_invalid_request(client: stripe.StripeClient) -> None:
    # localstripe answers unknown routes in plain text; the sandbox gives them Stripe's 404 shape, so
    # the SDK raises InvalidRequestError (non-retryable), not APIError. No Payment Links, no Prices.
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        await client.v1.payment_links.create_async(
            {"line_items": [{"price": "price_x", "quantity": 1}]}, {"idempotency_key": key("payment-link")}
        )
    assert unknown.value.http_status == 404 and "/v1/payment_links" in unknown.value.user_message
    with pytest.raises(stripe.InvalidRequestError) as missing:  # localstripe's own JSON 404 passes through
        await client.v1.customers.retrieve_async("cus_doesnotexist")
    assert missing.value.http_status == 404


# --- payments flows through the sandbox --------------------------------------------------------


async def test_payment_intent_succeeds_and_is_refunded_once(client: stripe.StripeClient) -> None:
    customer = await client.v1.customers.create_async({"email": email()}, {"idempotency_key": key("c")})
    create_key, confirm_key, refund_key = key("pi"), key("confirm"), key("refund")
    params = {"amount": 2500, "currency": "eur", "customer": customer.id, "payment_method": "pm_card_visa"}

    intent = await client.v1.payment_intents.create_async(params, {"idempotency_key": create_key})
    assert intent.status == "requires_confirmation"
    confirmed = await client.v1.payment_intents.confirm_async(intent.id, options={"idempotency_key": confirm_key})
    assert confirmed.status == "succeeded"
    # A retried confirm would be a 400 at localstripe (no longer requires_confirmation): the replay wins.
    retried = await client.v1.payment_intents.confirm_async(intent.id, options={"idempotency_key": confirm_key})
    assert retried.status == "succeeded"
    assert retried.last_response is not None and retried.last_response.headers["Idempotent-Replayed"] == "true"
    assert (await client.v1.payment_intents.retrieve_async(intent.id)).status == "succeeded"

    refund_params = {"payment_intent": intent.id, "amount": 1000}
    refund = await client.v1.refunds.create_async(refund_params, {"idempotency_key": refund_key})
    again = await client.v1.refunds.create_async(refund_params, {"idempotency_key": refund_key})
    assert (refund.status, refund.amount, again.id) == ("succeeded", 1000, refund.id)
    refunds = await client.v1.refunds.list_async({"payment_intent": intent.id})
    assert [r.id for r in refunds.data] == [refund.id]


async def test_declined_payment_is_replayed_not_retried(client: stripe.StripeClient) -> None:
    customer = await client.v1.customers.create_async({"email": email()}, {"idempotency_key": key("c")})
    k = key("declined")
    params = {
        "amount": 1200,
        "currency": "eur",
        "customer": customer.id,
        "payment_method": "pm_card_chargeCustomerFail",
        "confirm": True,
    }
    for attempt in range(2):
        with pytest.raises(stripe.CardError) as declined:
            await client.v1.payment_intents.create_async(params, {"idempotency_key": k})
        assert (declined.value.http_status, declined.value.code) == (402, "card_declined")
        assert declined.value.headers is not None
        assert declined.value.headers.get("Idempotent-Replayed") == (None if attempt == 0 else "true")

    intents = await client.v1.payment_intents.list_async({"limit": 100})
    mine = [pi for pi in intents.data if pi.customer == customer.id]
    assert len(mine) == 1
    assert mine[0].status == "requires_payment_method"
    assert mine[0].last_payment_error["code"] == "card_declined"


async def test_events_are_delivered_signed_with_our_secret(sandbox: StripeSandbox, client: stripe.StripeClient) -> None:
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await received.put((await request.text(), request.headers.get("Stripe-Signature", "")))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/webhooks/stripe", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await sandbox.register_webhook(
            f"http://127.0.0.1:{port}/webhooks/stripe", WEBHOOK_SECRET, events=["payment_intent.succeeded"]
        )
        intent = await client.v1.payment_intents.create_async(
            {"amount": 700, "currency": "eur", "payment_method": "pm_card_visa", "confirm": True},
            {"idempotency_key": key("hook")},
        )
        assert intent.status == "succeeded"
        # Only this sandbox's events come here, and they may include earlier tests' intents.
        deadline = time.monotonic() + 10
        while True:
            payload, signature = await asyncio.wait_for(received.get(), deadline - time.monotonic())
            event = stripe.Webhook.construct_event(payload, signature, WEBHOOK_SECRET)
            assert event.type == "payment_intent.succeeded"
            if event.data.object.id == intent.id:
                break
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(payload, signature, "whsec_forged")
    finally:
        await sandbox.register_webhook("http://127.0.0.1:9/unused", WEBHOOK_SECRET, events=[])
        await runner.cleanup()


# --- Checkout Sessions and the pay page ---------------------------------------------------------


@asynccontextmanager
async def receiver() -> AsyncIterator[tuple[str, asyncio.Queue[tuple[str, str]]]]:
    """A webhook endpoint on a free port; yields its URL and the (payload, signature) it received."""
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await received.put((await request.text(), request.headers.get("Stripe-Signature", "")))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/webhooks/stripe", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/stripe", received
    finally:
        await runner.cleanup()


async def new_session(client: stripe.StripeClient, customer: str, *amounts: int, k: str | None = None) -> Any:
    return await client.v1.checkout.sessions.create_async(
        {
            "mode": "payment",
            "customer": customer,
            "metadata": {"retailer_id": "42"},
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {"currency": "usd", "unit_amount": a, "product_data": {"name": f"Invoice {i}"}},
                }
                for i, a in enumerate(amounts)
            ],
        },
        {"idempotency_key": k or key("checkout")},
    )


async def submit(url: str, form: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form) as response:
            return response.status, await response.text()


async def test_a_checkout_session_is_paid_on_its_page_and_the_signed_event_arrives() -> None:
    async with StripeSandbox() as sandbox, receiver() as (url, received):
        client = stripe_client(API_KEY, sandbox.url, timeout_s=10)
        try:
            await sandbox.register_webhook(url, WEBHOOK_SECRET, events=["checkout.session.completed"])
            customer = await client.v1.customers.create_async({"metadata": {"owner_id": "42"}})
            k = key("checkout")
            session = await new_session(client, customer.id, 1000, 2550, k=k)
            replayed = await new_session(client, customer.id, 1000, 2550, k=k)
            assert replayed.id == session.id and replayed.last_response.headers["Idempotent-Replayed"] == "true"
            assert (session.status, session.payment_status, session.amount_total) == ("open", "unpaid", 3550)
            assert session.url == f"{sandbox.url}/pay/{session.id}"

            async with aiohttp.ClientSession() as http:
                async with http.get(session.url) as page:
                    html = await page.text()
            assert page.status == 200 and "35.50" in html and ">Pay<" in html and "Pay partially" in html
            status, _ = await submit(session.url, {"action": "pay"})
            assert status == 200

            payload, signature = received.get_nowait()  # delivered before the page answered
            event = stripe.Webhook.construct_event(payload, signature, WEBHOOK_SECRET)
            assert event.type == "checkout.session.completed"
            paid = event.data.object
            assert (paid.id, paid.status, paid.payment_status, paid.amount_total) == (
                session.id,
                "complete",
                "paid",
                3550,
            )
            assert paid.metadata.retailer_id == "42"
            assert (await client.v1.checkout.sessions.retrieve_async(session.id)).status == "complete"
            assert (await submit(session.url, {"action": "pay"}))[0] == 409  # paid once only
            assert received.empty()
            listed = await client.v1.checkout.sessions.list_async({"customer": customer.id})
            assert [s.id for s in listed.data] == [session.id]
        finally:
            await close_stripe_client(client)


async def test_partial_payment_expiry_and_missing_customers() -> None:
    async with StripeSandbox() as sandbox, receiver() as (url, received):
        client = stripe_client(API_KEY, sandbox.url, timeout_s=10)
        try:
            await sandbox.register_webhook(url, WEBHOOK_SECRET)
            customer = await client.v1.customers.create_async({"metadata": {"owner_id": "43"}})
            partial = await new_session(client, customer.id, 5000)
            assert (await submit(partial.url, {"action": "partial", "amount": "60.00"}))[0] == 400  # above the total
            assert (await submit(partial.url, {"action": "partial", "amount": "-1"}))[0] == 400
            assert (await submit(partial.url, {"action": "partial", "amount": "12.34"}))[0] == 200
            events = []
            while not received.empty():
                events.append(stripe.Webhook.construct_event(*received.get_nowait(), WEBHOOK_SECRET))
            completed = [e for e in events if e.type == "checkout.session.completed"]
            assert [e.data.object.amount_total for e in completed] == [1234]

            doomed = await new_session(client, customer.id, 700)
            expired = await client.v1.checkout.sessions.expire_async(doomed.id)
            assert expired.status == "expired"
            status, html = await submit(doomed.url, {"action": "pay"})
            assert status == 410 and "expired" in html  # paying an expired link is refused
            with pytest.raises(stripe.InvalidRequestError):  # only an open session can be expired
                await client.v1.checkout.sessions.expire_async(doomed.id)

            await client.v1.customers.delete_async(customer.id)
            with pytest.raises(stripe.InvalidRequestError) as missing:
                await new_session(client, customer.id, 700)
            assert (missing.value.code, missing.value.param) == ("resource_missing", "customer")
        finally:
            await close_stripe_client(client)


async def control(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body) as response:
            return response.status, await response.json()


def events_of(received: asyncio.Queue[tuple[str, str]]) -> list[Any]:
    events = []
    while not received.empty():
        events.append(stripe.Webhook.construct_event(*received.get_nowait(), WEBHOOK_SECRET))
    return events


MONEY_EVENTS = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
]


async def test_a_paid_session_has_a_real_charge_whose_refunds_and_disputes_send_signed_events() -> None:
    async with StripeSandbox() as sandbox, receiver() as (url, received):
        client = stripe_client(API_KEY, sandbox.url, timeout_s=10)
        try:
            await sandbox.register_webhook(url, WEBHOOK_SECRET, events=MONEY_EVENTS)
            customer = await client.v1.customers.create_async({"metadata": {"owner_id": "45"}})
            session = await new_session(client, customer.id, 5000)
            assert (await submit(session.url, {"action": "pay"}))[0] == 200
            paid = await client.v1.checkout.sessions.retrieve_async(session.id)
            intent = await client.v1.payment_intents.retrieve_async(str(paid.payment_intent))
            assert (intent.status, intent.amount, intent.customer) == ("succeeded", 5000, customer.id)
            charge_id = intent.latest_charge if isinstance(intent.latest_charge, str) else intent.latest_charge.id

            k = key("refund")
            await client.v1.refunds.create_async({"charge": charge_id, "amount": 1500}, {"idempotency_key": k})
            await client.v1.refunds.create_async({"charge": charge_id, "amount": 1500}, {"idempotency_key": k})
            await client.v1.refunds.create_async({"charge": charge_id, "amount": 500})
            status, dispute = await control(f"{sandbox.url}/_sandbox/charges/{charge_id}/dispute", {"amount": 3000})
            assert status == 200 and dispute["status"] == "needs_response"
            assert (await control(f"{sandbox.url}/_sandbox/charges/{charge_id}/dispute", {}))[0] == 409  # one open
            assert (await client.v1.charges.retrieve_async(charge_id)).disputed
            status, closed = await control(f"{sandbox.url}/_sandbox/disputes/{dispute['id']}/close", {"outcome": "won"})
            assert status == 200 and closed["status"] == "won"
            again = await control(f"{sandbox.url}/_sandbox/disputes/{dispute['id']}/close", {"outcome": "lost"})
            assert again[0] == 409  # closed once
            assert (await client.v1.disputes.retrieve_async(dispute["id"])).status == "won"
            assert not (await client.v1.charges.retrieve_async(charge_id)).disputed

            events = events_of(received)
            assert [e.type for e in events] == [
                "checkout.session.completed",
                "charge.refunded",  # the replayed refund (same key) sent nothing again
                "charge.refunded",
                "charge.dispute.created",
                "charge.dispute.closed",
            ]
            assert [e.data.object.amount_refunded for e in events if e.type == "charge.refunded"] == [1500, 2000]
            assert events[3].data.object.charge == charge_id and events[3].data.object.payment_intent == intent.id
        finally:
            await close_stripe_client(client)


async def test_a_bank_debit_completes_unpaid_then_succeeds_or_fails_asynchronously() -> None:
    async with StripeSandbox() as sandbox, receiver() as (url, received):
        client = stripe_client(API_KEY, sandbox.url, timeout_s=10)
        try:
            await sandbox.register_webhook(url, WEBHOOK_SECRET, events=MONEY_EVENTS)
            customer = await client.v1.customers.create_async({"metadata": {"owner_id": "46"}})
            outcomes = {}
            for outcome in ("succeeded", "failed"):
                session = await new_session(client, customer.id, 4200)
                async with aiohttp.ClientSession() as http:
                    async with http.get(session.url) as page:
                        assert "Pay by bank debit" in await page.text()
                assert (await submit(session.url, {"action": "delayed"}))[0] == 200
                pending = await client.v1.checkout.sessions.retrieve_async(session.id)
                assert (pending.status, pending.payment_status) == ("complete", "unpaid")
                intent = str(pending.payment_intent)
                assert (await client.v1.payment_intents.retrieve_async(intent)).status == "processing"
                path = f"{sandbox.url}/_sandbox/checkout/sessions/{session.id}/async_payment"
                assert (await control(path, {"outcome": "maybe"}))[0] == 400
                status, after = await control(path, {"outcome": outcome})
                assert status == 200
                assert (await control(path, {"outcome": outcome}))[0] == 409  # settled once
                now = await client.v1.payment_intents.retrieve_async(intent)
                outcomes[outcome] = (after["payment_status"], now.status)
            assert outcomes == {
                "succeeded": ("paid", "succeeded"),
                "failed": ("unpaid", "requires_payment_method"),
            }
            assert [e.type for e in events_of(received)] == [
                "checkout.session.completed",
                "checkout.session.async_payment_succeeded",
                "checkout.session.completed",
                "checkout.session.async_payment_failed",
            ]
        finally:
            await close_stripe_client(client)


async def test_a_sandbox_with_a_data_dir_remembers_after_a_restart(tmp_path: Path) -> None:
    async with StripeSandbox(data_dir=tmp_path) as sandbox:
        client = stripe_client(API_KEY, sandbox.url, timeout_s=10)
        try:
            customer = await client.v1.customers.create_async({"metadata": {"owner_id": "44"}})
            session = await new_session(client, customer.id, 900)
        finally:
            await close_stripe_client(client)
    async with StripeSandbox(data_dir=tmp_path) as sandbox:
        client = stripe_client(API_KEY, sandbox.url, timeout_s=10)
        try:
            assert (await client.v1.customers.retrieve_async(customer.id)).metadata.owner_id == "44"
            again = await client.v1.checkout.sessions.retrieve_async(session.id)
            assert (again.status, again.amount_total) == ("open", 900)
        finally:
            await close_stripe_client(client)
    async with StripeSandbox() as sandbox:  # without one: in memory, nothing carried over
        client = stripe_client(API_KEY, sandbox.url, timeout_s=10)
        try:
            with pytest.raises(stripe.InvalidRequestError):
                await client.v1.customers.retrieve_async(customer.id)
        finally:
            await close_stripe_client(client)


# --- timing and storage rules, against a counting backend --------------------------------------


@dataclass
class Backend:
    """A stand-in for localstripe: answers from a script of statuses, counts calls."""

    delay_s: float = 0.0
    statuses: list[int] = field(default_factory=list)
    calls: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        call = self.calls
        await request.read()
        await asyncio.sleep(self.delay_s)
        status = self.statuses[min(call, len(self.statuses)) - 1] if self.statuses else 200
        body = {"id": f"obj_{call}"} if status < 400 else {"error": {"type": "api_error", "message": "boom"}}
        return web.json_response(body, status=status)


@asynccontextmanager
async def fronted(backend: Backend, **options: Any) -> AsyncIterator[StripeSandbox]:
    """A sandbox in front of ``backend`` instead of localstripe."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", backend.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with StripeSandbox(upstream=f"http://127.0.0.1:{runner.addresses[0][1]}", **options) as sb:
            yield sb
    finally:
        await runner.cleanup()


async def post(
    sb: StripeSandbox, idempotency_key: str, form: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    return await raw_post(f"{sb.url}/v1/customers", form or {"email": "a@example.test"}, idempotency_key)


async def test_concurrent_requests_wait_for_the_first_and_get_its_replay() -> None:
    backend = Backend(delay_s=0.3)
    async with fronted(backend) as sb:
        results = await asyncio.gather(*(post(sb, "k-burst") for _ in range(5)))
    assert backend.calls == 1
    assert {body["id"] for _, _, body in results} == {"obj_1"}
    assert sorted(h.get("Idempotent-Replayed", "-") for _, h, _ in results) == ["-", "true", "true", "true", "true"]


async def test_conflict_mode_answers_409_while_the_first_is_in_flight() -> None:
    backend = Backend(delay_s=0.3)
    async with fronted(backend, on_concurrent="conflict") as sb:
        first = asyncio.create_task(post(sb, "k-conflict"))
        await asyncio.sleep(0.1)
        status, _, body = await post(sb, "k-conflict")
        assert (status, body["error"]["type"]) == (409, "idempotency_error")
        assert (await first)[0] == 200
        status, headers, body = await post(sb, "k-conflict")  # once done: the replay
        assert (status, body["id"], headers["Idempotent-Replayed"]) == (200, "obj_1", "true")
    assert backend.calls == 1


async def test_conflict_reaches_the_sdk_as_a_retryable_api_error() -> None:
    backend = Backend(delay_s=0.3)
    async with fronted(backend, on_concurrent="conflict") as sb:
        c = stripe_client(API_KEY, sb.url)
        try:
            params, options = {"email": "a@example.test"}, {"idempotency_key": "k"}
            first = asyncio.create_task(c.v1.customers.create_async(params, options))
            await asyncio.sleep(0.1)
            with pytest.raises(stripe.APIError) as conflict:
                await c.v1.customers.create_async(params, options)
            assert conflict.value.http_status == 409 and not isinstance(conflict.value, stripe.IdempotencyError)
            await first
        finally:
            await close_stripe_client(c)


@pytest.mark.parametrize(
    ("first_status", "executions"), [(500, 2), (503, 2), (400, 2), (404, 2), (429, 2), (402, 1), (201, 1)]
)
async def test_what_is_stored(first_status: int, executions: int) -> None:
    backend = Backend(statuses=[first_status, 200])
    async with fronted(backend) as sb:
        status, _, _ = await post(sb, "k-store")
        assert status == first_status
        status, headers, _ = await post(sb, "k-store")
    assert backend.calls == executions
    assert status == (200 if executions == 2 else first_status)
    assert ("Idempotent-Replayed" in headers) == (executions == 1)


async def test_keys_expire_after_24_hours() -> None:
    now = [1000.0]
    backend = Backend()
    async with fronted(backend, clock=lambda: now[0]) as sb:
        assert (await post(sb, "k-ttl"))[2]["id"] == "obj_1"
        now[0] += KEY_TTL_S - 1
        assert (await post(sb, "k-ttl"))[2]["id"] == "obj_1"
        now[0] += 2
        assert len(sb.idempotency) == 0
        # Expired: the key is new again, even with other parameters.
        assert (await post(sb, "k-ttl", {"email": "b@example.test"}))[2]["id"] == "obj_2"
    assert backend.calls == 2


async def test_overlong_key_and_missing_api_key() -> None:
    backend = Backend()
    async with fronted(backend) as sb:
        status, _, body = await post(sb, "k" * 256)
        assert (status, body["error"]["type"]) == (400, "invalid_request_error")
        async with aiohttp.ClientSession() as http:  # no API key: passed through untouched
            for _ in range(2):
                async with http.post(f"{sb.url}/v1/customers", data={"a": "1"}, headers={"Idempotency-Key": "k"}) as r:
                    assert "Idempotent-Replayed" not in r.headers
    assert backend.calls == 2


async def _get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return await response.json()


async def test_stats_count_every_api_request_by_endpoint_replays_included() -> None:
    """What a benchmark's "Stripe calls per unit" reads: every API request, control plane excluded."""
    backend = Backend()
    async with fronted(backend) as sb:
        await post(sb, "k-stats")
        await post(sb, "k-stats")  # replayed: still a request Stripe answered
        await post(sb, "k-other")
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with http.get(f"{sb.url}/v1/checkout/sessions/cs_test_9f8e7d", headers=headers):
                pass
            async with http.get(f"{sb.url}/_sandbox/clock"):
                pass
        stats = await _get_json(f"{sb.url}/_sandbox/stats")
    assert stats == {
        "requests": 4,
        "replayed": 1,
        "rate_limited": 0,
        "by_endpoint": {"GET /v1/checkout/sessions/{id}": 1, "POST /v1/customers": 3},
    }


async def test_rate_limit_answers_stripes_429_which_the_sdk_raises_as_a_rate_limit_error() -> None:
    backend = Backend()
    async with fronted(backend, rate_limit=2) as sb:
        statuses = [(await post(sb, f"k-rate-{i}"))[0] for i in range(3)]  # burst of 2, then refused
        c = stripe_client(API_KEY, sb.url)
        try:
            with pytest.raises(stripe.RateLimitError) as refused:
                await c.v1.customers.create_async({"email": "a@example.test"}, {"idempotency_key": "k-rate-sdk"})
            assert refused.value.http_status == 429 and refused.value.json_body["error"]["code"] == "rate_limit"
        finally:
            await close_stripe_client(c)
        await asyncio.sleep(0.6)  # a token back
        assert (await post(sb, "k-rate-later"))[0] == 200
        stats = await _get_json(f"{sb.url}/_sandbox/stats")
    assert statuses == [200, 200, 429]
    assert backend.calls == 3  # a refused request never reached the backend
    assert (stats["requests"], stats["rate_limited"]) == (5, 2)


async def test_advancing_the_clock_expires_checkout_sessions_and_keys_as_a_day_would() -> None:
    async with StripeSandbox() as sandbox:
        client = stripe_client(API_KEY, sandbox.url, timeout_s=10)
        try:
            customer = await client.v1.customers.create_async({"metadata": {"owner_id": "44"}})
            k = key("clock")
            session = await new_session(client, customer.id, 900, k=k)
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{sandbox.url}/_sandbox/clock", json={"advance_s": -1}) as refused:
                    assert refused.status == 400
                async with http.post(f"{sandbox.url}/_sandbox/clock", json={"advance_s": 23 * 3600}) as moved:
                    assert (await moved.json()) == {"advanced_s": 23 * 3600}
                assert (await client.v1.checkout.sessions.retrieve_async(session.id)).status == "open"
                async with http.post(f"{sandbox.url}/_sandbox/clock", json={"advance_s": 3600}):
                    pass
            assert (await client.v1.checkout.sessions.retrieve_async(session.id)).status == "expired"
            again = await new_session(client, customer.id, 900, k=k)  # the key expired with the day
            assert again.id != session.id and again.status == "open"
        finally:
            await close_stripe_client(client)


def test_fingerprint_and_api_key_parsing() -> None:
    form = "application/x-www-form-urlencoded"
    assert request_fingerprint("", b"a=1&b=2", form) == request_fingerprint("", b"b=2&a=1", form)
    assert request_fingerprint("", b"x[]=1&x[]=2", form) != request_fingerprint("", b"x[]=2&x[]=1", form)
    assert request_fingerprint("", b"a=1", form) != request_fingerprint("expand[]=x", b"a=1", form)
    assert request_fingerprint("", b'{"a":1,"b":2}', "application/json") == request_fingerprint(
        "", b'{"b":2,"a":1}', "application/json"
    )
    assert api_key_of("Bearer sk_test_1") == "sk_test_1"
    assert api_key_of("Basic c2tfdGVzdF8yOg==") == "sk_test_2"  # "sk_test_2:"
    assert api_key_of(None) is None and api_key_of("Basic !!") is None


# --- the command -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" in status.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


async def _wait_serving(url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as http:
        while True:
            assert proc.returncode is None, "the sandbox exited early"
            try:
                async with http.get(f"{url}/v1/balance", headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                    assert r.status == 200
                    return
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)


async def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while not _gone(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived its parent"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_command_serves_until_signalled_and_leaves_no_localstripe_behind(how: signal.Signals) -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.stripe_sandbox",
        "--port",
        str(port),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_serving(f"http://127.0.0.1:{port}", proc)
        children = _children(proc.pid)
        assert len(children) == 1  # the private localstripe
        proc.send_signal(how)
        code = await asyncio.wait_for(proc.wait(), 10)
        assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        await _wait_gone(children[0])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- the customer portal (localstripe has none) ---------------------------------------------------


async def test_a_billing_portal_session_names_a_live_customer_and_replays_under_its_key(
    sandbox: StripeSandbox, client: stripe.StripeClient
) -> None:
    customer = await client.v1.customers.create_async({"email": email()})
    params = {"customer": customer.id, "return_url": "https://billing.example.test/acme"}
    k = key("portal")
    first = await client.v1.billing_portal.sessions.create_async(params, {"idempotency_key": k})
    again = await client.v1.billing_portal.sessions.create_async(params, {"idempotency_key": k})
    assert first.id.startswith("bps_") and first.object == "billing_portal.session"
    assert (again.id, again.url) == (first.id, first.url) and first.url == f"{sandbox.url}/portal/{first.id}"
    assert (first.customer, first.return_url) == (customer.id, "https://billing.example.test/acme")
    async with aiohttp.ClientSession() as http:
        async with http.get(first.url) as page:
            assert page.status == 200 and customer.id in await page.text()
            assert "https://billing.example.test/acme" in await page.text()
        async with http.get(f"{sandbox.url}/portal/bps_unknown") as page:
            assert page.status == 404
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.billing_portal.sessions.create_async({"customer": "cus_nobody"}, {"idempotency_key": key("x")})
    assert refused.value.code == "resource_missing"
