"""A sender pool end to end: three numbers, each paced on its own against an emulator that limits
each `From` as Twilio does, a real PostgreSQL and the real SDK.

Each test has its own numbers, so its `messaging_pace` rows start free whatever ran before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest_asyncio
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment

from activities.database import autocommit, driver_connection
from activities.messaging import outbox
from activities.messaging.send import MessagingActivities, SendPolicy
from activities.messaging.senders import Sender, Senders, recipient_key, rendezvous
from activities.messaging.twilio_gateway import TwilioGateway
from devtools.twilio_emulator import TwilioEmulator
from schemas.tables import MessageLog
from tests.activities.test_messaging import NO_QUIET_HOURS, emulator_log, reminder, retailer, row, unique_phone
from tests.activities.test_messaging_lease import until_recorded

RATE = 5.0  # messages per second per number, at the emulator and in the pace


def pool() -> tuple[Sender, ...]:
    """Three numbers of this test's own: SMS senders paced at RATE each (less nothing: exact)."""
    base = 15557000000 + uuid.uuid4().int % 900_000 * 10
    return tuple(Sender(f"+{base + i}", RATE) for i in range(3))


def env() -> ActivityEnvironment:
    """An attempt with a minute to run: a pool's pace wait fits in it (as under the worker's timeouts)."""
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(environment.info, start_to_close_timeout=timedelta(minutes=1))
    return environment


def sends(engine: AsyncEngine, gateway: TwilioGateway, senders: Senders) -> MessagingActivities:
    return MessagingActivities(engine, gateway, senders, SendPolicy(quiet_hours=NO_QUIET_HOURS), per_second=1000.0)


@pytest_asyncio.fixture(loop_scope="session")
async def limited() -> AsyncIterator[TwilioEmulator]:
    async with TwilioEmulator(rate_limit=RATE) as emu:
        yield emu


@pytest_asyncio.fixture(loop_scope="session")
async def limited_gateway(limited: TwilioEmulator) -> AsyncIterator[TwilioGateway]:
    gateway = TwilioGateway(limited.client(async_client=True, timeout=5.0))
    yield gateway
    await gateway.close()


async def test_a_pool_sends_each_message_once_from_its_numbers_at_their_summed_rate_without_429s(
    engine: AsyncEngine, limited_gateway: TwilioGateway, limited: TwilioEmulator
) -> None:
    numbers = pool()
    activities = sends(engine, limited_gateway, Senders(whatsapp="whatsapp:+15005550006", sms=numbers))
    phones = [unique_phone() for _ in range(30)]  # 2 s of the pool's 15 msg/s; one number alone would take 6
    messages = [reminder(await retailer(engine, phone)) for phone in phones]

    outcomes = await asyncio.gather(*(env().run(activities.send_message, m) for m in messages))

    assert all(o.status == "sent" and not o.duplicate for o in outcomes)
    logged = [await emulator_log(limited, phone) for phone in phones]
    assert all(len(sent) == 1 for sent in logged)  # each message once
    by_number = Counter(sent[0]["from"] for sent in logged)
    assert by_number.keys() == {s.address for s in numbers}  # every number of the pool, only the pool's
    assert all(n >= 5 for n in by_number.values())  # the soonest slot spreads the load over the pool
    stats = limited.state.stats_json()
    assert stats["rate_limited_by_sender"] == {}  # each number kept under its own limit
    for message, sent in zip(messages, logged, strict=True):  # the row names the number it went from
        assert (await row(engine, message.idempotency_key)).sender == sent[0]["from"]


async def test_a_sticky_recipient_keeps_its_number_across_messages(
    engine: AsyncEngine, limited_gateway: TwilioGateway, limited: TwilioEmulator
) -> None:
    numbers = pool()
    senders = Senders(whatsapp="whatsapp:+15005550006", sms=numbers, sticky=True)
    phones = [unique_phone() for _ in range(9)]
    ids = [await retailer(engine, phone) for phone in phones]

    for _ in range(2):  # two rounds, each by a fresh activities object: a restarted worker chooses the same
        activities = sends(engine, limited_gateway, senders)
        await asyncio.gather(*(env().run(activities.send_message, reminder(rid)) for rid in ids))

    for phone, rid in zip(phones, ids, strict=True):
        froms = [m["from"] for m in await emulator_log(limited, phone)]
        assert froms == [rendezvous(numbers, recipient_key("retailer", rid)).address] * 2


async def test_reservations_take_the_pools_soonest_slot_in_turn(engine: AsyncEngine) -> None:
    numbers = pool()
    paces = {s.pace: RATE for s in numbers}
    async with driver_connection(autocommit(engine)) as conn:
        await outbox.ensure_paces(conn, list(paces))
        taken = [await outbox.reserve_pool_slot_within(conn, paces, 60.0) for _ in range(9)]
    assert all(reserved for reserved, _, _ in taken)
    assert Counter(name for _, name, _ in taken) == {pace: 3 for pace in paces}  # 3 each, none piled on one


async def test_a_dead_attempts_message_is_found_at_the_number_it_went_from(engine: AsyncEngine) -> None:
    """Crash recovery looks the message up at its sender: here not the pool's first number."""
    numbers = pool()
    senders = Senders(whatsapp="whatsapp:+15005550006", sms=numbers, sticky=True)
    async with TwilioEmulator(accept_delay_ms=1500) as slow:
        gateway = TwilioGateway(slow.client(async_client=True, timeout=5.0))
        try:
            while True:  # a recipient whose number is not the pool's first (2 in 3 are)
                phone = unique_phone()
                rid = await retailer(engine, phone)
                if rendezvous(numbers, recipient_key("retailer", rid)) != numbers[0]:
                    break
            message = reminder(rid)
            send = sends(engine, gateway, senders).send_message

            first = asyncio.create_task(env().run(send, message))
            await asyncio.sleep(0.3)
            first.cancel()  # the attempt dies with its request at Twilio, which records it all the same
            await until_recorded(slow, phone)
            async with engine.begin() as conn:  # its lease runs out
                await conn.execute(
                    update(MessageLog)
                    .where(MessageLog.idempotency_key == message.idempotency_key)
                    .values(lease_until=MessageLog.lease_started_at)
                )

            outcome = await env().run(sends(engine, gateway, senders).send_message, message)

            (recorded,) = await emulator_log(slow, phone)
            assert recorded["from"] != numbers[0].address
            assert outcome.duplicate and outcome.provider_sid == recorded["sid"]
            assert (await row(engine, message.idempotency_key)).status == "sent"
        finally:
            await gateway.close()


async def test_the_sms_fallback_goes_from_the_recipients_sms_number_on_its_pace(
    engine: AsyncEngine, limited_gateway: TwilioGateway, limited: TwilioEmulator
) -> None:
    """WhatsApp refuses the number (63003): the message goes by SMS from the SMS pool's number for
    this recipient, after a slot of that number's pace, and the row says so."""
    sms = pool()
    whatsapp = tuple(Sender(f"whatsapp:{s.address}", RATE) for s in pool())
    senders = Senders(whatsapp=whatsapp, sms=sms, sticky=True)
    phone = unique_phone()
    limited.state.reconfigure({"refusals": {f"whatsapp:{phone}": 63003}})
    rid = await retailer(engine, phone, channel="whatsapp")
    message = reminder(rid)

    outcome = await env().run(sends(engine, limited_gateway, senders).send_message, message)

    number = rendezvous(sms, recipient_key("retailer", rid)).address
    assert (outcome.status, outcome.channel) == ("sent", "sms")
    assert [m["from"] for m in await emulator_log(limited, phone)] == [number]
    assert await emulator_log(limited, f"whatsapp:{phone}") == []
    stored = await row(engine, message.idempotency_key)
    assert (stored.channel, stored.sender) == ("sms", number)
    async with engine.connect() as conn:  # the fallback took its slot of the SMS number's own pace
        assert await conn.scalar(text("SELECT count(*) FROM messaging_pace WHERE name = :n"), {"n": f"twilio:{number}"})


async def test_a_wait_for_a_slot_beats_only_when_it_is_long(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    """A batch beats at most once a second as its messages go out (`send.BEAT_EVERY`); the wait for
    a pace slot beat after every wait as well, one heartbeat per message at the limit. Now a wait
    beats only after a step of a second or more (a third of the heartbeat timeout): at 2 a second
    the second message's half-second wait beats not at all, at 0.4 a second its 2.5 s wait beats after
    each of its two whole 1 s steps, so a long wait still never outlives the timeout."""

    async def beats_of_the_second_send(rate: float) -> int:
        number = pool()[0].address
        senders = Senders(whatsapp=(Sender(f"whatsapp:{number}", rate),), sms=(Sender(number, rate),))
        paced = sends(engine, gateway, senders)
        beats: list[object] = []
        for _ in range(2):  # the first takes the slot now, the second waits one interval
            environment = env()
            environment.info = dataclasses.replace(environment.info, heartbeat_timeout=timedelta(seconds=3))
            environment.on_heartbeat = lambda *details: beats.append(details)
            outcome = await environment.run(paced.send_message, reminder(await retailer(engine, unique_phone())))
            assert outcome.status == "sent"
        return len(beats)

    assert await beats_of_the_second_send(2.0) == 0
    assert await beats_of_the_second_send(0.4) == 2
