"""Schedules as code: apply is idempotent and never overrules an operator's pause."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from config.settings import load_settings
from tests.conftest import UNUSED_STRIPE
from workers import families, schedules

JOBCTL = str(Path(sys.executable).parent / "jobctl")


async def _schedule_ids(client) -> list[str]:
    return sorted([s.id async for s in await client.list_schedules()])


def jobctl(env: WorkflowEnvironment, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_"))}
    address = env.client.service_client.config.target_host
    return subprocess.run(
        [JOBCTL, *args], capture_output=True, text=True, timeout=60, env={**clean, "TEMPORAL_ADDRESS": address, **extra}
    )


async def test_apply_twice_creates_each_schedule_once_and_keeps_an_operator_pause(dev_env: WorkflowEnvironment) -> None:
    settings = load_settings(business_timezone="Europe/Berlin")
    first = await schedules.apply(dev_env.client, settings, families.all_schedules())
    handle = dev_env.client.get_schedule_handle("insights-nightly")
    await handle.pause(note="paused in the UI during a DB migration")  # what the UI's Pause button does

    second = await schedules.apply(
        dev_env.client, settings.model_copy(update={"business_timezone": "Africa/Lagos"}), families.all_schedules()
    )

    expected = sorted(d.schedule_id for d in families.all_schedules())
    assert expected == sorted(
        [
            "insights-nightly",
            "insights-weekly",
            "order-expiry-sweep",
            "payment-reminders",
            "credit-guardrails",
            "loyalty-reconcile-sweep",
            "loyalty-integrity-audit",
            "data-retention",
            "event-delivery-sweep",
        ]
    ), "the schedules of docs/ARCHITECTURE.md §4"
    assert sorted(sid for sid, _ in first) == expected
    daily = {d.schedule_id for d in families.all_schedules() if d.daily_at}
    assert dict(second) == {sid: "updated" if sid in daily else "unchanged" for sid in expected}, (
        "the time zone moves the daily schedules only; the others are not written"
    )
    assert await _schedule_ids(dev_env.client) == expected
    described = await handle.describe()
    assert described.schedule.state.paused
    assert described.schedule.state.note == "paused in the UI during a DB migration"
    assert described.schedule.spec.time_zone_name == "Africa/Lagos", "the change was not applied in place"


async def test_pause_unpause_and_trigger_from_the_cli(dev_env: WorkflowEnvironment) -> None:
    await schedules.apply(dev_env.client, load_settings(), families.all_schedules())
    handle = dev_env.client.get_schedule_handle("insights-nightly")

    paused = jobctl(dev_env, "schedules", "pause", "insights-nightly", "--note", "month-end freeze")
    assert paused.returncode == 0, paused.stderr
    assert (await handle.describe()).schedule.state.note == "month-end freeze"
    listed = jobctl(dev_env, "schedules", "list")
    assert "insights-nightly" in listed.stdout and "paused" in listed.stdout

    unpaused = jobctl(dev_env, "schedules", "unpause", "insights-nightly")
    assert unpaused.returncode == 0 and not (await handle.describe()).schedule.state.paused

    backwards = jobctl(
        dev_env, "schedules", "backfill", "insights-nightly", "--from", "2026-11-02", "--to", "2026-11-01"
    )
    assert backwards.returncode == 2 and "--to must be after --from" in backwards.stderr


def test_worker_check_is_a_readiness_probe(dev_env: WorkflowEnvironment, database_url: str) -> None:
    ready = jobctl(dev_env, "worker", "--check", "--task-queue", "jobs", DATABASE_URL=database_url, **UNUSED_STRIPE)
    assert ready.returncode == 0, ready.stderr
    half = jobctl(dev_env, "worker", "--check", "--task-queue", "jobs", DATABASE_URL=database_url)
    assert half.returncode == 1 and "not ready: jobs queue: STRIPE_SECRET_KEY not set (payments)" in half.stderr
    down = jobctl(dev_env, "worker", "--check", DATABASE_URL=database_url, TEMPORAL_ADDRESS="127.0.0.1:1")
    assert down.returncode == 1 and "not ready: Temporal" in down.stderr
