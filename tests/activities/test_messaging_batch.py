"""`send_messages` and the shared pace: many messages in one activity, each exactly once, each in its own slot."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.database import autocommit, driver_connection
from activities.messaging import outbox
from activities.messaging.twilio_gateway import TwilioGateway
from devtools.twilio_emulator import TwilioEmulator
from schemas.messaging import SendBatch
from schemas.tables import MessageLog
from tests.activities.test_messaging import activities, emulator_log, reminder, retailer, unique_phone


async def test_a_message_under_another_attempts_lease_is_deferred_to_its_end_while_the_rest_go_out(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    phones = [unique_phone() for _ in range(4)]
    messages = [reminder(await retailer(engine, phone)) for phone in phones]
    busy = messages[3]  # another attempt holds its row: this attempt must neither send it nor wait
    async with engine.begin() as conn:
        await conn.execute(
            insert(MessageLog).values(
                idempotency_key=busy.idempotency_key,
                recipient_type="retailer",
                recipient_id=busy.recipient_id,
                channel="sms",
                template="payment_reminder",
                template_version=1,
                status="sending",
                attempts=1,
                lease_started_at=func.now(),
                lease_until=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, 30),
            )
        )
    sends = activities(engine, gateway)
    batch = SendBatch(messages=messages, max_in_flight=2)
    before = datetime.now(UTC)

    result = await ActivityEnvironment().run(sends.send_messages, batch)

    # The batch ends at once (its lane is free) with the held one deferred to its lease's end: the
    # workflow holds it on a timer (a batch that waited held one of a reminders day's lanes 20 s).
    assert [(o.status, o.duplicate) for o in result.outcomes[:3]] == [("sent", False)] * 3
    held = result.outcomes[3]
    assert (held.status, held.reason) == ("deferred", "in_flight")
    assert held.retry_at is not None and before + timedelta(seconds=29) < held.retry_at < before + timedelta(seconds=40)
    assert await emulator_log(emulator, phones[3]) == []

    # The other attempt died: once its lease is over, the held message is sent, once.
    async with engine.begin() as conn:
        await conn.execute(
            update(MessageLog)
            .where(MessageLog.idempotency_key == busy.idempotency_key)
            .values(lease_until=MessageLog.lease_started_at)
        )
    again = await ActivityEnvironment().run(sends.send_messages, SendBatch(messages=[busy], max_in_flight=2))
    assert [(o.status, o.duplicate) for o in again.outcomes] == [("sent", False)]
    for phone in phones:
        assert len(await emulator_log(emulator, phone)) == 1, "a message was sent twice or never"


async def test_a_retried_batch_sends_only_what_is_left_and_reports_each_message_once(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    phones = [unique_phone() for _ in range(4)]
    messages = [reminder(await retailer(engine, phone)) for phone in phones]
    sends = activities(engine, gateway)
    # A first attempt sent three and heartbeat their outcomes before it failed (`BatchIncomplete`).
    progress = await ActivityEnvironment().run(sends.send_messages, SendBatch(messages=messages[:3], max_in_flight=2))

    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2, heartbeat_details=[progress.model_dump(mode="json")])
    result = await retry.run(sends.send_messages, SendBatch(messages=messages, max_in_flight=2))

    assert [o.idempotency_key for o in result.outcomes] == [m.idempotency_key for m in messages]
    assert [(o.status, o.duplicate) for o in result.outcomes] == [("sent", False)] * 4  # none counted twice
    for phone in phones:
        assert len(await emulator_log(emulator, phone)) == 1, "a message was sent twice or never"


async def test_a_key_twice_in_one_batch_is_sent_once(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    phone = unique_phone()
    message = reminder(await retailer(engine, phone))
    result = await ActivityEnvironment().run(
        activities(engine, gateway).send_messages, SendBatch(messages=[message, message])
    )

    assert [(o.status, o.duplicate) for o in result.outcomes] == [("sent", False), ("sent", True)]
    assert len(await emulator_log(emulator, phone)) == 1


async def test_a_batch_claims_together_and_still_holds_each_recipients_daily_cap(
    engine: AsyncEngine, gateway: TwilioGateway, emulator: TwilioEmulator
) -> None:
    # A batch's first-seen claims share statements (issue #38 point 3); one recipient's never share
    # one, or none would see the others and the cap would let all three through.
    phone, others = unique_phone(), [unique_phone() for _ in range(4)]
    rid = await retailer(engine, phone)
    capped = [reminder(rid) for _ in range(3)]
    rest = [reminder(await retailer(engine, other)) for other in others]
    missing = reminder("999999999")  # no such retailer: that message fails alone
    batch = SendBatch(messages=[*capped, *rest, missing], max_in_flight=8)

    result = await ActivityEnvironment().run(activities(engine, gateway, daily_cap=2).send_messages, batch)

    by_key = {o.idempotency_key: o for o in result.outcomes}
    assert sorted(by_key[m.idempotency_key].status for m in capped) == ["sent", "sent", "suppressed"]
    assert [by_key[m.idempotency_key].reason for m in capped if by_key[m.idempotency_key].status == "suppressed"] == [
        "daily_cap"
    ]
    assert all(by_key[m.idempotency_key].status == "sent" for m in rest)
    assert by_key[missing.idempotency_key].status == "failed"
    assert by_key[missing.idempotency_key].reason == "UnknownRecipient"
    assert len(await emulator_log(emulator, phone)) == 2
    # Every sent message's row holds its sid once the batch returns (its marks are written together).
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    MessageLog.idempotency_key, MessageLog.status, MessageLog.provider_sid, MessageLog.lease_until
                ).where(MessageLog.idempotency_key.in_(list(by_key)))
            )
        ).all()
    sent = {o.idempotency_key: o for o in result.outcomes if o.status == "sent"}
    assert {r.idempotency_key for r in rows if r.status == "sent"} == set(sent)
    assert all(r.provider_sid and r.lease_until is None for r in rows if r.status == "sent")


async def test_every_send_reserves_its_own_slot_of_one_pace_shared_by_every_connection(engine: AsyncEngine) -> None:
    """Two workers' connections interleaved: the slots they get are one evenly spaced sequence."""
    name = f"test-{unique_phone()}"
    statements = autocommit(engine)  # as the send path: each reservation commits at once
    async with driver_connection(statements) as one, driver_connection(statements) as two:
        waits = [await outbox.reserve_slot(conn, 10.0, name) for conn in (one, two, one, two, one)]
        gaps = [later - earlier for earlier, later in zip(waits, waits[1:], strict=False)]
        assert all(0.05 < gap <= 0.1 for gap in gaps), waits  # 0.1 s apart, less the time between statements
        await asyncio.sleep(max(waits) + 0.2)
        assert await outbox.reserve_slot(one, 10.0, name) == 0.0  # an idle pace keeps no debt: the next goes now


async def test_an_interactive_send_takes_a_slot_ahead_of_the_bulk_backlog_and_the_limit_still_holds(
    engine: AsyncEngine,
) -> None:
    """Issue #38: a manual nudge during a reminders day waited behind every slot the bulk sends in flight
    had reserved. Its own lane starts it at once; the bulk lane's next slot moves back by one interval,
    so every message still costs one interval of the limit; and interactive sends among themselves
    are paced at the limit too."""
    name = f"test-{unique_phone()}"
    statements = autocommit(engine)
    # One message a second: each assertion has a whole interval of slack for the round trips
    # between the calls (at 10/s, 20 reservations on a loaded machine ate the 0.1 s margin).
    async with driver_connection(statements) as conn:
        bulk = [await outbox.reserve_slot(conn, 1.0, name) for _ in range(20)]  # 20 s of slots ahead
        assert bulk[-1] > 18.0
        nudge = await outbox.reserve_interactive_slot(conn, 1.0, name)
        assert nudge < 0.5  # not behind the 20 reserved slots
        after = await outbox.reserve_slot(conn, 1.0, name)
        assert after - bulk[-1] > 1.5  # the next bulk slot is two intervals on: the nudge took one
        second = await outbox.reserve_interactive_slot(conn, 1.0, name)
        assert 0.5 < second <= 1.0  # a burst of interactive sends is paced at the limit among itself


def test_a_batch_is_retried_when_its_first_held_message_can_go_not_after_the_policys_backoff() -> None:

    from activities.messaging.send import _soonest_retry

    leased = [ApplicationError("held", type="LeaseHeld", next_retry_delay=timedelta(seconds=s)) for s in (7, 3, 12)]
    assert _soonest_retry(leased) == timedelta(seconds=3)  # a killed attempt's first lease to end
    assert _soonest_retry([*leased, OSError("connection reset")]) is None  # one cannot say: the policy's backoff
    assert _soonest_retry([]) is None
