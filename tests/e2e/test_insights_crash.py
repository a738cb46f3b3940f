"""A worker SIGKILLed mid-regeneration: the retry resumes from the heartbeated cursor.

Runs on the dev server (the time-skipping server does not promise to keep heartbeat
details across a failed attempt) with the worker as a real `jobctl worker` process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from devtools.seed import seed_retailers
from schemas.insights import InsightsRequest
from tests.conftest import UNUSED_STRIPE
from workflows.insights import InsightsRegenerationWorkflow

DAY = date(2026, 11, 23)
JOBCTL = str(Path(sys.executable).parent / "jobctl")


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, task_queue: str | None = "jobs") -> None:
        """`task_queue` None: both queues (jobs and messaging), as `jobctl worker` runs by default."""
        self._log = open(log_path, "ab")
        queue = ["--task-queue", task_queue] if task_queue else []
        self.process = subprocess.Popen([JOBCTL, "worker", *queue], env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


@pytest.fixture
def worker_env(dev_env: WorkflowEnvironment, database_url: str, task_queue: str) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TASK_QUEUE": task_queue,
        "LOG_FORMAT": "json",
        **UNUSED_STRIPE,
    }


async def _heartbeated_cursor(handle: WorkflowHandle, min_pages: int, timeout: float = 60) -> dict:
    """Wait until the server holds a heartbeat of at least `min_pages` pages; return its details."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.heartbeat_details.payloads:
                (details,) = await handle._client.data_converter.decode(pending.heartbeat_details.payloads)  # noqa: SLF001 - the handle's converter
                if details["pages_done"] >= min_pages:
                    return details
        await asyncio.sleep(0.05)
    raise AssertionError("no heartbeat with enough pages arrived")


async def test_sigkill_mid_run_resumes_from_heartbeat_without_redoing_pages(
    engine: AsyncEngine,
    dev_env: WorkflowEnvironment,
    worker_env: dict[str, str],
    task_queue: str,
    tmp_path: Path,
) -> None:
    await seed_retailers(engine, 2000, today=DAY)
    first = WorkerProcess(worker_env, tmp_path / "worker-1.log")
    second: WorkerProcess | None = None
    try:
        handle = await dev_env.client.start_workflow(
            InsightsRegenerationWorkflow.run,
            InsightsRequest(insight_date=DAY, page_size=50, throttle_ms=100, heartbeat_timeout_seconds=2),
            id=f"insights/crash-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        cursor = await _heartbeated_cursor(handle, min_pages=5)
        first.kill()
        async with engine.connect() as conn:
            done_at_kill = await conn.scalar(
                text("SELECT count(*) FROM retailer_insights WHERE insight_date = :d"), {"d": DAY}
            )
        assert done_at_kill < 2000, "the kill must land in the middle of the run"

        second = WorkerProcess(worker_env, tmp_path / "worker-2.log")
        result = await asyncio.wait_for(handle.result(), timeout=120)
    finally:
        first.stop()
        if second:
            second.stop()

    assert result.retailers_done == 2000
    async with engine.connect() as conn:
        rows, distinct, redone_before_cursor, redone = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT retailer_id),"
                    " count(*) FILTER (WHERE generation > 1 AND retailer_id <= :cursor),"
                    " count(*) FILTER (WHERE generation > 1)"
                    " FROM retailer_insights WHERE insight_date = :d"
                ),
                {"d": DAY, "cursor": cursor["after_retailer_id"]},
            )
        ).one()
    assert rows == distinct == 2000
    assert redone_before_cursor == 0, "a page at or before the heartbeated cursor was done twice"
    assert redone < done_at_kill, "the retry started over instead of resuming"
