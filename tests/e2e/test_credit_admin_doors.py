"""One admin action, one behaviour, whichever door (issue #32, point 4): over HTTP and the CLI an
adjustment in the retailer's favour and a raised limit lift a system pause at once; an admin's
pause, unpause or block tells the retailer once, through the outbox (quiet hours, opt-outs), and no
request waits for a held message. The real stack: PostgreSQL, the Temporal dev server with the
product's workers, the Twilio emulator; quiet hours on (21:00-08:00 in the retailer's zone)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from activities.credit.admin import AdminChange
from config.settings import Settings
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas.messaging import MessageBatchResult
from services.credit_admin import tell_retailer
from tests.activities.test_credit import new_debit, new_retailer
from tests.activities.test_orders import sent_to
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    assert_problem,
    http,
    new_key,
    running_workers,
    stack_settings,
)
from tests.unit.test_cli_input import jobctl

TODAY = date.today()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api_settings(emulator: TwilioEmulator, sandbox: StripeSandbox) -> Settings:
    """The harness's stack with the outbox's quiet hours on, as in production."""
    return stack_settings(emulator, sandbox, quiet_hours_start=21, quiet_hours_end=8)


def zone_at(hour: int) -> str:
    """A time zone whose local time is now `hour` o'clock (Etc/GMT signs are inverted)."""
    offset = (hour - datetime.now(UTC).hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}"


async def shop(engine: AsyncEngine, *, local_hour: int = 12, **kwargs: object) -> tuple[int, str]:
    """A retailer (SMS) whose local time is `local_hour`: noon sends at once, 23:00 is held."""
    retailer_id, phone = await new_retailer(engine, **kwargs)  # type: ignore[arg-type]
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE retailers SET timezone = :z WHERE id = :r"), {"z": zone_at(local_hour), "r": retailer_id}
        )
    assert phone is not None
    return retailer_id, phone


async def status_of(engine: AsyncEngine, retailer_id: int) -> tuple[str, str | None]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT credit_status, paused_by FROM retailers WHERE id = :r"), {"r": retailer_id})
        ).one()
    return row.credit_status, row.paused_by


async def resumed_audit(engine: AsyncEngine, retailer_id: int) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT reference, performed_by FROM audit_log"
                " WHERE retailer_id = :r AND action = 'credit_resumed' ORDER BY id"
            ),
            {"r": retailer_id},
        )
        return [(r.reference, r.performed_by) for r in rows]


async def bodies(emulator: TwilioEmulator, phone: str, *, expect: int, within: float = 10.0) -> list[str]:
    """The SMS bodies the emulator accepted for `phone`, once `expect` arrived (or `within` s passed)."""
    deadline = time.monotonic() + within
    while True:
        found = [m["body"] for m in await sent_to(emulator, phone)]
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


def cli_env(dev_env: WorkflowEnvironment, settings: Settings, database_url: str) -> dict[str, str]:
    """`jobctl` on this module's stack: its database, Temporal and task queues."""
    return {
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TASK_QUEUE": settings.task_queue,
        "MESSAGING_TASK_QUEUE": settings.messaging_task_queue,
    }


async def test_a_positive_adjustment_over_http_lifts_a_system_pause_as_the_cli_one_does(
    http: httpx.AsyncClient, engine: AsyncEngine, emulator: TwilioEmulator
) -> None:
    retailer_id, phone = await shop(engine, status="PAUSED", paused_by="system", limit=Decimal("1000"))
    overdue = await new_debit(engine, retailer_id, "300.00", TODAY - timedelta(days=40))  # past the 30-day limit
    headers = {**await new_key(engine, "credit:write"), "Idempotency-Key": f"adj-{uuid.uuid4()}"}
    body = {"amount": "300.00", "reason": "returned 2 crates", "reference": f"RMA-{uuid.uuid4().hex[:8]}"}

    first = await http.post(f"/v1/credit/retailers/{retailer_id}/adjustments", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["credit_resumed"] is True and first.json()["cleared"][0]["debit_id"] == overdue
    assert await status_of(engine, retailer_id) == ("ACTIVE", None)
    # The same reference again (another request): recorded once, the pause lifted once.
    only_key = {"Authorization": headers["Authorization"]}
    again = await http.post(f"/v1/credit/retailers/{retailer_id}/adjustments", json=body, headers=only_key)
    assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
    assert await resumed_audit(engine, retailer_id) == [(f"adjust:{body['reference']}", "system")]
    told = await bodies(emulator, phone, expect=1)
    assert sum("open again" in b for b in told) == 1, told


async def test_raising_a_limit_lifts_an_over_limit_system_pause_over_http_and_the_cli(
    http: httpx.AsyncClient,
    engine: AsyncEngine,
    emulator: TwilioEmulator,
    dev_env: WorkflowEnvironment,
    api_settings: Settings,
    database_url: str,
) -> None:
    headers = await new_key(engine, "credit:write")
    over_http, phone = await shop(engine, status="PAUSED", paused_by="system", limit=Decimal("100"))
    await new_debit(engine, over_http, "300.00", TODAY + timedelta(days=10))  # not due: only above the limit
    wanted = {"credit_limit": "500.00", "reason": "good payer"}
    raised = await http.post(f"/v1/credit/retailers/{over_http}/limits", json=wanted, headers=headers)
    assert raised.status_code == 200, raised.text
    assert raised.json()["credit_resumed"] is True
    assert await status_of(engine, over_http) == ("ACTIVE", None)
    (reference, by), *_ = await resumed_audit(engine, over_http)
    assert (reference, by) == (f"limits:{raised.json()['audit_id']}", "system")

    by_cli, _ = await shop(engine, status="PAUSED", paused_by="system", limit=Decimal("100"))
    await new_debit(engine, by_cli, "300.00", TODAY + timedelta(days=10))
    result = await asyncio.to_thread(  # in a thread: the workers run on this event loop
        jobctl,
        "credit",
        "limits",
        str(by_cli),
        "--credit-limit",
        "500",
        "--actor",
        "admin-9",
        **cli_env(dev_env, api_settings, database_url),
    )
    assert result.returncode == 0, result.stderr
    assert "credit resumed" in result.stdout
    assert await status_of(engine, by_cli) == ("ACTIVE", None)
    # A limit the pause still exceeds: re-checked, the pause stands.
    still, _ = await shop(engine, status="PAUSED", paused_by="system", limit=Decimal("100"))
    await new_debit(engine, still, "300.00", TODAY + timedelta(days=10))
    short = await http.post(f"/v1/credit/retailers/{still}/limits", json={"credit_limit": "200.00"}, headers=headers)
    assert short.status_code == 200 and short.json()["credit_resumed"] is False, short.text
    assert await status_of(engine, still) == ("PAUSED", "system")
    told = await bodies(emulator, phone, expect=1)
    assert sum("open again" in b for b in told) == 1, told


async def test_an_admins_pause_unpause_and_block_tell_the_retailer_once(
    http: httpx.AsyncClient,
    engine: AsyncEngine,
    emulator: TwilioEmulator,
    dev_env: WorkflowEnvironment,
    api_settings: Settings,
    database_url: str,
) -> None:
    retailer_id, phone = await shop(engine)
    headers = await new_key(engine, "credit:write")
    once = {**headers, "Idempotency-Key": f"pause-{uuid.uuid4()}"}
    paused = await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "disputed"}, headers=once)
    retried = await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "disputed"}, headers=once)
    assert paused.status_code == retried.status_code == 200, paused.text
    assert retried.json() == paused.json() and retried.headers.get("Idempotent-Replayed") == "true"
    assert_problem(
        await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "disputed"}, headers=headers), 409
    )
    change = paused.json()
    notice = dev_env.client.get_workflow_handle(change["notice_workflow_id"], result_type=MessageBatchResult)
    assert change["notice_workflow_id"] == f"credit-admin-notice/{change['audit_id']}"
    assert (await notice.result()).sent == 1
    # The notice started again for the same change (a handler re-run): the same workflow, no message.
    again = AdminChange(retailer_id, change["old_status"], change["new_status"], change["audit_id"])
    assert await tell_retailer(dev_env.client, api_settings, again, "pause") == change["notice_workflow_id"]

    unpaused = await http.post(f"/v1/credit/retailers/{retailer_id}/unpause", json={"reason": "paid"}, headers=headers)
    assert unpaused.status_code == 200, unpaused.text
    await dev_env.client.get_workflow_handle(unpaused.json()["notice_workflow_id"]).result()
    blocked = await asyncio.to_thread(  # the CLI's block: the same service, the same notice
        jobctl,
        "credit",
        "block",
        str(retailer_id),
        "--reason",
        "fraud",
        "--actor",
        "admin-9",
        **cli_env(dev_env, api_settings, database_url),
    )
    assert blocked.returncode == 0 and "retailer told" in blocked.stdout, blocked.stderr
    told = await bodies(emulator, phone, expect=3)
    assert [sum(word in b for b in told) for word in ("has paused", "has reopened", "has blocked")] == [1, 1, 1], told
    assert len(told) == 3

    # Opted out of SMS: the change is made and its notice suppressed, not sent.
    quiet, quiet_phone = await shop(engine)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO recipient_opt_outs (recipient_type, recipient_id, channel, reason)"
                " VALUES ('retailer', :r, 'sms', 'STOP')"
            ),
            {"r": str(quiet)},
        )
    stopped = await http.post(f"/v1/credit/retailers/{quiet}/block", json={"reason": "fraud"}, headers=headers)
    assert stopped.status_code == 200, stopped.text
    result = await dev_env.client.get_workflow_handle(
        stopped.json()["notice_workflow_id"], result_type=MessageBatchResult
    ).result()
    assert (result.sent, result.suppressed) == (0, {"opted_out": 1})
    assert await sent_to(emulator, quiet_phone) == []


async def test_a_pause_at_23_local_is_held_and_the_request_returns_at_once(
    http: httpx.AsyncClient, engine: AsyncEngine, emulator: TwilioEmulator, dev_env: WorkflowEnvironment
) -> None:
    retailer_id, phone = await shop(engine, local_hour=23)
    headers = await new_key(engine, "credit:write")
    started = time.monotonic()
    paused = await http.post(f"/v1/credit/retailers/{retailer_id}/pause", json={"reason": "late"}, headers=headers)
    took = time.monotonic() - started
    assert paused.status_code == 200, paused.text
    assert took < 5, f"the request waited {took:.1f} s"
    assert (await status_of(engine, retailer_id))[0] == "PAUSED"
    notice = dev_env.client.get_workflow_handle(paused.json()["notice_workflow_id"])
    deadline = time.monotonic() + 10
    while (await notice.query("status", result_type=MessageBatchResult)).deferred != 1:
        assert time.monotonic() < deadline, "the notice was never held"
        await asyncio.sleep(0.2)
    assert (await notice.describe()).status == WorkflowExecutionStatus.RUNNING  # holding until 08:00
    assert await sent_to(emulator, phone) == []
    await notice.terminate("test done")


async def test_a_pause_lifted_at_23_local_answers_at_once_and_holds_the_retailers_message(
    http: httpx.AsyncClient, engine: AsyncEngine, emulator: TwilioEmulator, dev_env: WorkflowEnvironment
) -> None:
    """The re-check answers once the pause is lifted (the `applied` update), not once
    `credit_resumed` went out: that message waits for 08:00 in the retailer's zone."""
    retailer_id, phone = await shop(engine, local_hour=23, status="PAUSED", paused_by="system", limit=Decimal("1000"))
    await new_debit(engine, retailer_id, "300.00", TODAY - timedelta(days=40))
    headers = await new_key(engine, "credit:write")
    reference = f"RMA-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    lifted = await http.post(
        f"/v1/credit/retailers/{retailer_id}/adjustments",
        json={"amount": "300.00", "reason": "returned 2 crates", "reference": reference},
        headers=headers,
    )
    took = time.monotonic() - started
    assert lifted.status_code == 200 and lifted.json()["credit_resumed"] is True, lifted.text
    assert took < 5, f"the request waited {took:.1f} s"
    assert await status_of(engine, retailer_id) == ("ACTIVE", None)
    check = dev_env.client.get_workflow_handle(f"credit-guardrails/{retailer_id}/adjust:{reference}")
    assert (await check.describe()).status == WorkflowExecutionStatus.RUNNING  # holding credit_resumed
    assert await sent_to(emulator, phone) == []
    await check.terminate("test done")
