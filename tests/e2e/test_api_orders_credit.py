"""Orders and credit over HTTP: a checkout's clock (once per Idempotency-Key, once per order),
completion, failure (also after the clock ended: one reversal), order validation and placement
(one debit); the risk view, profiles, payment links, pause/unpause, limits and adjustments audited
under the key's name, and a payment recorded once however often the backend retries it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.messaging.outbox import QuietHours
from activities.orders import OrderActivities
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas.orders import PendingOrderStatus
from tests.activities.test_orders import new_order, pending_row, registered
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    api_settings,
    assert_problem,
    http,
    new_key,
    running_workers,
    stack_settings,
)
from workers.api.app import create_app
from workflows.orders import PendingOrderWorkflow


async def _runs(env: WorkflowEnvironment, workflow_id: str) -> int:
    return len([w async for w in env.client.list_workflows(f'WorkflowId = "{workflow_id}"')])


async def test_checkout_started_twice_with_one_idempotency_key_is_one_clock(
    http: httpx.AsyncClient, engine: AsyncEngine, dev_env: WorkflowEnvironment
) -> None:
    order_id, retailer_id, _ = await new_order(engine)
    headers = {**await new_key(engine, "orders:write", "orders:read"), "Idempotency-Key": f"co-{uuid.uuid4()}"}
    first = await http.post(
        f"/v1/orders/{order_id}/checkout-started", json={"retailer_id": retailer_id}, headers=headers
    )
    again = await http.post(
        f"/v1/orders/{order_id}/checkout-started", json={"retailer_id": retailer_id}, headers=headers
    )
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json() and again.headers.get("Idempotent-Replayed") == "true"
    assert first.json()["state"] == "PENDING" and first.json()["expires_at"]
    other = await http.post(
        f"/v1/orders/{order_id}/checkout-started", json={"retailer_id": retailer_id + 1}, headers=headers
    )
    assert_problem(other, 422, "header.Idempotency-Key")
    assert await _runs(dev_env, f"pending-order/{order_id}") == 1
    assert_problem(await http.post(f"/v1/orders/{order_id}/completed", headers=headers), 422, "header.Idempotency-Key")
    headers.pop("Idempotency-Key")  # a key belongs to one request

    shown = await http.get(f"/v1/orders/{order_id}", headers=headers)
    assert shown.status_code == 200 and shown.json()["state"] == "PENDING"
    done = await http.post(f"/v1/orders/{order_id}/completed", headers=headers)
    assert done.status_code == 202 and done.json() == {
        "workflow_id": f"pending-order/{order_id}",
        "signal": "completed",
    }
    handle = dev_env.client.get_workflow_handle(f"pending-order/{order_id}")
    assert (await handle.result())["state"] == "COMPLETED"
    assert (await http.get(f"/v1/orders/{order_id}", headers=headers)).json()["state"] == "COMPLETED"
    late = await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "courier lost it"}, headers=headers)
    assert late.status_code == 200, late.text
    assert (
        late.json()["workflow_id"] == f"order-failure/{order_id}" and late.json()["result"]["reversed_amount"] is None
    )  # COD


async def test_checkout_started_answers_from_the_database_without_a_worker(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, emulator: TwilioEmulator, sandbox: StripeSandbox
) -> None:
    """The answer waits for the row and the start RPC only: on a task queue no worker polls, the
    clock is told, its workflow is RUNNING with no task run yet, and a worker later computes the same."""
    settings = stack_settings(emulator, sandbox)  # a task queue of its own, polled by nobody yet
    app = create_app(settings, engine, dev_env.client)
    headers = await new_key(engine, "orders:write")
    order_id, retailer_id, _ = await new_order(engine)
    settled, _, _ = await new_order(engine)
    cancelled, _, _ = await new_order(engine)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO pending_orders (order_id, retailer_id, amount, status, expires_at, completed_at)"
                " SELECT id, retailer_id, total_amount, 'COMPLETED', now() + interval '20 hours', now()"
                " FROM orders WHERE id = :o"
            ),
            {"o": settled},
        )
        await conn.execute(text("UPDATE orders SET status = 'CANCELLED' WHERE id = :o"), {"o": cancelled})
    missing = 10_000_000 + int(uuid.uuid4().int % 1_000_000)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=30) as api:
        before = datetime.now(UTC)
        first = await api.post(f"/v1/orders/{order_id}/checkout-started", headers=headers)
        assert first.status_code == 200, first.text
        told = PendingOrderStatus.model_validate(first.json())
        row = await pending_row(engine, order_id)
        assert (told.state, told.expires_at, told.follow_up_sent_at) == ("PENDING", row.expires_at, None)
        assert before <= row.created_at and row.expires_at == row.created_at + timedelta(hours=24)
        assert told.follow_up_at == row.created_at + settings.order_followup_after  # quiet hours off here

        handle = dev_env.client.get_workflow_handle(f"pending-order/{order_id}")
        described = await handle.describe()
        assert described.status == WorkflowExecutionStatus.RUNNING
        events = [e.event_type async for e in handle.fetch_history_events()]
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED not in events  # no worker has run it

        again = await api.post(
            f"/v1/orders/{order_id}/checkout-started", json={"retailer_id": retailer_id}, headers=headers
        )
        assert again.status_code == 200 and again.json() == first.json()  # attached, the same clock
        assert await _runs(dev_env, f"pending-order/{order_id}") == 1
        assert (await handle.describe()).run_id == described.run_id

        assert (
            "does not exist"
            in assert_problem(await api.post(f"/v1/orders/{missing}/checkout-started", headers=headers), 404)["detail"]
        )
        assert (
            "already COMPLETED"
            in assert_problem(await api.post(f"/v1/orders/{settled}/checkout-started", headers=headers), 409)["detail"]
        )
        assert (
            "CANCELLED"
            in assert_problem(await api.post(f"/v1/orders/{cancelled}/checkout-started", headers=headers), 409)[
                "detail"
            ]
        )
    for refused in (missing, settled, cancelled):  # refused from the database, before any Temporal call
        with pytest.raises(RPCError) as not_found:
            await dev_env.client.get_workflow_handle(f"pending-order/{refused}").describe()
        assert not_found.value.status == RPCStatusCode.NOT_FOUND

    # A worker arrives: the clock's first task reads the same row and keeps the clock it was told.
    activities = OrderActivities(engine, QuietHours(settings.quiet_hours_start, settings.quiet_hours_end))
    async with Worker(
        dev_env.client,
        task_queue=settings.task_queue,
        workflows=[PendingOrderWorkflow],
        activities=[activities.register_pending_order, activities.settle_pending_order],
    ):
        assert await registered(handle) == told
        await handle.terminate("test done")


async def test_unknown_orders_are_404_and_a_blank_reason_is_422(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = await new_key(engine, "orders:write", "orders:read")
    assert_problem(await http.get("/v1/orders/987654321", headers=headers), 404)
    assert_problem(await http.post("/v1/orders/987654321/checkout-started", headers=headers), 404)
    assert_problem(await http.post("/v1/orders/987654321/completed", headers=headers), 404)
    assert_problem(await http.post("/v1/orders/1/failed", json={"reason": ""}, headers=headers), 422, "body.reason")


async def test_a_failed_order_over_http_fails_its_clock(
    http: httpx.AsyncClient, engine: AsyncEngine, dev_env: WorkflowEnvironment
) -> None:
    order_id, _, _ = await new_order(engine)
    headers = await new_key(engine, "orders:write")
    assert (await http.post(f"/v1/orders/{order_id}/checkout-started", headers=headers)).status_code == 200
    failed = await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "out of stock"}, headers=headers)
    assert failed.status_code == 202, failed.text
    assert (await dev_env.client.get_workflow_handle(f"pending-order/{order_id}").result())["state"] == "FAILED"


async def test_order_validation_applies_the_credit_rules(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    _, retailer_id, _ = await new_order(engine)  # credit limit 1,000
    headers = await new_key(engine, "orders:read", "credit:write")
    ok = await http.post(
        "/v1/orders/validate",
        json={"retailer_id": retailer_id, "amount": "500", "payment_mode": "CREDIT"},
        headers=headers,
    )
    assert ok.json() == {"allowed": True, "reason": None}
    over = await http.post(
        "/v1/orders/validate",
        json={"retailer_id": retailer_id, "amount": "5000", "payment_mode": "CREDIT"},
        headers=headers,
    )
    assert over.json()["allowed"] is False and "available credit" in over.json()["reason"]
    await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "overdue"}, headers=headers)
    cod = await http.post(
        "/v1/orders/validate", json={"retailer_id": retailer_id, "amount": "50", "payment_mode": "COD"}, headers=headers
    )
    assert cod.json()["allowed"] is True
    assert_problem(
        await http.post(
            "/v1/orders/validate",
            json={"retailer_id": 987654321, "amount": "5", "payment_mode": "COD"},
            headers=headers,
        ),
        404,
    )
    assert_problem(
        await http.post(
            "/v1/orders/validate",
            json={"retailer_id": retailer_id, "amount": "5", "payment_mode": "CASH"},
            headers=headers,
        ),
        422,
        "body.payment_mode",
    )


async def test_pause_and_unpause_are_audited_under_the_keys_name(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    _, retailer_id, _ = await new_order(engine)
    headers = await new_key(engine, "credit:write", "credit:read", name=f"ops-console-{uuid.uuid4().hex[:6]}")
    paused = await http.post(
        f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "called, no answer"}, headers=headers
    )
    assert paused.status_code == 200 and paused.json()["new_status"] == "PAUSED", paused.text
    assert_problem(
        await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "again"}, headers=headers), 409
    )
    profile = (await http.get(f"/v1/credit/retailers/{retailer_id}", headers=headers)).json()
    assert profile["credit_status"] == "PAUSED" and profile["paused_by"].startswith("ops-console-")
    assert profile["recent_audit"][0]["by"] == profile["paused_by"]
    assert (
        await http.post(f"/v1/credit/retailers/{retailer_id}/unpause", json={"reason": "paid"}, headers=headers)
    ).status_code == 200
    assert (
        await http.post(f"/v1/credit/retailers/{retailer_id}/block", json={"reason": "fraud"}, headers=headers)
    ).json()["new_status"] == "BLOCKED"
    assert_problem(await http.get("/v1/credit/retailers/987654321", headers=headers), 404)
    assert_problem(await http.post("/v1/credit/retailers/987654321/pause", json={"reason": "x"}, headers=headers), 404)
    assert_problem(
        await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "  "}, headers=headers),
        422,
        "body.reason",
    )


async def test_the_risk_view_is_paged(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = await new_key(engine, "credit:read")
    view = (await http.get("/v1/credit/risk?limit=1", headers=headers)).json()
    assert [b["bucket"] for b in view["buckets"]] == ["current", "1-7", "8-15", "16-30", "31-60", "60+"]
    assert view["at_risk"]["limit"] == 1 and len(view["at_risk"]["items"]) <= 1


async def test_a_payment_retried_with_its_idempotency_key_is_recorded_once(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    order_id, retailer_id, _ = await new_order(engine, on_credit=__import__("decimal").Decimal("300.00"))
    headers = {**await new_key(engine, "credit:write"), "Idempotency-Key": f"pay-{uuid.uuid4()}"}
    body = {"retailer_id": retailer_id, "amount": "120.50", "reference": f"bank-{uuid.uuid4().hex[:10]}"}
    first = await http.post("/v1/credit/payments", json=body, headers=headers)
    again = await http.post("/v1/credit/payments", json=body, headers=headers)
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json() and first.json()["payment"]["allocations"][0]["allocated"] == "120.50"
    # The same reference from another request: the first recording, said to be a duplicate; with
    # another amount, a conflict naming both (that money was recorded nowhere, answered 200).
    only_key = {"Authorization": headers["Authorization"]}
    resent = await http.post("/v1/credit/payments", json=body, headers=only_key)
    assert resent.status_code == 200 and resent.json()["payment"]["duplicate"] is True, resent.text
    conflict = await http.post("/v1/credit/payments", json={**body, "amount": "200.00"}, headers=only_key)
    assert_problem(conflict, 409)
    assert "120.50" in conflict.json()["detail"] and "200.00" in conflict.json()["detail"]
    async with engine.connect() as conn:
        credits = await conn.scalar(
            text("SELECT count(*) FROM credit_transactions WHERE retailer_id = :r AND type = 'CREDIT'"),
            {"r": retailer_id},
        )
        actor = await conn.scalar(
            text("SELECT performed_by FROM audit_log WHERE retailer_id = :r ORDER BY id DESC LIMIT 1"),
            {"r": retailer_id},
        )
    assert credits == 1 and actor.startswith("k-")
    assert_problem(
        await http.post(
            "/v1/credit/payments", json={**body, "amount": "-1"}, headers={"Authorization": headers["Authorization"]}
        ),
        422,
        "body.amount",
    )
    assert_problem(
        await http.post(
            "/v1/credit/payments",
            json={**body, "retailer_id": 987654321},
            headers={"Authorization": headers["Authorization"]},
        ),
        404,
    )


async def _order(engine: AsyncEngine, retailer_id: int, amount: str, mode: str = "CREDIT") -> int:
    async with engine.begin() as conn:
        return await conn.scalar(
            text(
                "INSERT INTO orders (retailer_id, status, payment_mode, total_amount)"
                " VALUES (:r, 'PENDING', :m, :a) RETURNING id"
            ),
            {"r": retailer_id, "m": mode, "a": Decimal(amount)},
        )


async def _available(engine: AsyncEngine, retailer_id: int) -> Decimal:
    async with engine.connect() as conn:
        return await conn.scalar(
            text("SELECT available_credit FROM credit_accounts WHERE retailer_id = :r"), {"r": retailer_id}
        )


async def test_a_failure_after_the_clock_ended_reverses_the_debit_once(
    http: httpx.AsyncClient, engine: AsyncEngine, dev_env: WorkflowEnvironment
) -> None:
    order_id, retailer_id, _ = await new_order(engine, on_credit=Decimal("300.00"))
    headers = await new_key(engine, "orders:write")
    assert (await http.post(f"/v1/orders/{order_id}/checkout-started", headers=headers)).status_code == 200
    assert (await http.post(f"/v1/orders/{order_id}/completed", headers=headers)).status_code == 202
    await dev_env.client.get_workflow_handle(f"pending-order/{order_id}").result()
    assert await _available(engine, retailer_id) == Decimal("700.00")

    once = {**headers, "Idempotency-Key": f"fail-{uuid.uuid4()}"}
    first = await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "delivery failed"}, headers=once)
    retried = await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "delivery failed"}, headers=once)
    assert first.status_code == retried.status_code == 200, first.text
    assert retried.json() == first.json() and retried.headers.get("Idempotent-Replayed") == "true"
    assert first.json()["result"] == {
        "order_id": order_id,
        "retailer_id": retailer_id,
        "changed": True,
        "reversed_amount": "300.00",
        "returned_to_balance": "0.00",
        "currency": "USD",
    }
    again = await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "delivery failed"}, headers=headers)
    assert again.status_code == 200 and again.json()["result"]["changed"] is False
    assert await _available(engine, retailer_id) == Decimal("1000.00")
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT status FROM orders WHERE id = :o"), {"o": order_id}) == "FAILED"
    assert_problem(await http.post("/v1/orders/987654321/failed", json={"reason": "x"}, headers=headers), 404)
    gone, _, _ = await new_order(engine)  # a clock that ended for an order the database no longer has
    assert (await http.post(f"/v1/orders/{gone}/checkout-started", headers=headers)).status_code == 200
    assert (await http.post(f"/v1/orders/{gone}/completed", headers=headers)).status_code == 202
    await dev_env.client.get_workflow_handle(f"pending-order/{gone}").result()
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM pending_orders WHERE order_id = :o"), {"o": gone})
        await conn.execute(text("DELETE FROM orders WHERE id = :o"), {"o": gone})
    assert (
        "does not exist"
        in assert_problem(await http.post(f"/v1/orders/{gone}/failed", json={"reason": "x"}, headers=headers), 404)[
            "detail"
        ]
    )
    assert_problem(
        await http.post(
            f"/v1/orders/{order_id}/failed", json={"reason": "x"}, headers=await new_key(engine, "orders:read")
        ),
        403,
    )


async def test_placing_a_credit_order_writes_one_debit(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    _, retailer_id, _ = await new_order(engine)  # credit limit 1,000
    order_id = await _order(engine, retailer_id, "250.00")
    headers = await new_key(engine, "orders:write", name=f"shop-{uuid.uuid4().hex[:6]}")
    body = {"retailer_id": retailer_id, "amount": "250.00", "payment_mode": "CREDIT"}
    once = {**headers, "Idempotency-Key": f"place-{uuid.uuid4()}"}
    first = await http.post(f"/v1/orders/{order_id}/placement", json=body, headers=once)
    retried = await http.post(f"/v1/orders/{order_id}/placement", json=body, headers=once)
    assert first.status_code == retried.status_code == 200, first.text
    assert retried.json() == first.json() and retried.headers.get("Idempotent-Replayed") == "true"
    placed = first.json()
    assert (
        placed["debit_id"]
        and placed["due_date"]
        and placed["available_credit"] == "750.00"
        and placed["duplicate"] is False
    )
    again = await http.post(f"/v1/orders/{order_id}/placement", json=body, headers=headers)
    assert again.json()["duplicate"] is True and again.json()["debit_id"] == placed["debit_id"]
    async with engine.connect() as conn:
        debits = await conn.scalar(
            text("SELECT count(*) FROM credit_transactions WHERE order_id = :o AND type = 'DEBIT'"), {"o": order_id}
        )
    assert debits == 1 and await _available(engine, retailer_id) == Decimal("750.00")

    big = await _order(engine, retailer_id, "5000.00")
    refused = assert_problem(
        await http.post(f"/v1/orders/{big}/placement", json={**body, "amount": "5000.00"}, headers=headers), 409
    )
    assert "available credit" in refused["detail"] and refused["code"] == "over_credit_limit"
    unknown = assert_problem(
        await http.post(f"/v1/orders/{order_id}/placement", json={**body, "retailer_id": 987654321}, headers=headers),
        404,
    )
    assert unknown["code"] == "unknown_retailer"
    assert_problem(
        await http.post(f"/v1/orders/{order_id}/placement", json={**body, "payment_mode": "CASH"}, headers=headers),
        422,
        "body.payment_mode",
    )
    assert_problem(
        await http.post(f"/v1/orders/{order_id}/placement", json={**body, "amount": "0"}, headers=headers),
        422,
        "body.amount",
    )
    assert_problem(
        await http.post(f"/v1/orders/{order_id}/placement", json=body, headers=await new_key(engine, "orders:read")),
        403,
    )
    assert_problem(await http.post(f"/v1/orders/{order_id}/placement", json=body), 401)


async def test_a_refused_placement_answers_its_type_and_code(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """Issue #34: a program branches on `code` (and `type`), never on the English in `detail`."""
    _, retailer_id, _ = await new_order(engine)  # credit limit 1,000
    headers = await new_key(engine, "orders:write", "credit:write")
    body = {"retailer_id": retailer_id, "amount": "100.5", "payment_mode": "CREDIT"}
    paused = await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "overdue"}, headers=headers)
    assert paused.status_code == 200, paused.text
    order_id = await _order(engine, retailer_id, "100.50")
    refused = assert_problem(await http.post(f"/v1/orders/{order_id}/placement", json=body, headers=headers), 409)
    assert (refused["code"], refused["type"]) == ("credit_paused", "https://jobctl.dev/problems/credit-paused")
    again = assert_problem(
        await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "again"}, headers=headers), 409
    )
    assert again["code"] == "status_unchanged"
    await http.post(f"/v1/credit/retailers/{retailer_id}/block", json={"reason": "fraud"}, headers=headers)
    blocked = assert_problem(await http.post(f"/v1/orders/{order_id}/placement", json=body, headers=headers), 409)
    assert blocked["code"] == "account_blocked"
    await http.post(f"/v1/credit/retailers/{retailer_id}/unpause", json={"reason": "paid"}, headers=headers)
    bad = assert_problem(
        await http.post(f"/v1/orders/{order_id}/placement", json={**body, "amount": "1e2"}, headers=headers),
        422,
        "body.amount",
    )
    assert bad["code"] == "validation_error"
    placed = await http.post(f"/v1/orders/{order_id}/placement", json=body, headers=headers)  # "100.5": normalised
    assert placed.status_code == 200, placed.text
    assert (placed.json()["amount"], placed.json()["available_credit"]) == ("100.50", "899.50")
    async with engine.connect() as conn:  # the refusals changed nothing: one debit, the placed one
        debits = await conn.scalar(
            text("SELECT count(*) FROM credit_transactions WHERE order_id = :o AND type = 'DEBIT'"), {"o": order_id}
        )
    assert debits == 1


async def test_limits_change_audited_under_the_keys_name(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    _, retailer_id, _ = await new_order(engine, on_credit=Decimal("300.00"))
    name = f"risk-desk-{uuid.uuid4().hex[:6]}"
    headers = await new_key(engine, "credit:write", "credit:read", name=name)
    changed = await http.post(
        f"/v1/credit/retailers/{retailer_id}/limits",
        json={"credit_limit": "2000.00", "max_outstanding_days": 10, "reason": "good payer"},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["old"] == {"credit_limit": "1000.00", "max_outstanding_days": 30}
    assert changed.json()["new"] == {"credit_limit": "2000.00", "max_outstanding_days": 10}
    profile = (await http.get(f"/v1/credit/retailers/{retailer_id}", headers=headers)).json()
    assert profile["credit_limit"] == "2000.00" and profile["available_credit"] == "1700.00"
    assert profile["recent_audit"][0] == {
        **profile["recent_audit"][0],
        "action": "credit_limits_changed",
        "by": name,
        "reason": "good payer",
    }
    assert_problem(await http.post(f"/v1/credit/retailers/{retailer_id}/limits", json={}, headers=headers), 422, "body")
    assert_problem(
        await http.post(
            f"/v1/credit/retailers/{retailer_id}/limits", json={"max_outstanding_days": -1}, headers=headers
        ),
        422,
        "body.max_outstanding_days",
    )
    assert_problem(
        await http.post(f"/v1/credit/retailers/{retailer_id}/limits", json={"max_order_value": "0"}, headers=headers),
        422,
        "body.max_order_value",
    )
    assert_problem(
        await http.post("/v1/credit/retailers/987654321/limits", json={"credit_limit": "5"}, headers=headers), 404
    )
    assert_problem(
        await http.post(
            f"/v1/credit/retailers/{retailer_id}/limits",
            json={"credit_limit": "5"},
            headers=await new_key(engine, "credit:read"),
        ),
        403,
    )


async def test_an_adjustment_retried_with_its_idempotency_key_is_one_ledger_row(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    _, retailer_id, _ = await new_order(engine, on_credit=Decimal("300.00"))
    headers = await new_key(engine, "credit:write")
    once = {**headers, "Idempotency-Key": f"adj-{uuid.uuid4()}"}
    body = {"amount": "100.00", "reason": "returned two crates"}
    first = await http.post(f"/v1/credit/retailers/{retailer_id}/adjustments", json=body, headers=once)
    retried = await http.post(f"/v1/credit/retailers/{retailer_id}/adjustments", json=body, headers=once)
    assert first.status_code == retried.status_code == 200, first.text
    assert retried.json() == first.json() and first.json()["duplicate"] is False
    assert first.json()["cleared"][0]["allocated"] == "100.00" and first.json()["reference"].startswith("adjust:api-")
    # The handler ran again for the same key (the claim released after a lost commit answer, or
    # the process died before it stored the answer): the reference it derives is the same one.
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM api_idempotency_keys WHERE idempotency_key = :k"), {"k": once["Idempotency-Key"]}
        )
    rerun = await http.post(f"/v1/credit/retailers/{retailer_id}/adjustments", json=body, headers=once)
    assert rerun.status_code == 200 and rerun.json()["duplicate"] is True, rerun.text
    assert rerun.json()["reference"] == first.json()["reference"]
    assert_problem(
        await http.post(f"/v1/credit/retailers/{retailer_id}/adjustments", json=body, headers=headers),
        422,
        "body.reference",
    )
    charge = await http.post(
        f"/v1/credit/retailers/{retailer_id}/adjustments",
        json={"amount": "-40.00", "reason": "late fee", "reference": "fee-2026-11"},
        headers=headers,
    )
    repeat = await http.post(
        f"/v1/credit/retailers/{retailer_id}/adjustments",
        json={"amount": "-40.00", "reason": "late fee", "reference": "fee-2026-11"},
        headers=headers,
    )
    assert charge.json()["duplicate"] is False and repeat.json()["duplicate"] is True, charge.text
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT type, amount FROM credit_transactions"
                    " WHERE retailer_id = :r AND reference LIKE 'adjust:%' ORDER BY id"
                ),
                {"r": retailer_id},
            )
        ).all()
    assert [(r.type, r.amount) for r in rows] == [("CREDIT", Decimal("100.00")), ("DEBIT", Decimal("40.00"))]
    # The OpenAPI's largest charge is accepted once; a second would take the ledger past what it can
    # hold: a 422 naming the amount, nothing written (it was a 500).
    largest = {"amount": "-999999999999.99", "reason": "write-off test"}
    ok = await http.post(
        f"/v1/credit/retailers/{retailer_id}/adjustments", json={**largest, "reference": "max-1"}, headers=headers
    )
    assert ok.status_code == 200, ok.text
    too_far = await http.post(
        f"/v1/credit/retailers/{retailer_id}/adjustments", json={**largest, "reference": "max-2"}, headers=headers
    )
    assert "largest amount" in assert_problem(too_far, 422, "body.amount")["detail"]
    async with engine.connect() as conn:
        assert not await conn.scalar(
            text("SELECT count(*) FROM credit_transactions WHERE retailer_id = :r AND reference = 'adjust:max-2'"),
            {"r": retailer_id},
        )
    assert_problem(
        await http.post(
            f"/v1/credit/retailers/{retailer_id}/adjustments", json={**body, "amount": "0"}, headers=headers
        ),
        422,
        "body.amount",
    )
    assert_problem(
        await http.post(
            f"/v1/credit/retailers/{retailer_id}/adjustments", json={**body, "reason": ""}, headers=headers
        ),
        422,
        "body.reason",
    )
    assert_problem(
        await http.post(
            "/v1/credit/retailers/987654321/adjustments", json={**body, "reference": "adj-unknown"}, headers=headers
        ),
        404,
    )
    assert_problem(
        await http.post(
            f"/v1/credit/retailers/{retailer_id}/adjustments", json=body, headers=await new_key(engine, "credit:read")
        ),
        403,
    )


async def test_a_retailers_open_payment_link(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    _, retailer_id, _ = await new_order(engine, on_credit=Decimal("300.00"))
    headers = await new_key(engine, "credit:read")
    assert (
        "no payment link"
        in assert_problem(await http.get(f"/v1/credit/retailers/{retailer_id}/payment-link", headers=headers), 404)[
            "detail"
        ]
    )
    session = f"cs_test_{uuid.uuid4().hex}"
    async with engine.begin() as conn:
        debit = await conn.scalar(text("SELECT id FROM credit_transactions WHERE retailer_id = :r"), {"r": retailer_id})
        await conn.execute(
            text(
                "INSERT INTO payment_links"
                " (retailer_id, checkout_session_id, url, fingerprint, amount, currency, debit_ids)"
                " VALUES (:r, :s, :u, 'fp', 300.00, 'usd', ARRAY[CAST(:d AS bigint)])"
            ),
            {"r": retailer_id, "s": session, "u": f"https://checkout.stripe.test/{session}", "d": debit},
        )
    link = await http.get(f"/v1/credit/retailers/{retailer_id}/payment-link", headers=headers)
    assert link.status_code == 200, link.text
    assert link.json() == {
        **link.json(),
        "checkout_session_id": session,
        "amount": "300.00",
        "currency": "usd",
        "debit_ids": [debit],
    }
    assert (await http.get(f"/v1/credit/retailers/{retailer_id}", headers=headers)).json()["payment_link"][
        "url"
    ] == link.json()["url"]
    assert_problem(await http.get("/v1/credit/retailers/987654321/payment-link", headers=headers), 404)
    assert_problem(
        await http.get(
            f"/v1/credit/retailers/{retailer_id}/payment-link", headers=await new_key(engine, "credit:write")
        ),
        403,
    )
    assert_problem(await http.get(f"/v1/credit/retailers/{retailer_id}/payment-link"), 401)
