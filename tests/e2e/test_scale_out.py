"""The scale-out drill, small (issue #36 point 7; benchmarks/scale_out.py is the large one): two
`jobctl worker` processes (each polling both queues: two workers per queue) and two `jobctl api`
processes on the dev server, a reminders day plus checkouts through the API; one worker process and
one API process killed -9 mid-load and one of each added back. Nothing is lost or doubled: one
message per retailer at the emulator, each due debit marked reminded once, one DEBIT per checkout
and its credit taken once, every clock expired exactly once.

Its length is mostly the killed worker's send batch waiting out its 15 s heartbeat timeout (its outbox
lease, MESSAGE_LEASE_SECONDS=10, has ended by then)."""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from benchmarks.scale_out import CrashHook, DrillSize, run_drill
from tests.e2e.emulator_process import twilio_emulator_process
from workers.api.auth import create_key

SIZE = DrillSize(
    retailers=300,
    checkouts=20,
    checkout_rate=2.0,  # over 10 s: the kills land among them
    workers=2,
    apis=2,
    limit=50.0,  # the day lasts about 6 s at the emulator
    ttl_s=6.0,  # each clock expires during the run, its follow-up at 3 s
    before_s=0.0,
    kill_after_messages=60,  # well into the day (320 messages), the checkouts still coming
    recovery_s=0.0,  # throughput is the benchmark's; this asserts counts only
    window_s=1.0,
    abandoned_s=2.0,  # a claim the killed API left is taken over by the retry within seconds
    page_size=100,
    deadline_s=120.0,
    shared_workers=True,  # two `jobctl worker` processes, each on both queues: two pods fewer to start
    lease_s=10.0,  # the shortest outbox lease: the killed sends are free when their heartbeat timeout ends
)


async def test_killing_and_adding_pods_mid_load_loses_and_doubles_nothing(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> None:
    key, _ = await create_key(engine, "drill", ["orders:write", "orders:read"])
    # The API process killed is the one answering a checkout-started, after it started the clock
    # and before its answer was stored or sent (tests/e2e/crash_api.py): mid-request by construction.
    hook = CrashHook((sys.executable, "-m", "tests.e2e.crash_api", str(tmp_path / "crash-api")), tmp_path / "crash-api")
    async with twilio_emulator_process(tmp_path, "--rate-limit", str(SIZE.limit)) as twilio_url:
        result = await run_drill(
            dev_env.client,
            engine,
            database_url,
            twilio_url,
            SIZE,
            tmp_path,
            {"Authorization": f"Bearer {key}"},
            crash_hook=hook,
        )

    c = result.counts
    assert len(result.kills) == 2 and all("exit -9" in k for k in result.kills), result.kills
    assert 0 < result.accepted_at_kill < c.reminded, "the kills must land in the middle of the day"
    assert result.killed_mid_send, "the killed worker must have been running a batch of sends"
    assert (c.lost, c.doubled) == (0, 0), c
    assert c.messages == c.reminded == SIZE.retailers + SIZE.checkouts
    assert result.day_sent + result.day_duplicates == SIZE.retailers and c.marks_wrong == 0
    assert (c.checkouts_answered, c.checkouts_lost, c.money_doubled) == (SIZE.checkouts, 0, 0), c
    assert c.retries >= 1, "the killed checkout-started was never retried"
    assert (c.clocks_expired_once, c.clocks_not_once) == (SIZE.checkouts, 0), c
