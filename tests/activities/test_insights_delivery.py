"""The weekly insights message (issue #35): to retailers who opted in, once per ISO week, in their
local morning, through the outbox; the opt-in written by the directory."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.insights import InsightActivities
from activities.messaging.send import MessagingActivities, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway
from devtools.twilio_emulator import TwilioEmulator
from schemas.directory import RetailerIn
from schemas.insights import InsightMessagesPage, InsightsDeliveryRequest, InsightsDeliveryResult
from schemas.tables import Retailer, RetailerInsight
from services.directory import upsert_retailers
from tests.activities.test_orders import SENDERS, sent_to, unique_phone, zone_where
from workflows.insights import InsightsDeliveryWorkflow


async def retailer(engine: AsyncEngine, tz: str, *, opted_in: bool, insight_on: datetime | None = None) -> str:
    phone = unique_phone()
    async with engine.begin() as conn:
        rid = await conn.scalar(
            insert(Retailer)
            .values(name="Ada Stores", phone=phone, preferred_channel="sms", timezone=tz, insights_opt_in=opted_in)
            .returning(Retailer.id)
        )
        if insight_on is not None:
            await conn.execute(
                insert(RetailerInsight).values(
                    retailer_id=rid,
                    insight_date=insight_on.date(),
                    orders_30d=3,
                    orders_prev_30d=2,
                    gmv_30d=Decimal("1250.00"),
                    gmv_prev_30d=Decimal("1000.00"),
                    avg_order_value=Decimal("416.67"),
                    top_products=["Tea", "Rice"],
                    on_time_payment_rate=Decimal("0.75"),
                    risk_level="LOW",
                    message="(the nightly text)",
                )
            )
    return phone


async def run(
    client: Client, engine: AsyncEngine, gateway: TwilioGateway, task_queue: str, record=None
) -> InsightsDeliveryResult:
    sends = MessagingActivities(engine, gateway, SENDERS, SendPolicy(daily_cap=10_000))
    async with (
        Worker(
            client,
            task_queue=task_queue,
            workflows=[InsightsDeliveryWorkflow],
            activities=[InsightActivities(engine).insight_messages],
        ),
        Worker(client, task_queue=f"{task_queue}-msg", activities=[sends.send_message, sends.send_messages]),
    ):
        handle = await client.start_workflow(
            InsightsDeliveryWorkflow.run,
            InsightsDeliveryRequest(messaging_task_queue=f"{task_queue}-msg", page_size=2),
            id=f"insights/weekly-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        result = await handle.result()
        if record is not None:
            await record(handle, "insights_weekly_delivery")
        return result


async def test_opted_in_retailers_get_one_message_a_week_in_their_local_morning(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    now = await env.get_current_time()
    morning, night = zone_where(now, 10), zone_where(now, 23)
    opted = [await retailer(engine, morning, opted_in=True, insight_on=now) for _ in range(3)]
    not_opted = await retailer(engine, morning, opted_in=False, insight_on=now)
    no_insight = await retailer(engine, morning, opted_in=True)
    stale = await retailer(engine, morning, opted_in=True, insight_on=now - timedelta(days=9))
    late = await retailer(engine, night, opted_in=True, insight_on=now)
    async with engine.connect() as conn:
        late_id = str(await conn.scalar(text("SELECT id FROM retailers WHERE phone = :p"), {"p": late}))

    first = await run(env.client, engine, gateway, task_queue, record_history)
    assert first.sent == 3 and first.pages == 2
    for phone in opted:
        (message,) = await sent_to(emulator, phone)
        assert message["body"] == (
            "Hi Ada, your week with us: in the last 30 days you placed 3 order(s) worth $1,250.00 (up 25% on the 30 "
            "days before), $416.67 on average. Best sellers: Tea, Rice. Invoices paid on time: 75%."
        )
    for phone in (not_opted, no_insight, stale, late):
        assert await sent_to(emulator, phone) == []

    again = await run(env.client, engine, gateway, task_queue)
    assert (again.sent, again.duplicates) == (0, 0), "this week's messages are sent: nothing is enqueued again"
    assert [len(await sent_to(emulator, phone)) for phone in opted] == [1, 1, 1]

    # 23:00 for `late`: not due until its morning, when the hourly run finds it (the run's time is
    # the activity's input; the time-skipping server is not moved across a day here).
    activities = InsightActivities(engine)
    for hours, due in ((1, False), (9, False), (10, True), (12, True), (13, False)):
        page = await activities.insight_messages(
            InsightMessagesPage(now=now + timedelta(hours=hours), page_size=100, morning_start=9, morning_end=12)
        )
        assert ({m.recipient_id for m in page.messages} == {late_id}) is due, hours


async def test_the_directory_writes_the_opt_in_and_an_omitted_field_keeps_it(engine: AsyncEngine) -> None:
    external = f"shop-{uuid.uuid4().hex[:8]}"

    async def put(**fields: object) -> bool:
        row = RetailerIn(external_id=external, name="Corner Store", phone="+14155550123", **fields)
        async with engine.begin() as conn:
            await upsert_retailers(conn, [row], actor="test")
            return await conn.scalar(
                text("SELECT insights_opt_in FROM retailers WHERE external_id = :e"), {"e": external}
            )

    assert await put() is False
    assert await put(insights_opt_in=True) is True
    assert await put() is True, "omitted: unchanged"
    assert await put(locale="fr") is True
    assert await put(locale="fr", insights_opt_in=False) is False
    async with engine.connect() as conn:
        changes = (
            await conn.scalars(
                text("SELECT new_value->'changed' FROM audit_log WHERE reference = :r ORDER BY id"),
                {"r": f"directory:{external}"},
            )
        ).all()
    assert changes[1:] == [["insights_opt_in"], ["locale"], ["insights_opt_in"]], "the omitted field: no change"
