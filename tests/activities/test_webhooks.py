"""Webhooks: verified before anything changes, processed once, Twilio status and STOP recorded."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
import stripe
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from twilio.request_validator import RequestValidator

from schemas.tables import MessageLog, RecipientOptOut, Retailer
from workers.webhooks import create_app

STRIPE_SECRET = "whsec_test_secret"
TWILIO_TOKEN = "twilio-auth-token"
BASE = "https://hooks.example.com"


def stripe_signed(event: dict, secret: str = STRIPE_SECRET) -> tuple[str, dict]:
    payload = json.dumps(event)
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", secret)
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


async def test_a_replayed_stripe_event_is_processed_once(http: TestClient, received: list[dict], engine: AsyncEngine) -> None:
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


async def test_twilio_status_callbacks_update_the_outbox_and_never_step_back(http: TestClient, engine: AsyncEngine) -> None:
    sid = "SM" + uuid.uuid4().hex
    async with engine.begin() as conn:
        await conn.execute(insert(MessageLog).values(
            idempotency_key=f"k:{sid}", recipient_type="retailer", recipient_id="1", channel="sms",
            template="credit_resumed", template_version=1, status="sent", provider_sid=sid,
        ))
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
