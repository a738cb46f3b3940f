"""Loyalty and insights over HTTP: an order's points applied once, a failed application queued
and listed by state, resolved under the key's name (with a points adjustment written once through
the ledger); a retailer's latest insight and message."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from tests.activities.test_orders import new_order
from tests.e2e.api_harness import api_settings, assert_problem, http, new_key, running_workers  # noqa: F401 - pytest fixtures, taken as test arguments
from tests.loyalty_factories import balance_and_ledger, new_customer, order_ref


async def test_an_orders_points_apply_once(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    customer = await new_customer(engine, 100)
    headers = await new_key(engine, "loyalty:write")
    order = order_ref()
    body = {"customer_id": customer, "points_redeemed": 40, "order_total": "25.00"}
    first = await http.post(f"/v1/loyalty/orders/{order}/points", json=body, headers=headers)
    again = await http.post(f"/v1/loyalty/orders/{order}/points", json=body, headers=headers)
    assert first.json()["outcome"] == "applied" and again.json()["outcome"] == "already_applied", first.text
    assert await balance_and_ledger(engine, customer) == (85, 85)
    too_many = await http.post(
        f"/v1/loyalty/orders/{order_ref()}/points", json={**body, "points_redeemed": 1000}, headers=headers
    )
    assert "has 85 points" in assert_problem(too_many, 409)["detail"]
    assert_problem(
        await http.post(
            f"/v1/loyalty/orders/{order_ref()}/points", json={**body, "customer_id": 987654321}, headers=headers
        ),
        404,
    )
    assert_problem(
        await http.post(
            f"/v1/loyalty/orders/{order_ref()}/points", json={**body, "points_redeemed": -1}, headers=headers
        ),
        422,
        "body.points_redeemed",
    )


async def test_a_failed_application_is_queued_listed_and_resolved_by_the_key(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    customer = await new_customer(engine, 0)
    headers = await new_key(engine, "loyalty:write", "loyalty:read", name="loyalty-desk")
    order = order_ref()
    # No PaymentIntent: the workflow cannot check the payment with Stripe, so the item goes to review.
    queued = await http.post(
        f"/v1/loyalty/orders/{order}/failed-points",
        json={"customer_id": customer, "order_total": "10.00", "error": "ledger timeout"},
        headers=headers,
    )
    assert queued.status_code == 200 and queued.json()["created"] is True, queued.text
    item = queued.json()["item_id"]
    listed = (await http.get("/v1/loyalty/items?limit=500", headers=headers)).json()["items"]
    assert item in [i["item_id"] for i in listed]
    shown = await http.get(f"/v1/loyalty/items/{item}", headers=headers)
    assert shown.status_code == 200 and shown.json()["item_id"] == item

    async def settled() -> str | None:
        async with engine.connect() as conn:
            return await conn.scalar(text("SELECT status FROM loyalty_reconciliation_queue WHERE id = :i"), {"i": item})

    for _ in range(100):
        if await settled() != "PENDING":
            break
        await asyncio.sleep(0.2)
    status = await settled()
    if status == "NEEDS_REVIEW":
        review = (await http.get("/v1/loyalty/items?state=NEEDS_REVIEW&limit=500", headers=headers)).json()["items"]
        assert item in [i["item_id"] for i in review]
        resolved = await http.post(
            f"/v1/loyalty/items/{item}/resolve", json={"note": "points given by hand"}, headers=headers
        )
        assert resolved.status_code == 202, resolved.text
        for _ in range(100):
            if await settled() == "RESOLVED":
                break
            await asyncio.sleep(0.2)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status, resolved_by FROM loyalty_reconciliation_queue WHERE id = :i"), {"i": item}
            )
        ).one()
    assert row.status == "RESOLVED"
    assert status != "NEEDS_REVIEW" or row.resolved_by == "loyalty-desk"
    assert_problem(await http.get("/v1/loyalty/items/987654321", headers=headers), 404)
    assert_problem(await http.post("/v1/loyalty/items/987654321/retry", headers=headers), 404)
    assert_problem(await http.get("/v1/loyalty/items?state=LOST", headers=headers), 422, "query.state")
    assert_problem(
        await http.post(
            f"/v1/loyalty/orders/{order_ref()}/failed-points",
            json={"customer_id": 987654321, "order_total": "1"},
            headers=headers,
        ),
        404,
    )


async def test_the_audit_runs_and_reports(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = await new_key(engine, "loyalty:write")
    report = await http.post("/v1/loyalty/audit", json={"audit_date": "2026-01-02"}, headers=headers)
    assert report.status_code == 200 and report.json()["discrepancy_count"] == 0, report.text


async def test_a_retailers_latest_insight_and_message(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    _, retailer, _ = await new_order(engine)
    headers = await new_key(engine, "insights:read")
    assert_problem(await http.get(f"/v1/insights/retailers/{retailer}", headers=headers), 404)
    today = date.today()
    async with engine.begin() as conn:
        for day, message in ((today - timedelta(days=1), "yesterday's"), (today, "Great week, Ada Stores!")):
            await conn.execute(
                text(
                    "INSERT INTO retailer_insights"
                    " (retailer_id, insight_date, orders_30d, orders_prev_30d, gmv_30d, gmv_prev_30d,"
                    " avg_order_value, risk_level, message) VALUES (:r, :d, 3, 2, 300, 200, 100, 'LOW', :m)"
                ),
                {"r": retailer, "d": day, "m": message},
            )
    latest = await http.get(f"/v1/insights/retailers/{retailer}", headers=headers)
    assert (
        latest.status_code == 200
        and latest.json()["message"] == "Great week, Ada Stores!"
        and latest.json()["orders_30d"] == 3
    )
    older = await http.get(f"/v1/insights/retailers/{retailer}?date={today - timedelta(days=1)}", headers=headers)
    assert older.json()["message"] == "yesterday's"
    assert_problem(
        await http.get(f"/v1/insights/retailers/{retailer}?date=yesterday", headers=headers), 422, "query.date"
    )


async def test_resolving_with_a_points_adjustment_writes_it_once(
    http: httpx.AsyncClient, engine: AsyncEngine, dev_env: WorkflowEnvironment
) -> None:
    customer = await new_customer(engine, 10)
    headers = await new_key(engine, "loyalty:write", "loyalty:read", name=f"desk-{uuid.uuid4().hex[:6]}")
    # Redeeming more than the balance is a permanent refusal: the item waits for a person.
    queued = await http.post(
        f"/v1/loyalty/orders/{order_ref()}/failed-points",
        json={"customer_id": customer, "points_redeemed": 50, "order_total": "10.00"},
        headers=headers,
    )
    item = queued.json()["item_id"]
    for _ in range(150):
        if (await http.get(f"/v1/loyalty/items/{item}", headers=headers)).json()["status"] == "NEEDS_REVIEW":
            break
        await asyncio.sleep(0.2)
    assert_problem(
        await http.post(
            f"/v1/loyalty/items/{item}/resolve", json={"note": "x", "points_adjustment": 0}, headers=headers
        ),
        422,
        "body.points_adjustment",
    )
    assert_problem(
        await http.post(
            f"/v1/loyalty/items/{item}/resolve", json={"note": "x", "points_adjustment": "many"}, headers=headers
        ),
        422,
        "body.points_adjustment",
    )
    assert_problem(
        await http.post(
            f"/v1/loyalty/items/{item}/resolve",
            json={"note": "x", "points_adjustment": 5},
            headers=await new_key(engine, "loyalty:read"),
        ),
        403,
    )
    assert_problem(
        await http.post(
            "/v1/loyalty/items/987654321/resolve", json={"note": "x", "points_adjustment": 5}, headers=headers
        ),
        404,
    )

    once = {**headers, "Idempotency-Key": f"resolve-{uuid.uuid4()}"}
    body = {"note": "goodwill for the failed redemption", "points_adjustment": 25}
    first = await http.post(f"/v1/loyalty/items/{item}/resolve", json=body, headers=once)
    retried = await http.post(f"/v1/loyalty/items/{item}/resolve", json=body, headers=once)
    assert first.status_code == retried.status_code == 202, first.text
    assert retried.headers.get("Idempotent-Replayed") == "true"
    result = await dev_env.client.get_workflow_handle(f"loyalty-reconcile/{item}").result()
    assert (
        result["status"] == "RESOLVED"
        and result["resolution"] == "manual: goodwill for the failed redemption (+25 points)"
    )
    assert (
        "already RESOLVED"
        in assert_problem(await http.post(f"/v1/loyalty/items/{item}/resolve", json=body, headers=headers), 409)[
            "detail"
        ]
    )
    async with engine.connect() as conn:
        rows = (
            (
                await conn.execute(
                    text(
                        "SELECT points FROM loyalty_transactions"
                        " WHERE reference_type = 'reconciliation_item' AND reference_id = :i AND type = 'adjusted'"
                    ),
                    {"i": str(item)},
                )
            )
            .scalars()
            .all()
        )
        resolved_by = await conn.scalar(
            text("SELECT resolved_by FROM loyalty_reconciliation_queue WHERE id = :i"), {"i": item}
        )
    assert rows == [25] and resolved_by.startswith("desk-")
    assert await balance_and_ledger(engine, customer) == (35, 35)
