"""Operators on a churn case, on the dev server (the one the UI shows): the `temporal` CLI's
signal, `jobctl churn`, malformed payloads, tenant scoping, and a case that outgrows its history."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator

import pytest_asyncio
import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from activities.messaging.twilio_gateway import TwilioGateway
from devtools import binaries
from devtools.twilio_emulator import TwilioEmulator
from schemas.churn import CaseStatus
from tests.activities.test_churn import actions, churn_workers, new_member, open_case, sent_to
from tests.e2e.test_schedules import jobctl
from tests.workflows.harness import start_short_history_env
from workflows.churn import ChurnCaseWorkflow


def temporal(env: WorkflowEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    address = env.client.service_client.config.target_host
    return subprocess.run(
        [binaries.temporal_cli(), *args, "--address", address], capture_output=True, text=True, timeout=60
    )


async def eventually(check, timeout_s: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.2)


async def test_a_manual_nudge_from_the_temporal_cli_and_from_jobctl_reaches_the_member(
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    database_url: str,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    company, member, phone = await new_member(engine, offsets=[30], cap=5)
    async with churn_workers(dev_env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(dev_env, engine, member, task_queue)
        signalled = await asyncio.to_thread(
            temporal,
            dev_env,
            "workflow",
            "signal",
            "--workflow-id",
            f"churn-case/{case_id}",
            "--name",
            "manual_nudge",
            "--input",
            json.dumps({"actor_id": "ops-anna", "channel": "sms", "note": "called twice", "company_id": company}),
        )
        assert signalled.returncode == 0, signalled.stderr
        malformed = await asyncio.to_thread(
            temporal,
            dev_env,
            "workflow",
            "signal",
            "--workflow-id",
            f"churn-case/{case_id}",
            "--name",
            "manual_nudge",
            "--input",
            json.dumps({"channel": "carrier-pigeon"}),
        )
        assert malformed.returncode == 0, malformed.stderr
        await eventually(lambda: _sent(emulator, phone, 1))

        env = {"TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, "DATABASE_URL": database_url}
        other = await asyncio.to_thread(
            jobctl, dev_env, "churn", "nudge", str(case_id), "--actor", "ops-ben", "--company", "someone-else", **env
        )
        assert other.returncode == 2 and "does not belong to company someone-else" in other.stderr
        ours = await asyncio.to_thread(
            jobctl, dev_env, "churn", "nudge", str(case_id), "--actor", "ops-ben", "--company", company, **env
        )
        assert ours.returncode == 0, ours.stderr
        await eventually(lambda: _sent(emulator, phone, 2))
        for args in (
            ("show", str(case_id)),
            ("nudge", str(case_id), "--actor", "ops-ben"),
            ("cancelled", str(case_id), "--actor", "x"),
        ):
            unnamed = await asyncio.to_thread(jobctl, dev_env, "churn", *args, **env)
            assert unnamed.returncode == 2 and "--company" in unnamed.stderr, unnamed.stderr
        peek = await asyncio.to_thread(
            jobctl, dev_env, "churn", "show", str(case_id), "--company", "someone-else", **env
        )
        assert peek.returncode == 2 and "does not belong to company someone-else" in peek.stderr
        shown = await asyncio.to_thread(
            jobctl, dev_env, "churn", "show", str(case_id), "--company", company, "--json", **env
        )
        assert shown.returncode == 0, shown.stderr
        status = CaseStatus.model_validate_json(shown.stdout)
        assert (status.status, status.attempts, status.manual_nudges) == ("OPEN", 2, 2)
        await handle.signal(ChurnCaseWorkflow.cancelled, {"company_id": company})
        await handle.result()

    rows = await actions(engine, case_id)
    manual = [r for r in rows if r.type == "nudge_sms"]
    assert len(manual) == 2 and all(r.actor_type == "user" and r.meta["manual"] for r in manual)
    assert len({r.actor_id_hash for r in manual}) == 2  # two operators, told apart by their hashes
    history = await handle.fetch_history()
    assert not any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events)


async def _sent(emulator: TwilioEmulator, phone: str, count: int) -> bool:
    return len(await sent_to(emulator, phone)) >= count


SUGGEST_CONTINUE_AS_NEW_AT = 200
"""Events after which this module's server suggests continuing as new (Temporal's default is
4,096: 500 nudges, four minutes of a slow CI machine, to prove the same thing)."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def short_history_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continue-as-new early, so a case outgrows its history in seconds."""
    env = await start_short_history_env(SUGGEST_CONTINUE_AS_NEW_AT)
    yield env
    await env.shutdown()


async def test_a_hundred_manual_nudges_continue_as_new_and_the_case_still_answers(
    short_history_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    NUDGES = 100  # ~8 history events each: continue-as-new is suggested after 25
    company, member, phone = await new_member(engine, offsets=[30], cap=1)  # one a day: the rest are held back, quickly
    async with churn_workers(short_history_env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(short_history_env, engine, member, task_queue)
        first_run = (await handle.describe()).run_id
        for n in range(NUDGES):
            await handle.signal(ChurnCaseWorkflow.manual_nudge, {"actor_id": f"ops-{n % 7}", "company_id": company})

        async def all_recorded() -> bool:
            async with engine.connect() as conn:
                return (
                    await conn.scalar(text("SELECT count(*) FROM recovery_actions WHERE case_id = :c"), {"c": case_id})
                    >= NUDGES
                )

        await eventually(all_recorded, timeout_s=120)
        await eventually(lambda: _continued(handle, first_run), timeout_s=60)
        status = await handle.query(ChurnCaseWorkflow.status)
        await handle.signal(ChurnCaseWorkflow.recovered, {"company_id": company})
        final = await handle.result()

    assert (status.status, status.attempts, status.manual_nudges) == ("OPEN", 1, NUDGES)
    assert (final.status, final.manual_nudges) == ("RECOVERED", NUDGES)
    rows = await actions(engine, case_id)
    assert [r.type for r in rows].count("nudge_sms") == 1 and len(await sent_to(emulator, phone)) == 1
    assert sum(1 for r in rows if r.meta.get("held_back") == "daily_cap") == NUDGES - 1


async def _continued(handle, first_run: str) -> bool:  # type: ignore[no-untyped-def]
    return (await handle.describe()).run_id != first_run
