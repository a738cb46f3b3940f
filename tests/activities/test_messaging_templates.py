"""Templates as configuration (issue #35) against the emulator in strict mode: Twilio's WhatsApp rules.

A reminder outside the 24 h session without a configured Content SID stops the messaging worker at
start-up (not at send time); with the SID it goes out as the template with its variables; inside
the session the freeform text goes; a WhatsApp refusal (63016) falls back to SMS once, same key.

The session is our own record (`whatsapp_sessions`): a recipient's message reaches the emulator
(`POST /_emulator/inbound`, which opens its session there), and Twilio's signed inbound webhook
reaches the real webhook receiver, which records it. No send asks Twilio (`listed` stays put).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment
from twilio.base.exceptions import TwilioRestException

from activities.deps import ActivityDeps
from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.templates import Catalogue, CatalogueError, load_catalogue, parse_catalogue
from activities.messaging.twilio_gateway import TwilioGateway, close_twilio_client, twilio_client
from config.settings import Settings, SettingsError
from devtools.content_templates import dev_content_sids, emulator_templates
from devtools.twilio_emulator import TwilioEmulator
from schemas.messaging import SendBatch, SendMessage
from schemas.tables import CreditAccount, MessageLog, Retailer, WhatsAppSession
from workers.families.messaging import message_catalogue, sends
from workers.webhooks import create_app

SENDERS = Senders(whatsapp="whatsapp:+15005550006", sms="+15005550006")


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue().with_content_sids(dev_content_sids())


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def strict(catalogue: Catalogue) -> AsyncIterator[TwilioEmulator]:
    """An emulator with Twilio's rules, the catalogue's templates approved on the account."""
    async with TwilioEmulator(strict=True, content_templates=emulator_templates(catalogue)) as emulator:
        yield emulator


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def strict_gateway(strict: TwilioEmulator) -> AsyncIterator[TwilioGateway]:
    gateway = TwilioGateway(twilio_client(strict.url, strict.account_sid, strict.auth_token, async_client=True))
    yield gateway
    await gateway.close()


INBOUND = "/webhooks/twilio/inbound"
OTHER_SENDER = "whatsapp:+15005550009"
"""Another of our WhatsApp numbers: a session with it is not one with `SENDERS.whatsapp`."""


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def receiver(engine: AsyncEngine, strict: TwilioEmulator) -> AsyncIterator[TestClient]:
    """The webhook receiver (`jobctl webhooks`), set as the emulator's numbers' incoming-message
    webhook: the emulator posts each inbound message there, signed, as Twilio does."""
    app = create_app(engine, stripe_webhook_secret="whsec_unused", twilio_auth_token=strict.auth_token)
    async with TestClient(TestServer(app)) as client:
        strict.state.reconfigure({"inbound_webhook": str(client.make_url(INBOUND))})
        yield client
        strict.state.reconfigure({"inbound_webhook": None})


async def writes(emulator: TwilioEmulator, phone: str, body: str = "hi", to: str = SENDERS.whatsapp) -> None:
    """The recipient writes to our WhatsApp sender `to`: Twilio records the message (the emulator
    opens the session) and posts it to our receiver before it answers."""
    delivered = emulator.state.stats_json()["callbacks_delivered"]
    async with aiohttp.ClientSession() as http:
        message = {"from": f"whatsapp:{phone}", "to": to, "body": body}
        async with http.post(f"{emulator.url}/_emulator/inbound", json=message) as response:
            assert response.status == 201
    assert emulator.state.stats_json()["callbacks_delivered"] == delivered + 1


def listed(emulator: TwilioEmulator) -> int:
    """How many list calls the emulator answered (a session check at Twilio would be one)."""
    return int(emulator.state.stats_json()["listed"])


def activities(engine: AsyncEngine, gateway: TwilioGateway, catalogue: Catalogue) -> MessagingActivities:
    return MessagingActivities(engine, gateway, SENDERS, SendPolicy(quiet_hours=QuietHours(0, 0)), catalogue=catalogue)


async def retailer(engine: AsyncEngine, *, locale: str = "en", currency: str = "USD") -> tuple[str, str]:
    phone = "+1555" + str(uuid.uuid4().int)[:7]
    async with engine.begin() as conn:
        rid = await conn.scalar(
            insert(Retailer)
            .values(name="Asha Rao", phone=phone, preferred_channel="whatsapp", locale=locale)
            .returning(Retailer.id)
        )
        await conn.execute(insert(CreditAccount).values(retailer_id=rid, available_credit=50000, currency=currency))
    return str(rid), phone


def overdue_reminder(rid: str) -> SendMessage:
    return SendMessage(
        idempotency_key=f"test:{uuid.uuid4()}",
        recipient_type="retailer",
        recipient_id=rid,
        template="payment_reminder_overdue",
        params={"debit_count": 2, "amount_due": "100000.00", "payment_link": "https://pay.example/x"},
    )


async def sent_to(emulator: TwilioEmulator, to: str) -> list[dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/messages", params={"to": to}) as response:
            return [m for m in await response.json() if m["direction"] != "inbound"]


def settings_for(emulator: TwilioEmulator, **overrides: object) -> Settings:
    return Settings(
        twilio_account_sid=emulator.account_sid,
        twilio_auth_token=emulator.auth_token,
        twilio_api_base=emulator.url,
        twilio_require_content_sids=True,
        **overrides,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- start-up


async def test_without_a_content_sid_the_worker_refuses_to_start_naming_the_templates(
    engine: AsyncEngine, strict: TwilioEmulator, tmp_path: Path
) -> None:
    settings = settings_for(strict)
    with pytest.raises(SettingsError) as refused:
        message_catalogue(settings)
    line = str(refused.value)
    assert "\n" not in line and "payment_reminder_overdue.en" in line and "payment_reminder_overdue.es" in line
    assert "help.en" not in line  # no WhatsApp template: never sent outside a session
    async with AsyncExitStack() as resources:  # the messaging activities are built at worker start-up
        with pytest.raises(SettingsError):
            sends(ActivityDeps(client=None, engine=engine, settings=settings, resources=resources))  # type: ignore[arg-type]

    sids = tmp_path / "sids.toml"
    from activities.messaging.templates import write_content_sids

    write_content_sids(sids, dev_content_sids())
    assert message_catalogue(settings_for(strict, twilio_content_sids_file=str(sids))).missing_content_sids() == []


async def test_a_deployment_that_sends_english_only_needs_only_the_english_sids(
    strict: TwilioEmulator, tmp_path: Path
) -> None:
    """MESSAGE_LOCALES names the languages a deployment sends: the start-up check asks SIDs of
    those only, and a recipient in another locale gets the English text (the fallback)."""
    sids = tmp_path / "sids.toml"
    from activities.messaging.templates import write_content_sids

    write_content_sids(sids, {kind: {"en": by["en"]} for kind, by in dev_content_sids().items() if "en" in by})
    with pytest.raises(SettingsError) as refused:
        message_catalogue(settings_for(strict, twilio_content_sids_file=str(sids)))
    assert ".es" in str(refused.value) and ".en" not in str(refused.value)
    english = message_catalogue(settings_for(strict, twilio_content_sids_file=str(sids), message_locales="en"))
    assert english.missing_content_sids() == []
    reminder = english.get("payment_reminder_overdue")
    assert reminder.variant("es-ES").locale == "en"
    with pytest.raises(SettingsError, match="MESSAGE_LOCALES: no texts in the catalogue for locale"):
        message_catalogue(settings_for(strict, message_locales="en,xx"))


def test_with_real_twilio_the_sids_are_required_and_with_the_emulator_not() -> None:
    real = Settings(
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="secret",
        twilio_whatsapp_from="whatsapp:+14155550123",
        twilio_sms_from="+14155550123",
        actor_hash_key="k" * 32,
    )
    assert real.content_sids_required
    assert not Settings(
        twilio_account_sid="AC1", twilio_auth_token="t", twilio_api_base="http://x"
    ).content_sids_required


# --------------------------------------------------------------------------- sending


async def test_out_of_session_a_reminder_goes_as_its_template_with_its_variables(
    engine: AsyncEngine, strict: TwilioEmulator, strict_gateway: TwilioGateway, catalogue: Catalogue
) -> None:
    rid, phone = await retailer(engine, locale="en-IN", currency="INR")
    lists = listed(strict)
    outcome = await ActivityEnvironment().run(
        activities(engine, strict_gateway, catalogue).send_message, overdue_reminder(rid)
    )
    assert (outcome.status, outcome.channel) == ("sent", "whatsapp")
    assert listed(strict) == lists  # no Twilio call to ask about the session
    (sent,) = await sent_to(strict, f"whatsapp:{phone}")
    assert sent["content_sid"] == catalogue.get("payment_reminder_overdue").variant("en").content_sid
    assert json.loads(sent["content_variables"]) == {
        "1": "Asha",
        "2": "2",
        "3": "₹1,00,000.00",
        "4": "https://pay.example/x",
    }
    assert sent["body"] == (
        "Hi Asha, 2 invoice(s) totalling ₹1,00,000.00 are now overdue. Please pay here: https://pay.example/x"
    )
    assert await sent_to(strict, phone) == []


async def test_a_spanish_retailer_gets_the_spanish_template_in_euros(
    engine: AsyncEngine, strict: TwilioEmulator, strict_gateway: TwilioGateway, catalogue: Catalogue
) -> None:
    rid, phone = await retailer(engine, locale="es-ES", currency="EUR")
    message = overdue_reminder(rid)
    message = message.model_copy(update={"params": {**message.params, "amount_due": "1234.5"}})
    await ActivityEnvironment().run(activities(engine, strict_gateway, catalogue).send_message, message)
    (sent,) = await sent_to(strict, f"whatsapp:{phone}")
    assert sent["content_sid"] == catalogue.get("payment_reminder_overdue").variant("es").content_sid
    assert sent["body"].startswith("Hola Asha, 2 factura(s) por un total de 1.234,50\u00a0€ ya están vencidas.")


async def test_after_an_inbound_message_through_the_webhook_the_freeform_text_goes_without_asking_twilio(
    engine: AsyncEngine,
    strict: TwilioEmulator,
    strict_gateway: TwilioGateway,
    catalogue: Catalogue,
    receiver: TestClient,
) -> None:
    rid, phone = await retailer(engine)
    await writes(strict, phone, "thanks, will pay friday")
    lists = listed(strict)
    outcome = await ActivityEnvironment().run(
        activities(engine, strict_gateway, catalogue).send_message, overdue_reminder(rid)
    )
    assert (outcome.status, outcome.channel) == ("sent", "whatsapp")
    (sent,) = await sent_to(strict, f"whatsapp:{phone}")
    assert sent["content_sid"] is None  # the strict emulator would refuse it out of session (63016)
    assert (
        sent["body"]
        == "Hi Asha, 2 invoice(s) totalling $100,000.00 are now overdue. Please pay here: https://pay.example/x"
    )
    assert listed(strict) == lists


async def test_an_inbound_message_older_than_24_hours_leaves_the_template(
    engine: AsyncEngine,
    strict: TwilioEmulator,
    strict_gateway: TwilioGateway,
    catalogue: Catalogue,
    receiver: TestClient,
) -> None:
    """Our record says when the window closed, whatever Twilio's list would say (the emulator's
    session here is still open: a freeform message would go, so only our record decides)."""
    rid, phone = await retailer(engine)
    await writes(strict, phone)
    async with engine.begin() as conn:  # a day and a minute later
        await conn.execute(
            update(WhatsAppSession)
            .where(WhatsAppSession.phone == phone)
            .values(last_inbound_at=WhatsAppSession.last_inbound_at - timedelta(hours=24, minutes=1))
        )
    outcome = await ActivityEnvironment().run(
        activities(engine, strict_gateway, catalogue).send_message, overdue_reminder(rid)
    )
    assert (outcome.status, outcome.channel) == ("sent", "whatsapp")
    (sent,) = await sent_to(strict, f"whatsapp:{phone}")
    assert sent["content_sid"] == catalogue.get("payment_reminder_overdue").variant("en").content_sid


async def test_a_batch_reads_its_sessions_at_once_and_sends_each_recipient_the_right_form(
    engine: AsyncEngine,
    strict: TwilioEmulator,
    strict_gateway: TwilioGateway,
    catalogue: Catalogue,
    receiver: TestClient,
) -> None:
    """A recipient who wrote gets the freeform text, one who did not the template, one who wrote to
    another of our numbers the template too (the session is per sender): every one accepted by the
    strict emulator, and not one list call."""
    (wrote, wrote_phone), (silent, silent_phone), (elsewhere, elsewhere_phone) = [
        await retailer(engine) for _ in range(3)
    ]
    await writes(strict, wrote_phone, "hello")
    await writes(strict, elsewhere_phone, "hello", to=OTHER_SENDER)
    lists = listed(strict)
    batch = SendBatch(messages=[overdue_reminder(r) for r in (wrote, silent, elsewhere)])
    result = await ActivityEnvironment().run(activities(engine, strict_gateway, catalogue).send_messages, batch)
    assert [o.status for o in result.outcomes] == ["sent", "sent", "sent"]
    template = catalogue.get("payment_reminder_overdue").variant("en").content_sid
    phones = (wrote_phone, silent_phone, elsewhere_phone)
    forms = [(await sent_to(strict, f"whatsapp:{p}"))[0]["content_sid"] for p in phones]
    assert forms == [None, template, template]
    assert listed(strict) == lists


async def test_a_whatsapp_refusal_falls_back_to_sms_once_under_the_same_key(
    engine: AsyncEngine, strict: TwilioEmulator, strict_gateway: TwilioGateway, catalogue: Catalogue
) -> None:
    rid, phone = await retailer(engine)
    strict.state.reconfigure({"refusals": {f"whatsapp:{phone}": 63016}})
    send = activities(engine, strict_gateway, catalogue).send_message
    message = overdue_reminder(rid)
    first = await ActivityEnvironment().run(send, message)
    again = await ActivityEnvironment().run(send, message)
    assert (first.status, first.channel) == ("sent", "sms")
    assert again.duplicate and again.provider_sid == first.provider_sid
    (sms,) = await sent_to(strict, phone)
    assert sms["body"].startswith("Hi Asha, 2 invoice(s) totalling $100,000.00 are now overdue.")
    assert await sent_to(strict, f"whatsapp:{phone}") == []
    async with engine.connect() as conn:
        rows = (await conn.execute(select(MessageLog.channel).where(MessageLog.recipient_id == rid))).all()
    assert [r.channel for r in rows] == ["sms"]


async def test_a_kind_without_a_template_goes_by_sms_outside_the_session(
    engine: AsyncEngine, strict: TwilioEmulator, strict_gateway: TwilioGateway, catalogue: Catalogue
) -> None:
    """The insight has no approved template: WhatsApp refuses it freeform (63016) and SMS carries it."""
    rid, phone = await retailer(engine)
    message = SendMessage(
        idempotency_key=f"test:{uuid.uuid4()}",
        recipient_type="retailer",
        recipient_id=rid,
        template="insight",
        params={"insight_message": "Your best seller this week: rice"},
    )
    outcome = await ActivityEnvironment().run(activities(engine, strict_gateway, catalogue).send_message, message)
    assert (outcome.status, outcome.channel) == ("sent", "sms")
    assert len(await sent_to(strict, phone)) == 1


# --------------------------------------------------------------------------- the emulator's rules


async def test_the_strict_emulator_refuses_what_twilio_refuses(strict: TwilioEmulator, catalogue: Catalogue) -> None:
    client = strict.client(async_client=True)
    to = "whatsapp:+15557654321"
    sid = catalogue.get("credit_resumed").variant("en").content_sid
    try:
        with pytest.raises(TwilioRestException) as freeform:
            await client.messages.create_async(to=to, from_=SENDERS.whatsapp, body="hello")
        with pytest.raises(TwilioRestException) as unknown:
            await client.messages.create_async(to=to, from_=SENDERS.whatsapp, content_sid="HX" + "0" * 32)
        with pytest.raises(TwilioRestException) as variables:
            await client.messages.create_async(to=to, from_=SENDERS.whatsapp, content_sid=sid, content_variables="{1:")
        with pytest.raises(TwilioRestException) as empty:
            await client.messages.create_async(
                to=to, from_=SENDERS.whatsapp, content_sid=sid, content_variables='{"1": ""}'
            )
        ok = await client.messages.create_async(
            to=to, from_=SENDERS.whatsapp, content_sid=sid, content_variables='{"1": "Asha"}'
        )
    finally:
        await close_twilio_client(client)
    assert [e.value.code for e in (freeform, unknown, variables, empty)] == [63016, 21655, 21656, 21656]
    assert ok.body == "Hi Asha, thank you! Your credit line is open again."


# --------------------------------------------------------------------------- the catalogue


def test_locale_falls_back_from_region_to_language_to_english(catalogue: Catalogue) -> None:
    reminder = catalogue.get("payment_reminder_final")
    assert reminder.variant("es-MX").locale == "es"
    assert reminder.variant("es").locale == "es"
    assert reminder.variant("hi-IN").locale == "en"
    assert reminder.variant(None).locale == "en"
    assert catalogue.get("insight").variant("es-ES").locale == "en"  # no Spanish text: English


def test_every_kind_has_english_and_the_same_placeholders_in_every_locale(catalogue: Catalogue) -> None:
    for template in catalogue.templates.values():
        english = set(template.variant("en").fields)
        assert all(set(v.fields) == english for v in template.variants.values()), template.name
        if template.whatsapp and template.name != "insight_weekly":  # its figures come as English phrases
            assert "es" in template.variants, template.name


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"k": {"es": {"text": "Hola"}}}, "has no `en` text"),
        ({"k": {"en": {"text": "Hi {a}"}, "es": {"text": "Hola {b}"}}}, "placeholders ['b'] differ"),
        ({"k": {"en": {"text": "Hi {a!r}"}}}, "plain name"),
        ({"k": {"en": {"text": "Hi", "content_sid": "HX123"}}}, "not a Content SID"),
        ({"k": {"en": {"text": "Hi", "sid": "x"}}}, "needs `text`"),
        ({"k": {"money": ["amount"], "en": {"text": "Hi"}}}, "money names ['amount']"),
    ],
)
def test_a_bad_catalogue_is_refused_at_load_naming_the_entry(data: dict, complaint: str) -> None:
    with pytest.raises(CatalogueError, match="templates: \\[k\\]") as refused:
        parse_catalogue(data)
    assert complaint in str(refused.value)


def test_a_sids_file_naming_an_unknown_kind_or_a_bad_sid_is_refused(catalogue: Catalogue) -> None:
    with pytest.raises(CatalogueError, match="no message kind nope"):
        catalogue.with_content_sids({"nope": {"en": "HX" + "0" * 32}})
    with pytest.raises(CatalogueError, match="credit_resumed has no locale fr"):
        catalogue.with_content_sids({"credit_resumed": {"fr": "HX" + "0" * 32}})
    with pytest.raises(CatalogueError, match="not a Content SID"):
        catalogue.with_content_sids({"credit_resumed": {"en": "SID"}})


def test_old_histories_formatted_amounts_are_reformatted(catalogue: Catalogue) -> None:
    """Runs recorded before amounts were formatted at send time passed `1,234.50`: read as 1234.50."""
    template = catalogue.get("credit_paused")
    german = template.localise({"amount_due": "1,234.50", "reason": "x"}, "EUR", "de-DE")
    assert german["amount_due"] == "1.234,50\u00a0€"
    assert template.localise({"amount_due": Decimal("5"), "reason": "x"}, "JPY", "en")["amount_due"] == "¥5"
