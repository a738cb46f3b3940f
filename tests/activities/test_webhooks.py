"""Webhooks: verified before anything changes, processed once, Twilio status and STOP recorded."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import pytest_asyncio
import stripe
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from twilio.request_validator import RequestValidator

from schemas.tables import MessageLog, RecipientOptOut, RecipientOptOutEvent, Retailer, WhatsAppSession
from workers.webhooks import create_app

STRIPE_SECRET = "whsec_test_secret"
TWILIO_TOKEN = "twilio-auth-token"
BASE = "https://hooks.example.com"


def stripe_signed(event: dict, secret: str = STRIPE_SECRET) -> tuple[str, dict]:
    payload = json.dumps(event)
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", secret)  # noqa: SLF001 - signed as Stripe signs
    return payload, {"Stripe-Signature": f"t={timestamp},v1={signature}", "Content-Type": "application/json"}


def twilio_signed(path: str, form: dict[str, str], token: str = TWILIO_TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(BASE + path, form)}


@pytest_asyncio.fixture(loop_scope="session")
async def received() -> list[dict]:
    return []


@pytest_asyncio.fixture(loop_scope="session")
async def http(engine: AsyncEngine, received: list[dict]) -> AsyncIterator[TestClient]:
    async def payment_succeeded(event: dict) -> None:
        received.append(event)

    app = create_app(
        engine,
        stripe_webhook_secret=STRIPE_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        public_base_url=BASE,
        stripe_handlers={"payment_intent.succeeded": payment_succeeded},
    )
    async with TestClient(TestServer(app)) as client:
        yield client


def event(kind: str = "payment_intent.succeeded") -> dict:
    return {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": kind, "data": {"object": {"id": "pi_1"}}}


async def test_a_replayed_stripe_event_is_processed_once(
    http: TestClient, received: list[dict], engine: AsyncEngine
) -> None:
    payload, headers = stripe_signed(event())
    first = await http.post("/webhooks/stripe", data=payload, headers=headers)
    replay = await http.post("/webhooks/stripe", data=payload, headers=headers)
    assert first.status == replay.status == 200
    assert (await replay.json())["duplicate"] is True
    assert len(received) == 1
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM processed_webhook_events")) == 1


async def test_forged_unsigned_or_malformed_stripe_bodies_get_400_and_change_nothing(
    http: TestClient, received: list[dict], engine: AsyncEngine
) -> None:
    before = len(received)
    payload, headers = stripe_signed(event(), secret="whsec_someone_else")
    assert (await http.post("/webhooks/stripe", data=payload, headers=headers)).status == 400
    assert (await http.post("/webhooks/stripe", data=payload)).status == 400
    garbage, headers = "{not json", stripe_signed(event())[1]
    assert (await http.post("/webhooks/stripe", data=garbage, headers=headers)).status == 400
    assert len(received) == before
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM processed_webhook_events")) <= 1


async def test_twilio_status_callbacks_update_the_outbox_and_never_step_back(
    http: TestClient, engine: AsyncEngine
) -> None:
    sid = "SM" + uuid.uuid4().hex
    async with engine.begin() as conn:
        await conn.execute(
            insert(MessageLog).values(
                idempotency_key=f"k:{sid}",
                recipient_type="retailer",
                recipient_id="1",
                channel="sms",
                template="credit_resumed",
                template_version=1,
                status="sent",
                provider_sid=sid,
            )
        )
    path = "/webhooks/twilio/status"
    for status in ("delivered", "sent"):  # out of order: 'sent' arrives last
        form = {"MessageSid": sid, "MessageStatus": status}
        assert (await http.post(path, data=form, headers=twilio_signed(path, form))).status == 204
    forged = {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "30003"}
    assert (await http.post(path, data=forged, headers=twilio_signed(path, forged, token="wrong"))).status == 400
    async with engine.connect() as conn:
        assert await conn.scalar(select(MessageLog.status).where(MessageLog.provider_sid == sid)) == "delivered"


async def test_an_inbound_stop_opts_the_sender_out(http: TestClient, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        rid = await conn.scalar(insert(Retailer).values(name="Ada", phone="+15557654321").returning(Retailer.id))
    path = "/webhooks/twilio/inbound"
    form = {"From": "whatsapp:+15557654321", "Body": " stop "}
    assert (await http.post(path, data=form, headers=twilio_signed(path, form))).status == 200
    async with engine.connect() as conn:
        channel = await conn.scalar(select(RecipientOptOut.channel).where(RecipientOptOut.recipient_id == str(rid)))
    assert channel == "whatsapp"


async def inbound(http: TestClient, phone: str, body: str, sid: str) -> None:
    path = "/webhooks/twilio/inbound"
    form = {"From": phone, "Body": body, "MessageSid": sid}
    assert (await http.post(path, data=form, headers=twilio_signed(path, form))).status == 200


async def sms_opt_outs(engine: AsyncEngine, rid: str) -> tuple[bool, list[str]]:
    async with engine.connect() as conn:
        opted_out = await conn.scalar(select(RecipientOptOut.channel).where(RecipientOptOut.recipient_id == rid))
        actions = (
            await conn.scalars(
                select(RecipientOptOutEvent.action)
                .where(RecipientOptOutEvent.recipient_id == rid)
                .order_by(RecipientOptOutEvent.id)
            )
        ).all()
    return opted_out == "sms", list(actions)


async def test_a_replayed_start_after_a_newer_stop_keeps_the_opt_out(http: TestClient, engine: AsyncEngine) -> None:
    """Issue #33: Twilio redelivers an inbound webhook it got no answer for, with no time in it. A
    START delivered again after the member's newer STOP lifted that STOP; each MessageSid now
    applies once."""
    phone = "+1555" + str(uuid.uuid4().int)[:7]
    async with engine.begin() as conn:
        rid = str(await conn.scalar(insert(Retailer).values(name="Ada", phone=phone).returning(Retailer.id)))
    start, stop = f"SM{uuid.uuid4().hex}", f"SM{uuid.uuid4().hex}"
    await inbound(http, phone, "STOP", f"SM{uuid.uuid4().hex}")
    await inbound(http, phone, "START", start)
    await inbound(http, phone, "STOP", stop)
    await inbound(http, phone, "START", start)  # the first START again
    assert await sms_opt_outs(engine, rid) == (True, ["opt_out", "opt_in", "opt_out"])


async def test_the_same_stop_delivered_twice_records_one_event(http: TestClient, engine: AsyncEngine) -> None:
    """A STOP delivered again after a newer START neither opts out again nor writes a second event."""
    phone = "+1555" + str(uuid.uuid4().int)[:7]
    async with engine.begin() as conn:
        rid = str(await conn.scalar(insert(Retailer).values(name="Ada", phone=phone).returning(Retailer.id)))
    stop = f"SM{uuid.uuid4().hex}"
    await inbound(http, phone, "STOP", stop)
    await inbound(http, phone, "STOP", stop)
    await inbound(http, phone, "START", f"SM{uuid.uuid4().hex}")
    await asyncio.gather(*(inbound(http, phone, "STOP", stop) for _ in range(3)))  # late, and at once
    assert await sms_opt_outs(engine, rid) == (False, ["opt_out", "opt_in"])


# --------------------------------------------------------------------------- WhatsApp sessions


async def whatsapp_in(
    http: TestClient, phone: str, sid: str, body: str = "hi", to: str = "whatsapp:+15005550006"
) -> None:
    path = "/webhooks/twilio/inbound"
    form = {"MessageSid": sid, "From": f"whatsapp:{phone}", "To": to, "Body": body}
    assert (await http.post(path, data=form, headers=twilio_signed(path, form))).status == 200


async def sessions(engine: AsyncEngine, phone: str) -> dict[str, datetime]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(WhatsAppSession.sender, WhatsAppSession.last_inbound_at).where(WhatsAppSession.phone == phone)
        )
    return {sender: at for sender, at in rows}


async def test_every_inbound_whatsapp_message_records_the_session_and_a_redelivery_never_moves_it(
    http: TestClient, engine: AsyncEngine
) -> None:
    """Any body, keywords too, opens the session with the sender it was written to. Twilio's webhook
    carries no time: a message's time is when its MessageSid first reached us, so an older message
    delivered again after a newer one moves the time neither back nor forward."""
    phone = "+1555" + str(uuid.uuid4().int)[:7]
    async with engine.begin() as conn:
        await conn.execute(insert(Retailer).values(name="Ada", phone=phone))
    older, newer = f"SM{uuid.uuid4().hex}", f"SM{uuid.uuid4().hex}"
    await whatsapp_in(http, phone, older, "ok thanks")
    first = await sessions(engine, phone)
    await whatsapp_in(http, phone, newer, "STOP")
    latest = await sessions(engine, phone)
    await whatsapp_in(http, phone, older, "ok thanks")  # Twilio delivers the older message again
    await asyncio.gather(*(whatsapp_in(http, phone, older, "ok thanks") for _ in range(3)))
    assert list(first) == ["whatsapp:+15005550006"]
    assert latest["whatsapp:+15005550006"] > first["whatsapp:+15005550006"]
    assert await sessions(engine, phone) == latest
    await whatsapp_in(http, phone, f"SM{uuid.uuid4().hex}", "hello", to="whatsapp:+15005550009")
    assert set(await sessions(engine, phone)) == {"whatsapp:+15005550006", "whatsapp:+15005550009"}


async def test_an_sms_or_a_strangers_whatsapp_message_records_no_session(http: TestClient, engine: AsyncEngine) -> None:
    """SMS has no such window; a number none of our recipients has is not stored (no new phone numbers)."""
    ours, stranger = ("+1555" + str(uuid.uuid4().int)[:7] for _ in range(2))
    async with engine.begin() as conn:
        await conn.execute(insert(Retailer).values(name="Ada", phone=ours))
    path = "/webhooks/twilio/inbound"
    form = {"MessageSid": f"SM{uuid.uuid4().hex}", "From": ours, "To": "+15005550006", "Body": "hi"}
    assert (await http.post(path, data=form, headers=twilio_signed(path, form))).status == 200
    await whatsapp_in(http, stranger, f"SM{uuid.uuid4().hex}")
    assert await sessions(engine, ours) == {}
    assert await sessions(engine, stranger) == {}


# --------------------------------------------------------------------------- bursts and handler failures


def invoice_failed(subscription: str) -> dict:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "invoice.payment_failed",
        "data": {"object": {"object": "invoice", "id": f"in_{uuid.uuid4().hex[:10]}", "subscription": subscription}},
    }


async def test_a_burst_of_fifty_signed_events_is_answered_2xx_and_each_is_processed_once(database_url: str) -> None:
    # A small pool: a receiver that held a connection while its handler takes another would
    # wedge itself (and time out) with two requests in flight.
    small = create_async_engine(database_url, pool_size=2, max_overflow=0, pool_timeout=5)
    handled: list[str] = []

    async def payment_failed(event: dict) -> None:
        """Like the domain's handlers: look the subscription up, then write what the event means."""
        subscription = event["data"]["object"]["subscription"]
        async with small.connect() as conn:
            await conn.scalar(
                text("SELECT count(*) FROM memberships WHERE stripe_subscription_id = :s"), {"s": subscription}
            )
        await asyncio.sleep(0.05)  # e.g. starting the case's workflow
        async with small.begin() as conn:
            await conn.execute(text("SELECT pg_sleep(0.01)"))
        handled.append(event["id"])

    app = create_app(
        small,
        stripe_webhook_secret=STRIPE_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        stripe_handlers={"invoice.payment_failed": payment_failed},
    )
    events = [invoice_failed(f"sub_{n}") for n in range(50)]
    try:
        async with TestClient(TestServer(app)) as http:

            async def deliver(event: dict) -> int:
                payload, headers = stripe_signed(event)
                async with http.post("/webhooks/stripe", data=payload, headers=headers) as answer:
                    return answer.status

            async with asyncio.timeout(10):
                statuses = await asyncio.gather(*(deliver(e) for e in events))
                replays = await asyncio.gather(*(deliver(e) for e in events[:10]))  # Stripe retrying some
        assert statuses == [200] * 50 and replays == [200] * 10
        assert sorted(handled) == sorted(e["id"] for e in events)  # each once
        async with small.connect() as conn:
            states = (
                await conn.execute(
                    text(
                        "SELECT status, count(*) FROM processed_webhook_events"
                        " WHERE event_id = ANY(:ids) GROUP BY status"
                    ),
                    {"ids": [e["id"] for e in events]},
                )
            ).all()
        assert dict(states) == {"processed": 50}
    finally:
        await small.dispose()


async def test_a_malformed_object_in_a_signed_event_is_recorded_as_failed_and_not_retried(engine: AsyncEngine) -> None:
    calls: list[str] = []

    async def payment_failed(event: dict) -> None:
        calls.append(event["id"])
        event["data"]["object"]["subscription"]  # the object is not an object

    app = create_app(
        engine,
        stripe_webhook_secret=STRIPE_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        stripe_handlers={"invoice.payment_failed": payment_failed},
    )
    malformed = {**invoice_failed("sub_x"), "data": {"object": "in_only_an_id"}}
    payload, headers = stripe_signed(malformed)
    async with TestClient(TestServer(app)) as http:
        first = await http.post("/webhooks/stripe", data=payload, headers=headers)
        assert first.status == 200, await first.text()  # 2xx: Stripe would retry a 5xx for three days
        assert (await first.json())["failed"] is True
        retry = await http.post("/webhooks/stripe", data=payload, headers=headers)
        assert retry.status == 200 and (await retry.json())["duplicate"] is True
    assert calls == [malformed["id"]]
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status, error FROM processed_webhook_events WHERE event_id = :e"), {"e": malformed["id"]}
            )
        ).one()
    assert row.status == "failed" and "TypeError" in row.error


async def test_a_transient_handler_error_is_a_5xx_and_stripes_retry_runs_the_handler_again(engine: AsyncEngine) -> None:
    calls: list[str] = []

    async def payment_failed(event: dict) -> None:
        calls.append(event["id"])
        if len(calls) == 1:
            raise ConnectionError("Temporal is restarting")

    app = create_app(
        engine,
        stripe_webhook_secret=STRIPE_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        stripe_handlers={"invoice.payment_failed": payment_failed},
    )
    event = invoice_failed("sub_y")
    payload, headers = stripe_signed(event)
    async with TestClient(TestServer(app)) as http:
        assert (await http.post("/webhooks/stripe", data=payload, headers=headers)).status >= 500
        retried = await http.post("/webhooks/stripe", data=payload, headers=headers)
        assert retried.status == 200 and (await retried.json())["duplicate"] is False
        again = await http.post("/webhooks/stripe", data=payload, headers=headers)
        assert (await again.json())["duplicate"] is True
    assert calls == [event["id"], event["id"]]
    async with engine.connect() as conn:
        assert (
            await conn.scalar(
                text("SELECT status FROM processed_webhook_events WHERE event_id = :e"), {"e": event["id"]}
            )
            == "processed"
        )
