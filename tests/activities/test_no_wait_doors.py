"""No door waits on a message (issue #33, point 1). At 23:00 in the recipient's zone the outbox
holds every message until 08:00 on a durable timer; a payment recorded over HTTP or the CLI, a
late order failure and a manual `nudge_now` under the brake each answer at once (under a second
of wall time), and the held message still goes out once when the hold ends.

The time-skipping server with the product's own workers (`build_workers`), the HTTP API in
process, a real PostgreSQL and the Twilio emulator; the outbox's quiet hours 21:00-08:00, as in
production. Waiting on a run's result skips the server's clock to 08:00."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, date, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from config.settings import Settings, load_settings
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas import ids
from schemas.churn import ManualNudge, NudgeOutcome
from schemas.orders import PendingOrderInput
from services import churn as churn_api
from services import messaging as messaging_api
from services.orders import complete_order, start_pending_order
from tests.activities.test_churn import new_member
from tests.activities.test_credit import new_debit, new_retailer
from tests.activities.test_orders import new_order, sent_to, zone_where
from tests.e2e.api_harness import new_key
from workers.api.app import create_app
from workers.cli import mount_families
from workers.worker import build_workers
from workflows.churn import ChurnCaseWorkflow

FAST = 15.0
"""Seconds of wall time a door may take to answer: loose, so a loaded CI machine never fails it
(here they answer in 0.2-0.5 s). What proves no door waits is the held message not yet sent when
the answer came, and the run still open: under time skipping the old doors answered after 08:00."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def settings(emulator: TwilioEmulator, sandbox: StripeSandbox) -> Settings:
    queue = f"nowait-{uuid.uuid4().hex[:10]}"
    return load_settings(
        task_queue=queue,
        messaging_task_queue=f"{queue}-msg",
        twilio_api_base=emulator.url,
        twilio_account_sid=emulator.account_sid,
        twilio_auth_token=SecretStr(emulator.auth_token),
        stripe_api_base=sandbox.url,  # a jobs worker is whole or refuses: the payments activities need a key
        stripe_secret_key=SecretStr("sk_test_nowait"),
        quiet_hours_start=21,
        quiet_hours_end=8,
        message_daily_cap=10_000,
        churn_manage_url="https://billing.example.test/{company_id}/membership",  # a nudge's link: none, no nudge
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def workers(
    time_skipping_env: WorkflowEnvironment, engine: AsyncEngine, settings: Settings
) -> AsyncIterator[None]:
    """The product's workers (every family, quiet hours on) on the time-skipping server."""
    async with AsyncExitStack() as stack:
        for worker in build_workers(time_skipping_env.client, settings, engine, resources=stack):
            await stack.enter_async_context(worker)
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def http(
    time_skipping_env: WorkflowEnvironment, engine: AsyncEngine, settings: Settings, workers: None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, engine, time_skipping_env.client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60) as client,
    ):
        yield client


async def late_evening_shop(env: WorkflowEnvironment, engine: AsyncEngine, **kwargs: object) -> tuple[int, str]:
    """A retailer (SMS) whose local time on the server's clock is 23:00: its messages are held."""
    retailer_id, phone = await new_retailer(engine, **kwargs)  # type: ignore[arg-type]
    zone = zone_where(await env.get_current_time(), 23)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE retailers SET timezone = :z WHERE id = :r"), {"z": zone, "r": retailer_id})
    assert phone is not None
    return retailer_id, phone


async def skip_to_the_end(env: WorkflowEnvironment, handle: WorkflowHandle) -> object:
    """The run's result, the server's clock skipping to 08:00 local meanwhile (a handle not from
    `start_workflow` does not unlock skipping by itself)."""
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        return await handle.result()


async def credit_status(engine: AsyncEngine, retailer_id: int) -> str:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT credit_status FROM retailers WHERE id = :r"), {"r": retailer_id})


async def test_a_payment_at_23_local_answers_at_once_and_its_message_goes_out_at_08(
    http: httpx.AsyncClient,
    engine: AsyncEngine,
    emulator: TwilioEmulator,
    time_skipping_env: WorkflowEnvironment,
    record_history,
) -> None:
    """POST /v1/credit/payments answers once the payment is written and the pause lifted; the
    retailer's `credit_resumed` waits for 08:00 in its zone and then goes out once."""
    env = time_skipping_env
    retailer_id, phone = await late_evening_shop(env, engine, status="PAUSED", paused_by="system")
    await new_debit(engine, retailer_id, "300.00", date.today() - timedelta(days=40))
    headers = await new_key(engine, "credit:write")
    body = {"retailer_id": retailer_id, "amount": "300.00", "reference": f"bank-{uuid.uuid4().hex[:8]}"}

    started = time.monotonic()
    paid = await http.post("/v1/credit/payments", json=body, headers=headers)
    took = time.monotonic() - started
    assert paid.status_code == 200, paid.text
    assert took < FAST, f"the payment waited {took:.1f} s"
    answer = paid.json()
    assert answer["payment"]["amount"] == "300.00" and answer["payment"]["duplicate"] is False
    assert answer["guardrails"]["resumed"] == [retailer_id]
    assert await credit_status(engine, retailer_id) == "ACTIVE"
    # The old door answered only once the run ended: under time skipping, after 08:00's message.
    assert await sent_to(emulator, phone) == [], "the payment's answer waited for the retailer's message"
    handle = env.client.get_workflow_handle(f"payment/{retailer_id}/{body['reference']}")
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING  # holding credit_resumed
    assert answer["workflow_id"] == handle.id

    started = time.monotonic()  # a retry (a backend's 30 s timeout) answers the first recording at once
    again = await http.post("/v1/credit/payments", json=body, headers=headers)
    other = await http.post("/v1/credit/payments", json={**body, "amount": "301.00"}, headers=headers)
    assert time.monotonic() - started < 2 * FAST
    assert again.status_code == 200 and again.json()["payment"]["duplicate"] is True, again.text
    assert again.json()["payment"]["credit_transaction_id"] == answer["payment"]["credit_transaction_id"]
    assert other.status_code == 409, other.text

    await skip_to_the_end(env, handle)
    assert len(await sent_to(emulator, phone)) == 1
    await record_history(handle, "credit_record_payment_held")
    after = await http.post("/v1/credit/payments", json=body, headers=headers)  # the run has ended
    assert after.status_code == 200 and after.json()["payment"]["duplicate"] is True, after.text
    assert len(await sent_to(emulator, phone)) == 1


async def test_a_late_order_failure_at_23_local_answers_at_once_and_its_message_goes_out_at_08(
    http: httpx.AsyncClient,
    engine: AsyncEngine,
    emulator: TwilioEmulator,
    time_skipping_env: WorkflowEnvironment,
    settings: Settings,
    record_history,
) -> None:
    """POST /v1/orders/{id}/failed after the clock ended answers once the order is failed and its
    debit reversed; the retailer's `order_failed` waits for 08:00 in its zone, then goes out once."""
    env = time_skipping_env
    order_id, retailer_id, phone = await new_order(
        engine, tz=zone_where(await env.get_current_time(), 23), on_credit=Decimal("250.00")
    )
    await start_pending_order(
        env.client,
        engine,
        PendingOrderInput(
            order_id=order_id, retailer_id=retailer_id, messaging_task_queue=settings.messaging_task_queue
        ),
        task_queue=settings.task_queue,
    )
    await complete_order(env.client, order_id)
    clock = env.client.get_workflow_handle(ids.pending_order(order_id))
    await skip_to_the_end(env, clock)  # COMPLETED: the failure comes after its clock ended
    headers = await new_key(engine, "orders:write")

    started = time.monotonic()
    failed = await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "delivery failed"}, headers=headers)
    took = time.monotonic() - started
    assert failed.status_code == 200, failed.text
    assert took < FAST, f"the failure waited {took:.1f} s"
    assert await sent_to(emulator, phone) == [], "the failure's answer waited for the retailer's message"
    answer = failed.json()
    assert answer["workflow_id"] == f"order-failure/{order_id}"
    assert answer["result"]["changed"] is True and answer["result"]["reversed_amount"] == "250.00"
    handle = env.client.get_workflow_handle(answer["workflow_id"])
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING  # holding order_failed

    started = time.monotonic()  # a retry while the message is held: nothing twice, at once
    again = await http.post(f"/v1/orders/{order_id}/failed", json={"reason": "delivery failed"}, headers=headers)
    assert time.monotonic() - started < FAST
    assert again.status_code == 200 and again.json()["result"]["changed"] is False, again.text

    await skip_to_the_end(env, handle)
    assert len(await sent_to(emulator, phone)) == 1
    await record_history(handle, "order_failure_held")


async def test_jobctl_payments_record_at_23_local_answers_at_once_and_the_message_goes_out_at_08(
    engine: AsyncEngine,
    emulator: TwilioEmulator,
    time_skipping_env: WorkflowEnvironment,
    settings: Settings,
    workers: None,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`jobctl payments record` (its Typer command in process, so the wall time is the command's,
    not the interpreter's start) answers with the recording; `credit_resumed` waits for 08:00."""
    env = time_skipping_env
    retailer_id, phone = await late_evening_shop(env, engine, status="PAUSED", paused_by="system")
    await new_debit(engine, retailer_id, "300.00", date.today() - timedelta(days=40))
    for name, value in {
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "TASK_QUEUE": settings.task_queue,
        "MESSAGING_TASK_QUEUE": settings.messaging_task_queue,
    }.items():
        monkeypatch.setenv(name, value)
    reference = f"bank-{uuid.uuid4().hex[:8]}"
    args = ["payments", "record", "--retailer", str(retailer_id), "--amount", "300.00", "--actor", "admin-1"]

    handle = env.client.get_workflow_handle(f"payment/{retailer_id}/{reference}")
    started = time.monotonic()
    invoking = asyncio.ensure_future(
        asyncio.to_thread(CliRunner().invoke, mount_families(), [*args, "--reference", reference, "--json"])
    )
    try:
        result = await asyncio.wait_for(asyncio.shield(invoking), timeout=10)
    except TimeoutError:  # waiting for 08:00 on a clock nobody skips: end the run to free the thread
        await handle.terminate("the command waited for the retailer's message")
        await invoking
        pytest.fail("the command waited for the retailer's message")
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert took < FAST, f"the command waited {took:.1f} s"
    assert await sent_to(emulator, phone) == [], "the command's answer waited for the retailer's message"
    answer = json.loads(result.output)
    assert answer["payment"]["amount"] == "300.00" and answer["guardrails"]["resumed"] == [retailer_id]
    assert await credit_status(engine, retailer_id) == "ACTIVE"

    await skip_to_the_end(env, handle)
    assert len(await sent_to(emulator, phone)) == 1


async def test_nudge_now_under_the_brake_answers_deferred_at_once_and_the_nudge_goes_out_at_08(
    engine: AsyncEngine,
    emulator: TwilioEmulator,
    time_skipping_env: WorkflowEnvironment,
    settings: Settings,
    workers: None,
    record_history,
) -> None:
    """The company's rules allow the nudge, the outbox holds it (the brake, then quiet hours at
    23:00 in the member's zone): `nudge_now` answers `deferred` with the time at once and leaves
    the case's lock, so a second `nudge_now` answers at once too; both go out at 08:00, once each."""
    env = time_skipping_env
    now = await env.get_current_time()
    zone = zone_where(now, 23)
    company, member, phone = await new_member(engine, offsets=[30], tz=zone)
    case_id = await churn_api.start_case(env.client, engine, settings, member, "payment_failed", company_id=company)
    handle = env.client.get_workflow_handle(ids.churn_case(case_id))

    async def nudge(actor: str) -> NudgeOutcome:
        asked = churn_api.nudge_now(env.client, engine, case_id, ManualNudge(actor_id=actor, company_id=company))
        try:
            return await asyncio.wait_for(asked, timeout=10)
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            pytest.fail("nudge_now waited for the held message")

    await messaging_api.pause(engine, reason="carrier incident", actor="ops")
    try:
        started = time.monotonic()
        first = await nudge("agent-1")
        took = time.monotonic() - started
        second = await nudge("agent-2")  # the lock is free: it does not queue behind the held one
        both = time.monotonic() - started
    finally:
        await messaging_api.resume(engine, reason=None, actor="ops")
    assert took < FAST and both < 2 * FAST, f"nudge_now took {took:.1f} s, two {both:.1f} s"
    assert (first.outcome, first.reason, second.outcome) == ("deferred", "paused", "deferred"), (first, second)
    assert first.at is not None and first.at > now
    assert await sent_to(emulator, phone) == []

    eight = (now.astimezone(ZoneInfo(zone)) + timedelta(days=1)).replace(hour=8, minute=1).astimezone(UTC)
    await env.sleep(eight - now)
    for _ in range(100):  # the sends run as the skipped timers fire
        if len(sent := await sent_to(emulator, phone)) >= 2:
            break
        await asyncio.sleep(0.1)
    await env.sleep(timedelta(hours=1))
    assert len(await sent_to(emulator, phone)) == 2, sent
    status = await handle.query(ChurnCaseWorkflow.status)
    assert (status.attempts, status.manual_nudges) == (2, 2)
    await handle.signal(ChurnCaseWorkflow.cancelled, {"company_id": company})
    await skip_to_the_end(env, handle)
    await record_history(handle, "churn_case_nudge_now_held")
