"""Orders and credit over HTTP: a checkout's clock (once per Idempotency-Key, once per order),
completion, failure, order validation; the risk view, profiles, pause/unpause audited under the
key's name, and a payment recorded once however often the backend retries it."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from tests.activities.test_orders import new_order
from tests.e2e.api_harness import api_settings, assert_problem, http, new_key, running_workers  # noqa: F401


async def _runs(env: WorkflowEnvironment, workflow_id: str) -> int:
    return len([w async for w in env.client.list_workflows(f'WorkflowId = "{workflow_id}"')])


async def test_checkout_started_twice_with_one_idempotency_key_is_one_clock(
    http: httpx.AsyncClient, engine: AsyncEngine, dev_env: WorkflowEnvironment
) -> None:
    order_id, retailer_id, _ = await new_order(engine)
    headers = {**await new_key(engine, "orders:write", "orders:read"), "Idempotency-Key": f"co-{uuid.uuid4()}"}
    first = await http.post(f"/v1/orders/{order_id}/checkout-started", json={"retailer_id": retailer_id}, headers=headers)
    again = await http.post(f"/v1/orders/{order_id}/checkout-started", json={"retailer_id": retailer_id}, headers=headers)
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json() and again.headers.get("Idempotent-Replayed") == "true"
    assert first.json()["state"] == "PENDING" and first.json()["expires_at"]
    other = await http.post(f"/v1/orders/{order_id}/checkout-started", json={"retailer_id": retailer_id + 1}, headers=headers)
    assert_problem(other, 422, "header.Idempotency-Key")
    assert await _runs(dev_env, f"pending-order/{order_id}") == 1
    assert_problem(await http.post(f"/v1/orders/{order_id}/completed", headers=headers), 422, "header.Idempotency-Key")
    headers.pop("Idempotency-Key")  # a key belongs to one request

    shown = await http.get(f"/v1/orders/{order_id}", headers=headers)
    assert shown.status_code == 200 and shown.json()["state"] == "PENDING"
    done = await http.post(f"/v1/orders/{order_id}/completed", headers=headers)
    assert done.status_code == 202 and done.json() == {"workflow_id": f"pending-order/{order_id}", "signal": "completed"}
    handle = dev_env.client.get_workflow_handle(f"pending-order/{order_id}")
    assert (await handle.result())["state"] == "COMPLETED"
    assert (await http.get(f"/v1/orders/{order_id}", headers=headers)).json()["state"] == "COMPLETED"
    assert_problem(await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "card declined"}, headers=headers), 409)


async def test_unknown_orders_are_404_and_a_blank_reason_is_422(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = await new_key(engine, "orders:write", "orders:read")
    assert_problem(await http.get("/v1/orders/987654321", headers=headers), 404)
    assert_problem(await http.post("/v1/orders/987654321/checkout-started", headers=headers), 404)
    assert_problem(await http.post("/v1/orders/987654321/completed", headers=headers), 404)
    assert_problem(await http.post("/v1/orders/1/failed", json={"reason": ""}, headers=headers), 422, "body.reason")


async def test_a_failed_order_over_http_fails_its_clock(http: httpx.AsyncClient, engine: AsyncEngine, dev_env: WorkflowEnvironment) -> None:
    order_id, _, _ = await new_order(engine)
    headers = await new_key(engine, "orders:write")
    assert (await http.post(f"/v1/orders/{order_id}/checkout-started", headers=headers)).status_code == 200
    failed = await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "out of stock"}, headers=headers)
    assert failed.status_code == 202, failed.text
    assert (await dev_env.client.get_workflow_handle(f"pending-order/{order_id}").result())["state"] == "FAILED"


async def test_order_validation_applies_the_credit_rules(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    _, retailer_id, _ = await new_order(engine)  # credit limit 1,000
    headers = await new_key(engine, "orders:read", "credit:write")
    ok = await http.post("/v1/orders/validate", json={"retailer_id": retailer_id, "amount": "500", "payment_mode": "CREDIT"}, headers=headers)
    assert ok.json() == {"allowed": True, "reason": None}
    over = await http.post("/v1/orders/validate", json={"retailer_id": retailer_id, "amount": "5000", "payment_mode": "CREDIT"}, headers=headers)
    assert over.json()["allowed"] is False and "available credit" in over.json()["reason"]
    await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "overdue"}, headers=headers)
    cod = await http.post("/v1/orders/validate", json={"retailer_id": retailer_id, "amount": "50", "payment_mode": "COD"}, headers=headers)
    assert cod.json()["allowed"] is True
    assert_problem(await http.post("/v1/orders/validate", json={"retailer_id": 987654321, "amount": "5", "payment_mode": "COD"},
                                   headers=headers), 404)
    assert_problem(await http.post("/v1/orders/validate", json={"retailer_id": retailer_id, "amount": "5", "payment_mode": "CASH"},
                                   headers=headers), 422, "body.payment_mode")


async def test_pause_and_unpause_are_audited_under_the_keys_name(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    _, retailer_id, _ = await new_order(engine)
    headers = await new_key(engine, "credit:write", "credit:read", name=f"ops-console-{uuid.uuid4().hex[:6]}")
    paused = await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "called, no answer"}, headers=headers)
    assert paused.status_code == 200 and paused.json()["new_status"] == "PAUSED", paused.text
    assert_problem(await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "again"}, headers=headers), 409)
    profile = (await http.get(f"/v1/credit/retailers/{retailer_id}", headers=headers)).json()
    assert profile["credit_status"] == "PAUSED" and profile["paused_by"].startswith("ops-console-")
    assert profile["recent_audit"][0]["by"] == profile["paused_by"]
    assert (await http.post(f"/v1/credit/retailers/{retailer_id}/unpause", json={"reason": "paid"}, headers=headers)).status_code == 200
    assert (await http.post(f"/v1/credit/retailers/{retailer_id}/block", json={"reason": "fraud"}, headers=headers)).json()["new_status"] == "BLOCKED"
    assert_problem(await http.get("/v1/credit/retailers/987654321", headers=headers), 404)
    assert_problem(await http.post("/v1/credit/retailers/987654321/pause", json={"reason": "x"}, headers=headers), 404)
    assert_problem(await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "  "}, headers=headers), 422, "body.reason")


async def test_the_risk_view_is_paged(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = await new_key(engine, "credit:read")
    view = (await http.get("/v1/credit/risk?limit=1", headers=headers)).json()
    assert [b["bucket"] for b in view["buckets"]] == ["current", "1-7", "8-15", "16-30", "31-60", "60+"]
    assert view["at_risk"]["limit"] == 1 and len(view["at_risk"]["items"]) <= 1


async def test_a_payment_retried_with_its_idempotency_key_is_recorded_once(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    order_id, retailer_id, _ = await new_order(engine, on_credit=__import__("decimal").Decimal("300.00"))
    headers = {**await new_key(engine, "credit:write"), "Idempotency-Key": f"pay-{uuid.uuid4()}"}
    body = {"retailer_id": retailer_id, "amount": "120.50", "reference": f"bank-{uuid.uuid4().hex[:10]}"}
    first = await http.post("/v1/credit/payments", json=body, headers=headers)
    again = await http.post("/v1/credit/payments", json=body, headers=headers)
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json() and first.json()["payment"]["allocations"][0]["allocated"] == "120.50"
    async with engine.connect() as conn:
        credits = await conn.scalar(text("SELECT count(*) FROM credit_transactions WHERE retailer_id = :r AND type = 'CREDIT'"), {"r": retailer_id})
        actor = await conn.scalar(text("SELECT performed_by FROM audit_log WHERE retailer_id = :r ORDER BY id DESC LIMIT 1"), {"r": retailer_id})
    assert credits == 1 and actor.startswith("k-")
    assert_problem(await http.post("/v1/credit/payments", json={**body, "amount": "-1"}, headers={"Authorization": headers["Authorization"]}),
                   422, "body.amount")
    assert_problem(await http.post("/v1/credit/payments", json={**body, "retailer_id": 987654321},
                                   headers={"Authorization": headers["Authorization"]}), 404)
