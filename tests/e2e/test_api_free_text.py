"""Bad text and unknown fields over HTTP, and refusals that say why (issue #33), against the real
stack: a NUL is a 422 naming the field with nothing changed (the order still fails cleanly after
it), an unknown field is a 422 naming it (the brake stays released), a refused incentive names
Stripe's reason and its code, and a refused churn signal shows in the case's `status` query."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.testing import WorkflowEnvironment

from schemas import ids
from schemas.churn import CaseStatus
from tests.activities.test_churn import new_member
from tests.activities.test_orders import new_order
from tests.e2e.api_harness import api_settings, assert_problem, http, new_key, running_workers  # noqa: F401 - pytest fixtures, taken as test arguments
from workflows.churn import ChurnCaseWorkflow


async def test_a_nul_in_a_pause_reason_is_422_naming_it_and_changes_nothing(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    _, retailer_id, _ = await new_order(engine)
    headers = await new_key(engine, "credit:write", "credit:read")
    refused = assert_problem(
        await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "bad\u0000x"}, headers=headers),
        422,
        "body.reason",
    )
    assert "NUL" in refused["detail"]
    profile = (await http.get(f"/v1/credit/retailers/{retailer_id}", headers=headers)).json()
    assert profile["credit_status"] == "ACTIVE" and profile["recent_audit"] == []


async def test_a_nul_in_an_order_failure_is_422_and_the_order_still_fails_cleanly(
    http: httpx.AsyncClient, engine: AsyncEngine, dev_env: WorkflowEnvironment
) -> None:
    order_id, retailer_id, _ = await new_order(engine, on_credit=Decimal("300.00"))
    headers = await new_key(engine, "orders:write")
    assert (await http.post(f"/v1/orders/{order_id}/checkout-started", headers=headers)).status_code == 200
    assert_problem(
        await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "lost\u0000"}, headers=headers),
        422,
        "body.reason",
    )
    failed = await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "  courier lost it "}, headers=headers)
    assert failed.status_code == 202, failed.text
    assert (await dev_env.client.get_workflow_handle(ids.pending_order(order_id)).result())["state"] == "FAILED"
    async with engine.connect() as conn:
        order = (
            await conn.execute(text("SELECT status, failure_reason FROM orders WHERE id = :o"), {"o": order_id})
        ).one()
        available = await conn.scalar(
            text("SELECT available_credit FROM credit_accounts WHERE retailer_id = :r"), {"r": retailer_id}
        )
    assert tuple(order) == ("FAILED", "courier lost it")
    assert available == Decimal("1000.00")


async def test_an_unknown_field_is_422_naming_it_and_the_brake_is_not_pulled(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine, "messaging:read", "messaging:write")
    assert (await http.get("/v1/messaging/brake", headers=headers)).json()["paused"] is False
    refused = assert_problem(
        await http.post("/v1/messaging/brake/pause", json={"reason": "x", "unexpected_field": "x"}, headers=headers),
        422,
        "body.unexpected_field",
    )
    assert "Extra inputs are not permitted" in refused["detail"]
    assert (await http.get("/v1/messaging/brake", headers=headers)).json()["paused"] is False


async def test_a_refused_incentive_names_stripes_reason_and_a_code(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    company, member, _ = await new_member(engine, offsets=[30])  # never subscribed at Stripe
    headers = await new_key(engine, "churn:write", "churn:read", company=company)
    opened = await http.post("/v1/churn/cases", json={"membership_id": member}, headers=headers)
    assert opened.status_code == 201, opened.text
    refused = assert_problem(
        await http.post(f"/v1/churn/cases/{opened.json()['case_id']}/incentive", json={"days": 5}, headers=headers),
        409,
    )
    assert refused["detail"] == f"member {member} has no Stripe subscription"
    assert refused["code"] == "no_subscription"  # snake-cased since issue #34


async def test_a_manual_nudge_without_a_company_leaves_a_trace_in_the_cases_status(
    http: httpx.AsyncClient, engine: AsyncEngine, dev_env: WorkflowEnvironment
) -> None:
    company, member, _ = await new_member(engine, offsets=[30])
    headers = await new_key(engine, "churn:write", "churn:read", company=company)
    case_id = (await http.post("/v1/churn/cases", json={"membership_id": member}, headers=headers)).json()["case_id"]
    handle = dev_env.client.get_workflow_handle(ids.churn_case(case_id))
    await handle.signal("manual_nudge", {"actor_id": "ops-1"})  # as `temporal workflow signal` sends it

    status: CaseStatus | None = None
    for _ in range(100):
        status = await handle.query(ChurnCaseWorkflow.status)
        if status.last_refusal:
            break
        await asyncio.sleep(0.1)
    assert status is not None and status.last_refusal == "manual_nudge refused: without a company", status
    assert status.last_refusal_at is not None and status.manual_nudges == 0
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "last refused signal: manual_nudge refused: without a company" in metadata.current_details
    shown = (await http.get(f"/v1/churn/cases/{case_id}", headers=headers)).json()
    assert shown["workflow"]["last_refusal"] == "manual_nudge refused: without a company"
