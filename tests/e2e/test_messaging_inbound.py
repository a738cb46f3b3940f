"""Inbound keywords over the signed Twilio webhook: STOP and START per channel, HELP answered once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.messaging.twilio_gateway import TwilioGateway
from config.settings import load_settings
from devtools.twilio_emulator import TwilioEmulator
from schemas.tables import RecipientOptOutEvent, Retailer
from services.messaging import reply_help
from tests.activities.test_messaging import activities, emulator_log, reminder, unique_phone
from tests.activities.test_webhooks import BASE, STRIPE_SECRET, TWILIO_TOKEN, twilio_signed
from workers.webhooks import OPT_IN_WORDS, OPT_OUT_WORDS, create_app
from workflows.messaging import MessageBatchWorkflow

PATH = "/webhooks/twilio/inbound"


@pytest_asyncio.fixture(loop_scope="session")
async def inbound(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, gateway: TwilioGateway, task_queue: str
) -> AsyncIterator[TestClient]:
    """The webhook app, its HELP replies sent by real workers on the dev server."""
    settings = load_settings(task_queue=task_queue, messaging_task_queue=f"{task_queue}-msg")
    app = create_app(
        engine,
        stripe_webhook_secret=STRIPE_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        public_base_url=BASE,
        help_reply=lambda t, r, sid: reply_help(dev_env.client, settings, t, r, sid),
    )
    async with (
        Worker(dev_env.client, task_queue=task_queue, workflows=[MessageBatchWorkflow]),
        Worker(
            dev_env.client,
            task_queue=settings.messaging_task_queue,
            activities=[(sends := activities(engine, gateway)).send_message, sends.send_messages],
        ),
        TestClient(TestServer(app)) as client,
    ):
        yield client


async def say(http: TestClient, sender: str, body: str, sid: str | None = None) -> None:
    form = {"From": sender, "Body": body, "MessageSid": sid or f"SM{uuid.uuid4().hex}"}
    response = await http.post(PATH, data=form, headers=twilio_signed(PATH, form))
    assert response.status == 200


async def new_retailer(engine: AsyncEngine, channel: str) -> tuple[str, str]:
    phone = unique_phone()
    async with engine.begin() as conn:
        rid = await conn.scalar(
            insert(Retailer).values(name="Esi Boateng", phone=phone, preferred_channel=channel).returning(Retailer.id)
        )
    return str(rid), phone


async def test_stop_then_start_lets_the_next_message_out_and_is_audited(
    inbound: TestClient, engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    rid, phone = await new_retailer(engine, "sms")
    send = activities(engine, gateway).send_message
    await say(inbound, phone, "Stop")
    held = await ActivityEnvironment().run(send, reminder(rid))
    await say(inbound, phone, " start ")
    sent = await ActivityEnvironment().run(send, reminder(rid))

    assert (held.status, held.reason) == ("suppressed", "opted_out")
    assert sent.status == "sent"
    assert len(await emulator_log(emulator, phone)) == 1
    async with engine.connect() as conn:
        history = (
            await conn.execute(
                select(RecipientOptOutEvent.action, RecipientOptOutEvent.channel, RecipientOptOutEvent.reason)
                .where(RecipientOptOutEvent.recipient_id == rid)
                .order_by(RecipientOptOutEvent.id)
            )
        ).all()
    assert history == [("opt_out", "sms", "inbound STOP"), ("opt_in", "sms", "inbound START")]


async def test_stop_on_sms_does_not_block_whatsapp(
    inbound: TestClient, engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    rid, phone = await new_retailer(engine, "whatsapp")
    await say(inbound, phone, "STOP")
    outcome = await ActivityEnvironment().run(activities(engine, gateway).send_message, reminder(rid))
    assert (outcome.status, outcome.channel) == ("sent", "whatsapp")
    assert len(await emulator_log(emulator, f"whatsapp:{phone}")) == 1


async def test_help_gets_one_reply_even_when_twilio_delivers_the_webhook_twice(
    inbound: TestClient, engine: AsyncEngine, emulator: TwilioEmulator
) -> None:
    _, phone = await new_retailer(engine, "sms")
    sid = f"SM{uuid.uuid4().hex}"
    await say(inbound, phone, "help", sid)
    await say(inbound, phone, "HELP", sid)
    deadline = time.monotonic() + 60
    while not (replies := await emulator_log(emulator, phone)):
        assert time.monotonic() < deadline, "no HELP reply"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # a second reply, if there were one, would be on its way by now
    assert len(await emulator_log(emulator, phone)) == 1
    assert "Reply STOP" in replies[0]["body"]


def test_twilios_default_keywords_are_all_recognised() -> None:
    assert {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"} <= OPT_OUT_WORDS
    assert {"START", "UNSTOP", "YES"} <= OPT_IN_WORDS
