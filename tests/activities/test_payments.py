"""The Stripe gateway (and the activities on it) through the real SDK over HTTP against the Stripe
sandbox, on real PostgreSQL.

The acceptance point of the gateways issue lives here: the same call retried after a timeout
(a real HTTP client timeout, Stripe having already created the object) creates one object at
localstripe, not two, because the retry carries the same business-id Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import aiohttp
import pytest
import stripe
from aiohttp import web
from multidict import CIMultiDict
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.payments.activities import PaymentActivities
from activities.payments.client import close_stripe_client, stripe_client
from activities.payments.gateway import StripeGateway, stripe_errors, to_minor_units
from devtools.stripe_sandbox import StripeSandbox
from schemas.payments import (
    CancelSubscription,
    CheckoutSessionLine,
    CheckoutSessionRequest,
    ExtendSubscription,
    PaymentIntentStatus,
)
from schemas.tables import Company, Customer, Membership, Retailer

API_KEY = "sk_test_jobctl"  # the key of the shared `stripe_api` fixture
PAY_PAGE = "https://pay.example.test/p/"
PERSON = "Ama Owusu"  # must never reach Stripe, a payload or a result


# --- harness -----------------------------------------------------------------------------------


@pytest.fixture
def client(stripe_api: stripe.StripeClient) -> stripe.StripeClient:
    return stripe_api


@pytest.fixture
def gw(engine: AsyncEngine, client: stripe.StripeClient) -> StripeGateway:
    return StripeGateway(client, engine, success_url=PAY_PAGE)


@pytest.fixture
def acts(gw: StripeGateway) -> PaymentActivities:
    return PaymentActivities(gw)


async def run(fn, arg):  # type: ignore[no-untyped-def]
    return await ActivityEnvironment().run(fn, arg)


async def new_retailer(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        return await conn.scalar(insert(Retailer).values(name=PERSON, phone="+15550001111").returning(Retailer.id))


async def new_member(engine: AsyncEngine) -> int:
    company = f"co-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(insert(Company).values(id=company, name="Gym"))
        return await conn.scalar(
            insert(Membership).values(company_id=company, name=PERSON, phone="+15550002222").returning(Membership.id)
        )


async def stored_customer_id(engine: AsyncEngine, table: type, owner_id: int) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(select(table.stripe_customer_id).where(table.id == owner_id))


async def customers_of(client: stripe.StripeClient, owner_type: str, owner_id: int) -> list[str]:
    page = await client.v1.customers.list_async({"limit": 100})
    return [c.id for c in page.data if c.metadata.to_dict() == {"owner_type": owner_type, "owner_id": str(owner_id)}]


async def intents_of(client: stripe.StripeClient, customer_id: str) -> list[str]:
    page = await client.v1.payment_intents.list_async({"limit": 100})
    return [pi.id for pi in page.data if pi.customer == customer_id]


async def sessions_of(client: stripe.StripeClient, customer_id: str) -> list[str]:
    page = await client.v1.checkout.sessions.list_async({"customer": customer_id, "limit": 100})
    return [cs.id for cs in page.data]


def session_request(retailer_id: int, amount: str = "150.25", key: str | None = None) -> CheckoutSessionRequest:
    return CheckoutSessionRequest(
        retailer_id=retailer_id,
        amount=Decimal(amount),
        idempotency_key=key or f"reminder:{retailer_id}:{uuid.uuid4().hex[:8]}",
        description="2 open debits",
    )


PASSED_HEADERS = ("content-type", "request-id", "idempotent-replayed", "idempotency-key", "original-request")


class SlowProxy:
    """An HTTP hop in front of the sandbox that answers slowly on one path.

    The request reaches Stripe at once and Stripe answers; the proxy holds the answer back for
    ``delay_s``, so a client with a shorter timeout gives up after the object was created.
    """

    def __init__(self, upstream: str, path: str, delay_s: float) -> None:
        self.upstream = upstream.rstrip("/")
        self.path = path
        self.delay_s = delay_s
        self.upstream_answered = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in ("host", "content-length"))
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=await request.read(), headers=headers
        ) as upstream:
            body = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() in PASSED_HEADERS}
            status = upstream.status
        if request.method == "POST" and request.path == self.path:
            self.upstream_answered.set()
            await asyncio.sleep(self.delay_s)
        return web.Response(status=status, body=body, headers=out)

    async def __aenter__(self) -> SlowProxy:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()


# --- the acceptance test: a retry after a timeout creates one object ---------------------------


async def test_a_checkout_session_retried_after_a_timeout_is_one_session(
    engine: AsyncEngine, sandbox: StripeSandbox, client: stripe.StripeClient
) -> None:
    retailer_id = await new_retailer(engine)
    request = session_request(retailer_id, "42.50", key=f"reminder:{retailer_id}:2026-11-23")
    async with SlowProxy(sandbox.url, "/v1/checkout/sessions", delay_s=2.0) as proxy:
        slow = stripe_client(API_KEY, proxy.url, timeout_s=0.5)
        try:
            gateway = StripeGateway(slow, engine, success_url=PAY_PAGE)
            started = time.monotonic()
            with pytest.raises(ApplicationError) as timed_out:
                await gateway.create_checkout_session(request)
            assert time.monotonic() - started < 1.9  # the client gave up; the proxy had not answered
            assert timed_out.value.type == "StripeUnavailable" and not timed_out.value.non_retryable
            assert proxy.upstream_answered.is_set()

            # Stripe did create the session: the timeout was on the way back.
            customer_id = await stored_customer_id(engine, Retailer, retailer_id)
            assert customer_id is not None
            created = await sessions_of(client, customer_id)
            assert len(created) == 1

            # The retry (the pay link's, `paylinks.paced`): the same request, the network healthy again.
            proxy.delay_s = 0
            link = await gateway.create_checkout_session(request)
        finally:
            await close_stripe_client(slow)

    assert link.checkout_session_id == created[0]
    assert link.url == f"{sandbox.url}/pay/{created[0]}"
    assert await sessions_of(client, customer_id) == created  # one object at the sandbox, not two
    assert await customers_of(client, "retailer", retailer_id) == [customer_id]
    session = await client.v1.checkout.sessions.retrieve_async(created[0])
    assert (session.amount_total, session.currency, session.status) == (4250, "usd", "open")


# --- customers ---------------------------------------------------------------------------------


async def test_ensure_customer_creates_one_and_stores_it(
    engine: AsyncEngine, gw: StripeGateway, client: stripe.StripeClient
) -> None:
    retailer_id = await new_retailer(engine)
    first = await gw.ensure_customer("retailer", retailer_id)
    again = await gw.ensure_customer("retailer", retailer_id)

    assert first.created and not again.created
    assert again.stripe_customer_id == first.stripe_customer_id
    assert await stored_customer_id(engine, Retailer, retailer_id) == first.stripe_customer_id
    assert await customers_of(client, "retailer", retailer_id) == [first.stripe_customer_id]
    customer = await client.v1.customers.retrieve_async(first.stripe_customer_id)
    assert customer.metadata.to_dict() == {"owner_type": "retailer", "owner_id": str(retailer_id)}
    assert customer.name is None and customer.email is None and PERSON not in str(customer)
    assert PERSON not in first.model_dump_json()


async def test_concurrent_and_lost_ensure_customer_calls_create_one(
    engine: AsyncEngine, gw: StripeGateway, client: stripe.StripeClient
) -> None:
    member_id = await new_member(engine)
    results = await asyncio.gather(*(gw.ensure_customer("member", member_id) for _ in range(4)))
    assert len({r.stripe_customer_id for r in results}) == 1
    assert await customers_of(client, "member", member_id) == [results[0].stripe_customer_id]

    # A crash after Stripe created the customer but before the id was stored: the retry's key replays it.
    async with engine.begin() as conn:
        customer_row = await conn.scalar(insert(Customer).values(name=PERSON).returning(Customer.id))
    lost = await client.v1.customers.create_async(
        {"metadata": {"owner_type": "customer", "owner_id": str(customer_row)}},
        {"idempotency_key": f"customer:customer:{customer_row}"},
    )
    retried = await gw.ensure_customer("customer", customer_row)
    assert retried.stripe_customer_id == lost.id and not retried.created
    assert await stored_customer_id(engine, Customer, customer_row) == lost.id
    assert await customers_of(client, "customer", customer_row) == [lost.id]


async def test_unknown_owner_is_permanent(gw: StripeGateway) -> None:
    with pytest.raises(ApplicationError) as error:
        await gw.ensure_customer("retailer", 987654321)
    assert (error.value.type, error.value.non_retryable) == ("UnknownOwner", True)


# --- Checkout Sessions -------------------------------------------------------------------------


async def test_checkout_session_same_key_twice_is_one_session(
    engine: AsyncEngine, sandbox: StripeSandbox, gw: StripeGateway, client: stripe.StripeClient
) -> None:
    retailer_id = await new_retailer(engine)
    request = session_request(retailer_id, "1234.50").model_copy(
        update={
            "lines": [
                CheckoutSessionLine(description="Invoice 7", amount=Decimal("1000.00")),
                CheckoutSessionLine(description="Invoice 9", amount=Decimal("234.50")),
            ],
            "metadata": {"debit_ids": "7,9"},
        }
    )
    first = await gw.create_checkout_session(request)
    again = await gw.create_checkout_session(request)

    assert first == again
    assert first.url == f"{sandbox.url}/pay/{first.checkout_session_id}" and first.amount == Decimal("1234.50")
    assert first.checkout_session_id and first.status == "open"
    assert await sessions_of(client, first.stripe_customer_id) == [first.checkout_session_id]
    session = await client.v1.checkout.sessions.retrieve_async(first.checkout_session_id)
    assert (session.mode, session.amount_total, session.currency, session.customer) == (
        "payment",
        123450,
        "usd",
        first.stripe_customer_id,
    )
    assert session.metadata.to_dict() == {
        "retailer_id": str(retailer_id),
        "payment_link_key": request.idempotency_key,
        "description": "2 open debits",
        "debit_ids": "7,9",
    }
    items = await client.v1.checkout.sessions.line_items.list_async(first.checkout_session_id)
    assert [(i.description, i.amount_total) for i in items.data] == [("Invoice 7", 100000), ("Invoice 9", 23450)]

    other = await gw.create_checkout_session(session_request(retailer_id, "10"))
    assert other.checkout_session_id != first.checkout_session_id
    assert sorted(await sessions_of(client, first.stripe_customer_id)) == sorted(
        [first.checkout_session_id, other.checkout_session_id]
    )
    expired = await gw.expire_checkout_session(other.checkout_session_id, retailer_id)
    assert expired.status == "expired"
    assert (await gw.expire_checkout_session(other.checkout_session_id, retailer_id)).status == "expired"  # a retry

    # The same key for another amount is a caller bug, refused by Stripe and not retried.
    with pytest.raises(ApplicationError) as reused:
        await gw.create_checkout_session(session_request(retailer_id, "99.99", key=request.idempotency_key))
    assert (reused.value.type, reused.value.non_retryable) == ("IdempotencyKeyReused", True)


@pytest.mark.parametrize("amount", ["0", "-1", "1.005", "0.001", "1000000.00"])
async def test_invalid_amounts_are_refused_before_stripe(
    engine: AsyncEngine, gw: StripeGateway, client: stripe.StripeClient, amount: str
) -> None:
    retailer_id = await new_retailer(engine)
    with pytest.raises(ApplicationError) as error:
        await gw.create_checkout_session(session_request(retailer_id, amount))
    assert (error.value.type, error.value.non_retryable) == ("InvalidAmount", True)
    assert await customers_of(client, "retailer", retailer_id) == []  # nothing reached Stripe


def test_minor_units_are_exact() -> None:
    assert to_minor_units(Decimal("150.25"), "usd") == 15025
    assert to_minor_units(Decimal("1.10"), "eur") == 110
    assert to_minor_units(Decimal("1.500"), "usd") == 150  # trailing zeros are still 2 decimals
    assert to_minor_units(Decimal("500"), "jpy") == 500
    with pytest.raises(ApplicationError, match="decimal places"):
        to_minor_units(Decimal("500.5"), "jpy")
    with pytest.raises(ApplicationError) as three:
        to_minor_units(Decimal("1.000"), "kwd")
    assert three.value.type == "UnsupportedCurrency"


async def test_checkout_session_needs_no_page_of_ours(
    engine: AsyncEngine, sandbox: StripeSandbox, client: stripe.StripeClient
) -> None:
    retailer_id = await new_retailer(engine)
    link = await StripeGateway(client, engine).create_checkout_session(session_request(retailer_id))
    assert link.url == f"{sandbox.url}/pay/{link.checkout_session_id}"


async def test_a_customer_stripe_lost_is_created_again_once(
    engine: AsyncEngine, gw: StripeGateway, client: stripe.StripeClient
) -> None:
    retailer_id = await new_retailer(engine)
    first = await gw.create_checkout_session(session_request(retailer_id))
    await client.v1.customers.delete_async(first.stripe_customer_id)  # gone at Stripe, still in our row

    relinked = await gw.create_checkout_session(session_request(retailer_id))
    again = await gw.create_checkout_session(session_request(retailer_id))  # later links use the new one

    assert relinked.stripe_customer_id != first.stripe_customer_id
    assert again.stripe_customer_id == relinked.stripe_customer_id
    assert await stored_customer_id(engine, Retailer, retailer_id) == relinked.stripe_customer_id
    assert await customers_of(client, "retailer", retailer_id) == [relinked.stripe_customer_id]
    # A retry of the re-creation (the same stale id) gets the same customer back, not a third.
    retried = await gw._replace_customer("retailer", retailer_id, first.stripe_customer_id)  # noqa: SLF001 - the retry path alone
    assert retried == relinked.stripe_customer_id
    assert await customers_of(client, "retailer", retailer_id) == [relinked.stripe_customer_id]


# --- subscriptions -----------------------------------------------------------------------------


async def subscribed_member(
    engine: AsyncEngine, gw: StripeGateway, client: stripe.StripeClient, trial_days: int
) -> tuple[int, str, int]:
    """A member with a Stripe subscription in a trial; returns (membership id, subscription id, trial end)."""
    member_id = await new_member(engine)
    customer = await gw.ensure_customer("member", member_id)
    plan = await client.v1.plans.create_async(
        {"amount": 2900, "currency": "usd", "interval": "month", "product": {"name": "Gold"}},
        {"idempotency_key": f"test-plan:{uuid.uuid4().hex}"},
    )
    trial_end = int(time.time()) + trial_days * 86_400
    subscription = await client.v1.subscriptions.create_async(
        {"customer": customer.stripe_customer_id, "items": [{"plan": plan.id}], "trial_end": trial_end},
        {"idempotency_key": f"test-sub:{member_id}"},
    )
    async with engine.begin() as conn:
        await conn.execute(
            update(Membership).where(Membership.id == member_id).values(stripe_subscription_id=subscription.id)
        )
    return member_id, subscription.id, trial_end


async def test_extend_subscription_moves_the_trial_end_once_per_key(
    engine: AsyncEngine, gw: StripeGateway, acts: PaymentActivities, client: stripe.StripeClient
) -> None:
    member_id, subscription_id, trial_end = await subscribed_member(engine, gw, client, trial_days=3)
    request = ExtendSubscription(membership_id=member_id, days=7, idempotency_key=f"incentive:{member_id}")

    extended = await run(acts.extend_subscription, request)
    assert extended.subscription_id == subscription_id and not extended.already_applied
    assert extended.trial_end is not None and int(extended.trial_end.timestamp()) == trial_end + 7 * 86_400
    assert (await client.v1.subscriptions.retrieve_async(subscription_id)).trial_end == trial_end + 7 * 86_400

    # A retry (e.g. after a lost response): recognised, not extended again.
    again = await run(acts.extend_subscription, request)
    assert again.already_applied and again.trial_end == extended.trial_end
    assert (await client.v1.subscriptions.retrieve_async(subscription_id)).trial_end == trial_end + 7 * 86_400
    async with engine.connect() as conn:
        period_end = await conn.scalar(select(Membership.current_period_end).where(Membership.id == member_id))
    assert period_end == extended.current_period_end and period_end >= extended.trial_end

    # Another incentive (another key) extends from the new trial end.
    more = await run(
        acts.extend_subscription, ExtendSubscription(membership_id=member_id, days=2, idempotency_key="incentive:2nd")
    )
    assert int(more.trial_end.timestamp()) == trial_end + 9 * 86_400 and not more.already_applied


async def test_cancel_subscription_is_idempotent(
    engine: AsyncEngine, gw: StripeGateway, acts: PaymentActivities, client: stripe.StripeClient
) -> None:
    member_id, subscription_id, _ = await subscribed_member(engine, gw, client, trial_days=5)
    at_end = await run(
        acts.cancel_subscription,
        CancelSubscription(membership_id=member_id, idempotency_key=f"churn:{member_id}", at_period_end=True),
    )
    assert at_end.cancel_at_period_end and at_end.status != "canceled" and not at_end.already_cancelled

    request = CancelSubscription(membership_id=member_id, idempotency_key=f"terminate:{member_id}")
    cancelled = await run(acts.cancel_subscription, request)
    assert (cancelled.status, cancelled.already_cancelled) == ("canceled", False)
    assert cancelled.canceled_at is not None
    again = await run(acts.cancel_subscription, request)
    assert (again.status, again.already_cancelled) == ("canceled", True)
    assert (await client.v1.subscriptions.retrieve_async(subscription_id)).status == "canceled"

    with pytest.raises(ApplicationError) as error:
        await run(acts.extend_subscription, ExtendSubscription(membership_id=member_id, days=3, idempotency_key="late"))
    assert (error.value.type, error.value.non_retryable) == ("SubscriptionNotActive", True)


async def test_member_without_subscription_is_permanent(engine: AsyncEngine, acts: PaymentActivities) -> None:
    member_id = await new_member(engine)
    with pytest.raises(ApplicationError) as error:
        await run(acts.extend_subscription, ExtendSubscription(membership_id=member_id, days=3, idempotency_key="k"))
    assert (error.value.type, error.value.non_retryable) == ("NoSubscription", True)


# --- PaymentIntents ----------------------------------------------------------------------------


async def test_payment_intent_status_reports_success_and_refunds(
    acts: PaymentActivities, client: stripe.StripeClient
) -> None:
    key = uuid.uuid4().hex
    intent = await client.v1.payment_intents.create_async(
        {"amount": 2500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True},
        {"idempotency_key": f"test-pi:{key}"},
    )
    status = await run(acts.payment_intent_status, PaymentIntentStatus(id=intent.id))
    assert (status.status, status.amount, status.amount_refunded) == ("succeeded", Decimal("25.00"), Decimal("0"))
    assert not status.refunded and not status.fully_refunded

    await client.v1.refunds.create_async(
        {"payment_intent": intent.id, "amount": 1000}, {"idempotency_key": f"test-refund:{key}:1"}
    )
    partly = await run(acts.payment_intent_status, PaymentIntentStatus(id=intent.id))
    assert (partly.amount_refunded, partly.refunded, partly.fully_refunded) == (Decimal("10.00"), True, False)

    # The rest, explicitly: localstripe refunds the whole amount again when `amount` is left out.
    await client.v1.refunds.create_async(
        {"payment_intent": intent.id, "amount": 1500}, {"idempotency_key": f"test-refund:{key}:2"}
    )
    fully = await run(acts.payment_intent_status, PaymentIntentStatus(id=intent.id))
    assert (fully.amount_refunded, fully.refunded, fully.fully_refunded) == (Decimal("25.00"), True, True)


async def test_declined_card_is_card_declined_and_not_retried(
    acts: PaymentActivities, client: stripe.StripeClient
) -> None:
    params = {"amount": 1200, "currency": "usd", "payment_method": "pm_card_chargeCustomerFail", "confirm": True}
    with pytest.raises(ApplicationError) as error:
        async with stripe_errors("charge"):
            await client.v1.payment_intents.create_async(params, {"idempotency_key": f"test-decline:{uuid.uuid4()}"})
    assert (error.value.type, error.value.non_retryable) == ("CardDeclined", True)
    assert error.value.details[0]["code"] == "card_declined"

    declined = (await client.v1.payment_intents.list_async({"limit": 100})).data
    intent_id = next(pi.id for pi in declined if pi.status == "requires_payment_method" and pi.amount == 1200)
    status = await run(acts.payment_intent_status, PaymentIntentStatus(id=intent_id))
    assert (status.status, status.refunded) == ("requires_payment_method", False)


async def test_unknown_payment_intent_is_a_permanent_invalid_request(acts: PaymentActivities) -> None:
    with pytest.raises(ApplicationError) as error:
        await run(acts.payment_intent_status, PaymentIntentStatus(id="pi_doesnotexist"))
    assert (error.value.type, error.value.non_retryable) == ("StripeInvalidRequest", True)
    assert error.value.details[0]["http_status"] == 404


async def test_unreachable_stripe_is_retryable(engine: AsyncEngine) -> None:
    dead = stripe_client(API_KEY, "http://127.0.0.1:9", timeout_s=1)
    try:
        with pytest.raises(ApplicationError) as error:
            activities = PaymentActivities(StripeGateway(dead, engine))
            await run(activities.payment_intent_status, PaymentIntentStatus(id="pi_x"))
    finally:
        await close_stripe_client(dead)
    assert (error.value.type, error.value.non_retryable) == ("StripeUnavailable", False)


@pytest.mark.parametrize(
    ("error", "expected_type", "retryable"),
    [
        (stripe.AuthenticationError("bad key", http_status=401), "StripeAuthentication", False),
        (stripe.PermissionError("not allowed", http_status=403), "StripePermission", False),
        (stripe.IdempotencyError("key reused", http_status=400), "IdempotencyKeyReused", False),
        (stripe.InvalidRequestError("no such thing", "id", http_status=404), "StripeInvalidRequest", False),
        (stripe.RateLimitError("slow down", http_status=429), "StripeUnavailable", True),
        (stripe.APIError("in flight", http_status=409), "StripeUnavailable", True),
        (stripe.APIError("boom", http_status=503), "StripeUnavailable", True),
        (stripe.APIConnectionError("timed out"), "StripeUnavailable", True),
    ],
)
async def test_stripe_errors_map_to_retry_policy_types(
    error: stripe.StripeError, expected_type: str, retryable: bool
) -> None:
    with pytest.raises(ApplicationError) as raised:
        async with stripe_errors("op"):
            raise error
    assert (raised.value.type, raised.value.non_retryable) == (expected_type, not retryable)


def test_payloads_refuse_non_finite_amounts_and_odd_keys() -> None:
    with pytest.raises(ValueError):
        CheckoutSessionRequest(retailer_id=1, amount=Decimal("NaN"), idempotency_key="k")
    with pytest.raises(ValueError):
        CheckoutSessionRequest(retailer_id=1, amount=Decimal("1"), idempotency_key="has a space")
