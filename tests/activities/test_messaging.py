"""The messaging gateway against the Twilio emulator, through the real SDK and a real PostgreSQL."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import psycopg
import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.database import create_engine
from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.templates import get_template, load_catalogue
from activities.messaging.twilio_gateway import TwilioGateway
from devtools.content_templates import dev_content_sids, emulator_templates
from devtools.twilio_emulator import TwilioEmulator
from schemas.messaging import SendMessage
from schemas.tables import MessageLog, RecipientOptOut, Retailer
from workers.log import configure_logging

SENDERS = Senders(whatsapp="whatsapp:+15005550006", sms="+15005550006")
NO_QUIET_HOURS = QuietHours(0, 0)


def activities(engine: AsyncEngine, gateway: TwilioGateway, **policy: object) -> MessagingActivities:
    return MessagingActivities(engine, gateway, SENDERS, SendPolicy(**{"quiet_hours": NO_QUIET_HOURS, **policy}))


async def emulator_log(emulator: TwilioEmulator, to: str) -> list[dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/messages", params={"to": to}) as response:
            return await response.json()


async def retailer(engine: AsyncEngine, phone: str | None, *, channel: str = "sms", tz: str = "UTC") -> str:
    async with engine.begin() as conn:
        rid = await conn.scalar(
            insert(Retailer)
            .values(name="Kofi Mensah", phone=phone, preferred_channel=channel, timezone=tz)
            .returning(Retailer.id)
        )
    return str(rid)


def unique_phone() -> str:
    return "+1555" + str(uuid.uuid4().int)[:7]


def reminder(recipient_id: str, key: str | None = None) -> SendMessage:
    return SendMessage(
        idempotency_key=key or f"test:{uuid.uuid4()}",
        recipient_type="retailer",
        recipient_id=recipient_id,
        template="payment_reminder",
        params={"debit_count": 2, "amount_due": "150.00", "payment_link": "https://pay.example/x"},
    )


async def row(engine: AsyncEngine, key: str):
    async with engine.connect() as conn:
        return (await conn.execute(select(MessageLog.__table__).where(MessageLog.idempotency_key == key))).one()


async def test_a_message_goes_out_once_per_key_and_never_stores_text_or_phone(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    phone = unique_phone()
    rid = await retailer(engine, phone)
    send = activities(engine, gateway).send_message
    message = reminder(rid)

    first = await ActivityEnvironment().run(send, message)
    again = await ActivityEnvironment().run(send, message)

    assert first.status == "sent" and not first.duplicate
    assert again.provider_sid == first.provider_sid and again.duplicate
    sent = await emulator_log(emulator, phone)
    assert len(sent) == 1
    assert sent[0]["body"].startswith("Hi Kofi, a friendly reminder: 2 invoice(s) totalling $150.00")
    stored = await row(engine, message.idempotency_key)
    assert stored.status == "sent" and stored.provider_sid == first.provider_sid and stored.attempts == 1
    assert phone not in str(tuple(stored)) and "Kofi" not in str(tuple(stored))


@pytest.mark.parametrize(
    ("to", "code", "error_type"),
    [
        ("+15005550001", 21211, "InvalidRecipient"),
        ("+15005550002", 21612, "InvalidRecipient"),
        ("+15005550003", 21408, "InvalidRecipient"),
        ("+15005550009", 21614, "InvalidRecipient"),
        ("+15005550004", 21610, "RecipientOptedOut"),
    ],
)
async def test_twilio_magic_numbers_map_to_permanent_errors_and_are_recorded(
    engine: AsyncEngine, gateway: TwilioGateway, to: str, code: int, error_type: str
) -> None:
    rid = await retailer(engine, to)
    message = reminder(rid)
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities(engine, gateway).send_message, message)
    assert raised.value.type == error_type and raised.value.non_retryable
    stored = await row(engine, message.idempotency_key)
    assert (stored.status, stored.error_code, stored.reason) == ("failed", code, error_type)


async def test_an_opted_out_recipient_is_suppressed_on_the_next_send(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    rid = await retailer(engine, "+15005550004")
    send = activities(engine, gateway).send_message
    with pytest.raises(ApplicationError):
        await ActivityEnvironment().run(send, reminder(rid))
    async with engine.connect() as conn:
        assert await conn.scalar(select(RecipientOptOut.reason).where(RecipientOptOut.recipient_id == rid))

    before = len(await emulator_log(emulator, "+15005550004"))
    outcome = await ActivityEnvironment().run(send, reminder(rid))
    assert (outcome.status, outcome.reason) == ("suppressed", "opted_out")
    assert len(await emulator_log(emulator, "+15005550004")) == before


@pytest.mark.parametrize(("sender", "code"), [("+15005550001", 21212), ("+15005550007", 21606)])
async def test_a_bad_sender_is_a_permanent_error(
    engine: AsyncEngine, gateway: TwilioGateway, sender: str, code: int
) -> None:
    rid = await retailer(engine, unique_phone())
    bad = MessagingActivities(
        engine, gateway, Senders(whatsapp=f"whatsapp:{sender}", sms=sender), SendPolicy(quiet_hours=NO_QUIET_HOURS)
    )
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(bad.send_message, reminder(rid))
    assert raised.value.type == "InvalidSender"


async def test_whatsapp_outside_the_session_window_sends_the_approved_template(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    """A kind with a Content SID goes out as that template (no inbound from the recipient: out of
    session), its variables in body order; Twilio shows the rendered text."""
    sids = dev_content_sids()
    catalogue = load_catalogue().with_content_sids(sids)
    phone = unique_phone()
    emulator.state.reconfigure({"whatsapp_session_closed": [phone], "content_templates": emulator_templates(catalogue)})
    try:
        rid = await retailer(engine, phone, channel="whatsapp")
        sends = MessagingActivities(
            engine, gateway, SENDERS, SendPolicy(quiet_hours=NO_QUIET_HOURS), catalogue=catalogue
        )
        outcome = await ActivityEnvironment().run(sends.send_message, reminder(rid))
    finally:
        emulator.state.reconfigure({"content_templates": {}})
    assert (outcome.status, outcome.channel) == ("sent", "whatsapp")
    (sent,) = await emulator_log(emulator, f"whatsapp:{phone}")
    assert sent["content_sid"] == sids["payment_reminder"]["en"]
    assert json.loads(sent["content_variables"]) == {
        "1": "Kofi",
        "2": "2",
        "3": "$150.00",
        "4": "https://pay.example/x",
    }
    assert sent["body"].startswith("Hi Kofi, a friendly reminder: 2 invoice(s) totalling $150.00")


async def test_an_opt_out_on_the_sms_fallback_is_an_sms_opt_out(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    """WhatsApp's window is closed and the template has no approved WhatsApp version, so the send
    falls back to SMS, where the number has unsubscribed (21610): SMS is opted out, WhatsApp is not."""
    phone = unique_phone()
    emulator.state.reconfigure({"whatsapp_session_closed": [phone], "refusals": {phone: 21610}})
    rid = await retailer(engine, phone, channel="whatsapp")
    message = SendMessage(
        idempotency_key=f"test:{uuid.uuid4()}",
        recipient_type="retailer",
        recipient_id=rid,
        template="insight",
        params={"insight_message": "Your best seller this week: rice"},
    )
    assert get_template("insight").whatsapp_content_sid is None
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities(engine, gateway).send_message, message)

    assert raised.value.type == "RecipientOptedOut"
    async with engine.connect() as conn:
        channels = set(await conn.scalars(select(RecipientOptOut.channel).where(RecipientOptOut.recipient_id == rid)))
    assert channels == {"sms"}
    stored = await row(engine, message.idempotency_key)
    assert (stored.status, stored.channel, stored.error_code) == ("failed", "sms", 21610)
    assert await emulator_log(emulator, phone) == [] and await emulator_log(emulator, f"whatsapp:{phone}") == []


async def test_daily_cap_and_quiet_hours_hold_messages_back_and_say_why(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    phone = unique_phone()
    rid = await retailer(engine, phone)
    capped = activities(engine, gateway, daily_cap=2).send_message
    outcomes = [await ActivityEnvironment().run(capped, reminder(rid)) for _ in range(3)]
    assert [o.status for o in outcomes] == ["sent", "sent", "suppressed"]
    assert outcomes[2].reason == "daily_cap"
    assert len(await emulator_log(emulator, phone)) == 2

    # A zone where it is 23:00 now: the message waits for 08:00 local.
    offset = (23 - datetime.now(UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    zone = f"Etc/GMT{-offset:+d}" if offset else "UTC"
    night = await retailer(engine, unique_phone(), tz=zone)
    message = reminder(night)
    outcome = await ActivityEnvironment().run(
        activities(engine, gateway, quiet_hours=QuietHours()).send_message, message
    )
    assert (outcome.status, outcome.reason) == ("deferred", "quiet_hours")
    assert timedelta(hours=8) <= outcome.retry_at - datetime.now(UTC) <= timedelta(hours=9, minutes=1)
    assert (await row(engine, message.idempotency_key)).status == "deferred"


async def test_a_send_left_ambiguous_by_a_crash_is_looked_up_not_repeated(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    """Twilio accepted, the worker died before storing the sid: the retry finds the message."""
    phone = unique_phone()
    rid = await retailer(engine, phone)
    message = reminder(rid)
    async with engine.begin() as conn:
        await conn.execute(
            insert(MessageLog).values(
                idempotency_key=message.idempotency_key,
                recipient_type="retailer",
                recipient_id=rid,
                channel="sms",
                template="payment_reminder",
                template_version=1,
                status="sending",
                attempts=1,
            )
        )
    template = get_template("payment_reminder")
    body = template.render(template.localise({**message.params, "first_name": "Kofi"}, "USD", "en"))
    accepted = await gateway.send(to=phone, from_=SENDERS.sms, body=body)

    outcome = await ActivityEnvironment().run(activities(engine, gateway).send_message, message)

    assert outcome.provider_sid == accepted.sid and outcome.duplicate
    assert len(await emulator_log(emulator, phone)) == 1
    assert (await row(engine, message.idempotency_key)).status == "sent"


async def test_unknown_recipient_and_template_are_permanent(engine: AsyncEngine, gateway: TwilioGateway) -> None:
    send = activities(engine, gateway).send_message
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(send, reminder("987654321"))
    assert raised.value.type == "UnknownRecipient" and raised.value.non_retryable
    rid = await retailer(engine, unique_phone())
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(send, reminder(rid).model_copy(update={"template": "no_such"}))
    assert raised.value.type == "UnknownTemplate"
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM message_log WHERE recipient_id = '987654321'")) == 0


async def test_a_batch_reports_what_happened_to_each_message(
    engine: AsyncEngine, gateway: TwilioGateway, time_skipping_env, task_queue: str, record_history
) -> None:
    from temporalio.worker import Worker

    from schemas.messaging import MessageBatch
    from workflows.messaging import MessageBatchWorkflow

    good, no_phone, invalid = (
        await retailer(engine, unique_phone()),
        await retailer(engine, None),
        await retailer(engine, "+15005550001"),
    )
    batch = MessageBatch(messages=[reminder(r) for r in (good, no_phone, invalid)], task_queue=f"{task_queue}-msg")
    async with (
        Worker(time_skipping_env.client, task_queue=task_queue, workflows=[MessageBatchWorkflow]),
        Worker(
            time_skipping_env.client,
            task_queue=batch.task_queue,
            activities=[(sends := activities(engine, gateway)).send_message, sends.send_messages],
        ),
    ):
        handle = await time_skipping_env.client.start_workflow(
            MessageBatchWorkflow.run, batch, id=f"batch/{uuid.uuid4()}", task_queue=task_queue
        )
        result = await handle.result()
        await record_history(handle, "message_batch")
    assert result.sent == 1
    assert result.suppressed == {"no_phone": 1}
    assert result.failed == {"InvalidRecipient": 1}


async def test_a_connection_the_database_dropped_fails_one_send_and_the_retry_goes_out_once(
    engine: AsyncEngine, database_url: str, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    """The send path runs its statements on psycopg's connection, past SQLAlchemy's execute: a
    connection the database dropped (a restart, a failover) still leaves the pool. The attempt
    that meets it fails (Temporal retries it), and the retry sends the message, once."""
    one = create_engine(database_url, pool_size=1)  # one at a time: the pool's one connection, every time
    try:
        phone = unique_phone()
        message = reminder(await retailer(engine, phone))
        send = activities(one, gateway).send_message
        async with one.connect() as conn:
            backend = await conn.scalar(text("SELECT pg_backend_pid()"))
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})

        with pytest.raises(psycopg.OperationalError):  # not an ApplicationError: Temporal retries it
            await ActivityEnvironment().run(send, message)
        retried = await ActivityEnvironment().run(send, message)

        assert retried.status == "sent" and not retried.duplicate
        assert len(await emulator_log(emulator, phone)) == 1
    finally:
        await one.dispose()


async def test_a_send_at_info_logs_our_event_alone_not_the_sdk_request_dump(gateway: TwilioGateway) -> None:
    """The Twilio SDK logs every request (headers, status) at INFO; the worker's log keeps only
    jobctl's own events, so an operator reads one line per message, not twelve."""
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    try:
        accepted = await gateway.send(to="+15558675310", from_=SENDERS.sms, body="Hello")
    finally:
        configure_logging("console", "WARNING")
    assert accepted.sid.startswith("SM")
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    assert [line for line in lines if line.get("logger", "").startswith("twilio")] == []
