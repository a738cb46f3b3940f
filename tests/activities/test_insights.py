"""Insight regeneration: the numbers a retailer sees, and the nightly job over every retailer."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.business_calendar import business_day
from activities.insights import InsightActivities, InsightStats, get_insight_message, render_insight_message
from devtools.seed import seed_retailers
from schemas.insights import InsightsRequest
from schemas.tables import CreditAccount, CreditTransaction, Order, OrderItem, Retailer, RetailerInsight
from workflows.insights import InsightsRegenerationWorkflow

DAY = date(2026, 11, 23)
AS_OF = datetime(2026, 11, 23, tzinfo=UTC)


async def _known_retailer(engine: AsyncEngine) -> int:
    """Two orders this month (100 + 50), one the month before (60), three debts."""
    async with engine.begin() as conn:
        rid = await conn.scalar(
            insert(Retailer).values(name="Amina Stores", phone="+15550001111").returning(Retailer.id)
        )
        await conn.execute(insert(CreditAccount).values(retailer_id=rid, credit_limit=1000, available_credit=600))
        for amount, days_ago, items in (
            (Decimal("100.00"), 3, [("Tea", 4, Decimal("25.00"))]),
            (Decimal("50.00"), 10, [("Rice", 1, Decimal("20.00")), ("Tea", 1, Decimal("30.00"))]),
            (Decimal("60.00"), 45, [("Sugar", 10, Decimal("6.00"))]),
            (Decimal("999.00"), 5, [("Oil", 99, Decimal("10.09"))]),  # failed: never counts
        ):
            oid = await conn.scalar(
                insert(Order)
                .values(
                    retailer_id=rid,
                    status="FAILED" if amount == Decimal("999.00") else "DELIVERED",
                    payment_mode="CREDIT",
                    total_amount=amount,
                    created_at=AS_OF - timedelta(days=days_ago),
                )
                .returning(Order.id)
            )
            await conn.execute(
                insert(OrderItem),
                [{"order_id": oid, "product_name": n, "quantity": q, "unit_price": p} for n, q, p in items],
            )
        debits = [
            # paid 2 days early, after 28 days
            dict(
                amount=200,
                due_date=DAY - timedelta(days=50),
                status="CLEARED",
                cleared_amount=200,
                cleared_at=AS_OF - timedelta(days=52),
                created_at=AS_OF - timedelta(days=80),
            ),
            # paid 5 days late, after 35 days
            dict(
                amount=300,
                due_date=DAY - timedelta(days=20),
                status="CLEARED",
                cleared_amount=300,
                cleared_at=AS_OF - timedelta(days=15),
                created_at=AS_OF - timedelta(days=50),
            ),
            # 40 days overdue, 400 outstanding
            dict(
                amount=400,
                due_date=DAY - timedelta(days=40),
                status="OPEN",
                cleared_amount=0,
                cleared_at=None,
                created_at=AS_OF - timedelta(days=70),
            ),
        ]
        await conn.execute(insert(CreditTransaction), [{"retailer_id": rid, "type": "DEBIT", **d} for d in debits])
    return rid


async def test_a_retailers_insight_has_the_numbers_they_would_compute_by_hand(engine: AsyncEngine) -> None:
    rid = await _known_retailer(engine)
    await InsightActivities(engine).regenerate_page(DAY, "UTC", after_id=rid - 1, page_size=1)

    async with engine.connect() as conn:
        row = (await conn.execute(select(RetailerInsight).where(RetailerInsight.retailer_id == rid))).one()
    assert (row.orders_30d, row.orders_prev_30d) == (2, 1)
    assert (row.gmv_30d, row.gmv_prev_30d) == (Decimal("150.00"), Decimal("60.00"))
    assert row.avg_order_value == Decimal("75.00")
    assert row.top_products[:2] == ["Sugar", "Tea"]  # 10 sugar, 5 tea, 1 rice over 60 days
    assert row.on_time_payment_rate == Decimal("0.5000")
    assert row.avg_days_to_pay == Decimal("31.50")
    assert row.credit_utilisation == Decimal("0.4000")
    assert row.risk_level == "HIGH"  # 40 days overdue
    message = await get_insight_message(engine, rid, DAY)
    assert message == row.message
    assert message.startswith("Hi Amina!")
    assert "2 orders worth $150.00 (up 150% on the month before), $75.00 on average" in message
    assert "overdue" in message
    assert "+1555" not in message


async def test_nightly_run_writes_one_row_per_retailer_and_rerun_overwrites(
    engine: AsyncEngine, time_skipping_env: WorkflowEnvironment, task_queue: str, record_history
) -> None:
    await seed_retailers(engine, 130, today=DAY)
    async with engine.connect() as conn:
        retailers = await conn.scalar(select(func.count()).select_from(Retailer))

    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=[InsightsRegenerationWorkflow],
        activities=[InsightActivities(engine).regenerate_insights_chunk, business_day],
    ):
        request = InsightsRequest(insight_date=DAY, page_size=50, pages_per_activity=2)
        first = await time_skipping_env.client.execute_workflow(
            InsightsRegenerationWorkflow.run, request, id=f"insights/{uuid.uuid4()}", task_queue=task_queue
        )
        handle = await time_skipping_env.client.start_workflow(
            InsightsRegenerationWorkflow.run, request, id=f"insights/{uuid.uuid4()}", task_queue=task_queue
        )
        second = await handle.result()
        status = await handle.query(InsightsRegenerationWorkflow.status)
        await record_history(handle, "insights_regeneration")

    assert first.retailers_done == second.retailers_done == retailers
    assert first.pages_done == -(-retailers // 50)
    assert status.finished and status.retailers_done == retailers and status.insight_date == DAY
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT retailer_id), min(generation), max(generation)"
                    " FROM retailer_insights WHERE insight_date = :d"
                ),
                {"d": DAY},
            )
        ).one()
    count, distinct, min_generation, _ = rows
    assert count == distinct == retailers
    assert min_generation >= 2, "the second run must regenerate every row, not skip any"


@pytest.mark.parametrize(
    ("overdue", "used", "level"),
    [(0, "0.1", "LOW"), (8, "0.1", "MEDIUM"), (2, "0.75", "MEDIUM"), (31, "0", "HIGH"), (0, "0.95", "HIGH")],
)
def test_risk_levels(overdue: int, used: str, level: str) -> None:
    from activities.insights import risk_level

    assert risk_level(overdue, Decimal(used)) == level


async def test_without_a_date_the_run_covers_the_current_business_day(
    engine: AsyncEngine, time_skipping_env: WorkflowEnvironment, task_queue: str, record_history
) -> None:
    from zoneinfo import ZoneInfo

    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=[InsightsRegenerationWorkflow],
        activities=[InsightActivities(engine).regenerate_insights_chunk, business_day],
    ):
        now = await time_skipping_env.get_current_time()
        handle = await time_skipping_env.client.start_workflow(
            InsightsRegenerationWorkflow.run,
            InsightsRequest(business_timezone="Pacific/Kiritimati"),  # UTC+14: often a day ahead of UTC
            id=f"insights/{uuid.uuid4()}",
            task_queue=task_queue,
        )
        result = await handle.result()
        await record_history(handle, "insights_scheduled_day")
    assert result.insight_date == now.astimezone(ZoneInfo("Pacific/Kiritimati")).date()


async def test_demo_data_covers_every_job_family_and_seeding_twice_adds_nothing(pg_server) -> None:
    from activities.database import create_engine
    from devtools.seed import seed_demo
    from workers import migrate

    url = pg_server.create_database(f"demo_{uuid.uuid4().hex[:8]}")
    migrate.upgrade(url)
    engine = create_engine(url)
    try:
        assert await seed_demo(engine, today=DAY) is not None
        assert await seed_demo(engine, today=DAY) is None
        async with engine.connect() as conn:
            counts = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT 'retailers', count(*) FROM retailers UNION ALL"
                            " SELECT 'pending', count(*) FROM pending_orders WHERE status = 'PENDING' UNION ALL"
                            " SELECT 'companies', count(*) FROM companies UNION ALL"
                            " SELECT 'open_cases', count(*) FROM recovery_cases WHERE status = 'OPEN' UNION ALL"
                            " SELECT 'queue', count(*) FROM loyalty_reconciliation_queue WHERE status = 'PENDING'"
                        )
                    )
                ).all()
            )
            buckets = set(
                (
                    await conn.execute(
                        text(
                            "SELECT CASE WHEN :d - due_date <= 0 THEN 'current' WHEN :d - due_date <= 7 THEN '1-7'"
                            " WHEN :d - due_date <= 15 THEN '8-15' WHEN :d - due_date <= 30 THEN '16-30'"
                            " WHEN :d - due_date <= 60 THEN '31-60' ELSE '60+' END"
                            " FROM credit_transactions WHERE type = 'DEBIT' AND status <> 'CLEARED'"
                        ),
                        {"d": DAY},
                    )
                ).scalars()
            )
        assert counts == {"retailers": 53, "pending": 10, "companies": 3, "open_cases": 6, "queue": 3}
        async with engine.connect() as conn:  # issue #35: a rupee store and a Spanish one, in their currency
            others = (
                await conn.execute(
                    text(
                        "SELECT r.locale, a.currency FROM retailers r JOIN credit_accounts a ON a.retailer_id = r.id"
                        " WHERE a.currency <> 'USD' ORDER BY a.currency"
                    )
                )
            ).all()
        assert [tuple(r) for r in others] == [("es-ES", "EUR"), ("en-IN", "INR")]
        assert buckets == {"current", "1-7", "8-15", "16-30", "31-60", "60+"}
    finally:
        await engine.dispose()


async def test_only_sold_orders_are_gmv_and_a_failed_orders_reversal_is_not_paid_on_time(engine: AsyncEngine) -> None:
    """Pending (abandoned) checkouts are not sales; a failed credit order's debit, closed by its
    reversal, was never paid, so it counts neither as paid on time nor in the days to pay."""
    from activities.orders import OrderActivities
    from schemas.orders import OrderFailure

    today = datetime.now(UTC).date()
    as_of = datetime.combine(today, datetime.min.time(), tzinfo=UTC)
    async with engine.begin() as conn:
        rid = await conn.scalar(
            insert(Retailer).values(name="Baraka Kiosk", phone="+15550002222").returning(Retailer.id)
        )
        await conn.execute(insert(CreditAccount).values(retailer_id=rid, credit_limit=1000, available_credit=750))
        orders = {}
        for key, status, amount, days_ago, item in (
            ("delivered", "DELIVERED", Decimal("100.00"), 3, ("Tea", 4, Decimal("25.00"))),
            ("confirmed", "CONFIRMED", Decimal("40.00"), 5, ("Rice", 2, Decimal("20.00"))),
            ("pending", "PENDING", Decimal("700.00"), 1, ("Abandoned Oil", 70, Decimal("10.00"))),
            ("credit", "DELIVERED", Decimal("250.00"), 10, ("Failed Flour", 50, Decimal("5.00"))),
        ):
            orders[key] = await conn.scalar(
                insert(Order)
                .values(
                    retailer_id=rid,
                    status=status,
                    payment_mode="CREDIT",
                    total_amount=amount,
                    created_at=as_of - timedelta(days=days_ago),
                )
                .returning(Order.id)
            )
            await conn.execute(
                insert(OrderItem).values(
                    order_id=orders[key], product_name=item[0], quantity=item[1], unit_price=item[2]
                )
            )
        await conn.execute(
            insert(CreditTransaction),
            [
                # the failed order's debit, not due for weeks: its reversal clears it "early"
                {
                    "retailer_id": rid,
                    "type": "DEBIT",
                    "amount": 250,
                    "due_date": today + timedelta(days=20),
                    "order_id": orders["credit"],
                    "reference": f"order:{orders['credit']}",
                    "status": "OPEN",
                    "cleared_amount": 0,
                    "cleared_at": None,
                    "created_at": as_of - timedelta(days=10),
                },
                # a real payment, 5 days late, after 35 days
                {
                    "retailer_id": rid,
                    "type": "DEBIT",
                    "amount": 300,
                    "due_date": today - timedelta(days=20),
                    "status": "CLEARED",
                    "cleared_amount": 300,
                    "cleared_at": as_of - timedelta(days=15),
                    "order_id": None,
                    "reference": "paid-late",
                    "created_at": as_of - timedelta(days=50),
                },
            ],
        )
    failed = await OrderActivities(engine).handle_order_failure(
        OrderFailure(order_id=orders["credit"], reason="delivery failed")
    )
    assert failed.reversed_amount == Decimal("250.00")

    await InsightActivities(engine).regenerate_page(today, "UTC", after_id=rid - 1, page_size=1)

    async with engine.connect() as conn:
        row = (await conn.execute(select(RetailerInsight).where(RetailerInsight.retailer_id == rid))).one()
    assert (row.orders_30d, row.gmv_30d) == (2, Decimal("140.00"))  # delivered + confirmed only
    assert "Abandoned Oil" not in row.top_products and "Failed Flour" not in row.top_products
    assert row.on_time_payment_rate == Decimal("0.0000")  # the one real payment was late
    assert row.avg_days_to_pay == Decimal("35.00")


def test_an_insight_writes_amounts_in_the_accounts_currency_as_the_retailers_locale_does() -> None:
    def stats(currency: str, locale: str) -> InsightStats:
        return InsightStats(
            1,
            "Asha Rao",
            3,
            2,
            Decimal("150000"),
            Decimal("100000"),
            [],
            None,
            None,
            Decimal(0),
            0,
            None,
            currency=currency,
            locale=locale,
        )

    assert "worth ₹1,50,000.00 (up 50% on the month before), ₹50,000.00 on average" in render_insight_message(
        stats("INR", "en-IN")
    )
    assert "worth 150.000,00\u00a0€" in render_insight_message(stats("EUR", "es-ES"))


async def test_a_page_that_fails_to_write_is_where_the_retry_resumes_and_no_page_after_it_is_counted(
    engine: AsyncEngine,
) -> None:
    """Pages are read ahead of the one being written: the heartbeated cursor must still never pass a
    page whose upsert has not returned, so a retry after a failed write redoes that page, not skips it."""
    import dataclasses

    from temporalio.testing import ActivityEnvironment

    from schemas.insights import InsightsChunk, InsightsChunkResult

    day = date(2026, 11, 30)
    await seed_retailers(engine, 60, today=day)
    async with engine.begin() as conn:
        ids = (await conn.execute(select(Retailer.id).order_by(Retailer.id.desc()).limit(60))).scalars().all()
        first, bad = min(ids), min(ids) + 34  # the 4th page of 10
        # paid before it was owed: a negative time to pay, which the insight row's CHECK refuses
        await conn.execute(
            insert(CreditTransaction).values(
                retailer_id=bad,
                type="DEBIT",
                amount=10,
                due_date=day,
                status="CLEARED",
                cleared_amount=10,
                cleared_at=AS_OF,
                created_at=AS_OF + timedelta(days=10_000),
            )
        )
    chunk = InsightsChunk(
        insight_date=day,
        business_timezone="UTC",
        after_retailer_id=first - 1,
        page_size=10,
        max_pages=50,
        max_seconds=60,
    )
    heartbeats: list[InsightsChunkResult] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda details: heartbeats.append(details.model_copy())
    activities = InsightActivities(engine)

    with pytest.raises(Exception, match="avg_days_to_pay"):
        await env.run(activities.regenerate_insights_chunk, chunk)

    last = heartbeats[-1]
    assert (last.after_retailer_id, last.pages_done, last.retailers_done) == (first + 29, 3, 30)
    async with engine.connect() as conn:
        written = set(
            (await conn.execute(select(RetailerInsight.retailer_id).where(RetailerInsight.insight_date == day)))
            .scalars()
            .all()
        )
    assert written == set(range(first, first + 30)), "every page up to the cursor written, none after it"

    async with engine.begin() as conn:  # the data fixed, the retry resumes from the heartbeat
        await conn.execute(
            text("DELETE FROM credit_transactions WHERE retailer_id = :r AND created_at > cleared_at"), {"r": bad}
        )
    env.info = dataclasses.replace(env.info, heartbeat_details=[last.model_dump()])
    result = await env.run(activities.regenerate_insights_chunk, chunk)
    assert (result.pages_done, result.retailers_done, result.finished) == (6, 60, True)
    async with engine.connect() as conn:
        generations = dict(
            (
                await conn.execute(
                    select(RetailerInsight.retailer_id, RetailerInsight.generation).where(
                        RetailerInsight.insight_date == day
                    )
                )
            ).all()
        )
    assert set(generations) == set(ids)
    assert set(generations.values()) == {1}, "no page written twice"
