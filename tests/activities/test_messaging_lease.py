"""The outbox lease: two attempts of one key never both send, and a dead attempt's message is found.

Against an emulator that takes 2 s to record an accepted message (`accept_delay_ms`), the
window in which a lookup at Twilio cannot see a send that is already under way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway
from devtools.content_templates import dev_content_sids
from devtools.twilio_emulator import TwilioEmulator
from schemas.messaging import SendMessage, SendOutcome
from schemas.tables import MessageLog
from tests.activities.test_messaging import SENDERS, activities, emulator_log, reminder, retailer, row, unique_phone


@pytest_asyncio.fixture(loop_scope="session")
async def slow_twilio() -> AsyncIterator[TwilioEmulator]:
    async with TwilioEmulator(accept_delay_ms=2000) as emu:
        yield emu


@pytest_asyncio.fixture(loop_scope="session")
async def slow_gateway(slow_twilio: TwilioEmulator) -> AsyncIterator[TwilioGateway]:
    gateway = TwilioGateway(slow_twilio.client(async_client=True, timeout=5.0))
    yield gateway
    await gateway.close()


async def until_recorded(emulator: TwilioEmulator, to: str, n: int = 1) -> None:
    deadline = time.monotonic() + 30
    while len(await emulator_log(emulator, to)) < n:
        assert time.monotonic() < deadline, "the emulator never recorded the message"
        await asyncio.sleep(0.1)


async def test_an_overlapping_attempt_waits_for_the_lease_instead_of_sending_again(
    engine: AsyncEngine, slow_gateway: TwilioGateway, slow_twilio: TwilioEmulator
) -> None:
    phone = unique_phone()
    message = reminder(await retailer(engine, phone))
    send = activities(engine, slow_gateway).send_message

    first = asyncio.create_task(ActivityEnvironment().run(send, message))
    await asyncio.sleep(0.3)  # the first call is at Twilio, not yet recorded there
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(send, message)
    assert raised.value.type == "SendInProgress" and not raised.value.non_retryable
    assert raised.value.next_retry_delay is not None  # Temporal retries it once the lease is over

    sent = await first
    again = await ActivityEnvironment().run(send, message)  # that retry

    assert sent.status == "sent" and not sent.duplicate
    assert again.duplicate and again.provider_sid == sent.provider_sid
    assert len(await emulator_log(slow_twilio, phone)) == 1


async def test_after_the_lease_of_a_dead_attempt_its_message_is_found_not_sent_again(
    engine: AsyncEngine, slow_gateway: TwilioGateway, slow_twilio: TwilioEmulator
) -> None:
    phone = unique_phone()
    message = reminder(await retailer(engine, phone))
    send = activities(engine, slow_gateway).send_message

    first = asyncio.create_task(ActivityEnvironment().run(send, message))
    await asyncio.sleep(0.3)
    first.cancel()  # the attempt dies with its request at Twilio, which records it all the same
    await until_recorded(slow_twilio, phone)
    async with engine.begin() as conn:  # the lease runs out
        await conn.execute(
            update(MessageLog)
            .where(MessageLog.idempotency_key == message.idempotency_key)
            .values(lease_until=MessageLog.lease_started_at)
        )

    outcome = await ActivityEnvironment().run(send, message)

    (recorded,) = await emulator_log(slow_twilio, phone)
    assert outcome.duplicate and outcome.provider_sid == recorded["sid"]
    assert (await row(engine, message.idempotency_key)).status == "sent"


async def test_recovery_never_takes_a_message_that_is_not_ours(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    """To the same number since the claim: another text, and a template send another key recorded."""
    phone = unique_phone()
    rid = await retailer(engine, phone, channel="whatsapp")
    message = reminder(rid)
    async with engine.begin() as conn:
        await conn.execute(
            insert(MessageLog).values(
                idempotency_key=message.idempotency_key,
                recipient_type="retailer",
                recipient_id=rid,
                channel="whatsapp",
                template="payment_reminder",
                template_version=1,
                status="sending",
                attempts=1,
                sender=SENDERS.whatsapp,
            )
        )
    other_text = await gateway.send(to=f"whatsapp:{phone}", from_=SENDERS.whatsapp, body="Hi Kofi, something else")
    other_template = await gateway.send(
        to=f"whatsapp:{phone}", from_=SENDERS.whatsapp, content_sid=dev_content_sids()["credit_resumed"]["en"]
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(MessageLog).values(
                idempotency_key=f"other:{rid}",
                recipient_type="retailer",
                recipient_id=rid,
                channel="whatsapp",
                template="credit_resumed",
                template_version=1,
                status="sent",
                provider_sid=other_template.sid,
            )
        )

    outcome = await ActivityEnvironment().run(activities(engine, gateway).send_message, message)

    assert outcome.status == "sent" and not outcome.duplicate
    assert outcome.provider_sid not in (other_text.sid, other_template.sid)
    assert len(await emulator_log(emulator, f"whatsapp:{phone}")) == 3


async def test_a_pace_backlog_longer_than_the_lease_sends_each_message_once_and_no_attempt_times_out(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    """Issue #33: the lease was taken before the pace wait. Six messages at 2 a second, a 0.5 s
    lease and a 2 s attempt timeout (enforced here as Temporal would): the last slots are further
    than an attempt can wait, and a wait outlives the lease. Each message also has a second,
    overlapping chain of attempts (a retry while the first still runs), started after the lease
    the first took would have ended. Before, attempts timed out sleeping and a retry sent while
    the attempt it replaced still would; now each goes out once and every attempt ends in time."""
    timeout = timedelta(seconds=2)
    sends = MessagingActivities(
        engine,
        gateway,
        SENDERS,
        SendPolicy(quiet_hours=QuietHours(0, 0), lease=timedelta(seconds=0.5), call_allowance=timedelta(seconds=0.5)),
        per_second=2.0,
    )
    timed_out: list[str] = []

    async def attempts(message: SendMessage, after: float) -> SendOutcome:
        """Attempts of one message until one returns, each cut off at its start-to-close timeout."""
        await asyncio.sleep(after)
        while True:
            env = ActivityEnvironment()
            env.info = dataclasses.replace(env.info, start_to_close_timeout=timeout)
            try:
                async with asyncio.timeout(timeout.total_seconds()):
                    return await env.run(sends.send_message, message)
            except TimeoutError:
                timed_out.append(message.idempotency_key)
            except ApplicationError as error:
                assert not error.non_retryable, error
                delay = error.next_retry_delay or timedelta(seconds=0.2)
                await asyncio.sleep(delay.total_seconds())

    phones = [unique_phone() for _ in range(6)]
    messages = [reminder(await retailer(engine, phone)) for phone in phones]
    async with asyncio.timeout(20):  # before the fix: attempts timing out for ever
        outcomes = await asyncio.gather(*(attempts(m, after) for m in messages for after in (0.0, 0.75)))

    assert timed_out == []
    assert all(o.status == "sent" for o in outcomes)
    for phone in phones:
        assert len(await emulator_log(emulator, phone)) == 1, phone
    for message in messages:
        assert (await row(engine, message.idempotency_key)).status == "sent"
