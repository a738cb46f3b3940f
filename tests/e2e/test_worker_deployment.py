"""Deploying workers: the image runs `jobctl worker` as non-root, and SIGTERM drains in-flight work."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from devtools.seed import seed_retailers
from schemas.insights import InsightsRequest
from tests.conftest import UNUSED_STRIPE
from workflows.insights import InsightsRegenerationWorkflow

ROOT = Path(__file__).resolve().parents[2]
JOBCTL = str(Path(sys.executable).parent / "jobctl")


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")  # join continuation lines
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(maxsplit=1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def test_dockerfile_runs_the_worker_as_a_non_root_user_on_a_slim_base() -> None:
    instructions = _instructions()
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    assert dict(final_stage)["FROM"].endswith("-slim")
    assert dict(final_stage)["ENTRYPOINT"] == '["jobctl"]' and dict(final_stage)["CMD"] == '["worker"]'
    user = dict(final_stage)["USER"]
    assert user not in ("root", "0")
    assert dict(final_stage)["STOPSIGNAL"] == "SIGTERM"
    copied = " ".join(arg for op, arg in instructions if op == "COPY")
    for package in ("workflows", "activities", "workers", "schemas", "migrations"):
        assert package in copied


async def test_sigterm_lets_the_in_flight_activity_finish_before_the_worker_exits(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, database_url: str, task_queue: str, tmp_path: Path
) -> None:
    await seed_retailers(engine, 300, today=date(2026, 11, 23))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TASK_QUEUE": task_queue,
        **UNUSED_STRIPE,
    }
    with open(tmp_path / "worker.log", "ab") as log:
        worker = subprocess.Popen([JOBCTL, "worker", "--task-queue", "jobs"], env=env, stdout=log, stderr=log)
        handle = await dev_env.client.start_workflow(
            InsightsRegenerationWorkflow.run,
            # ~3 s of work in one activity: 6 pages, 500 ms apart.
            InsightsRequest(insight_date=date(2026, 11, 23), page_size=50, throttle_ms=500),
            id=f"insights/drain-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        deadline = time.monotonic() + 30
        while not (await handle.describe()).raw_description.pending_activities[:1] or not any(
            p.state == 2
            for p in (await handle.describe()).raw_description.pending_activities  # STARTED
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(worker.wait, 60)
        replacement = subprocess.Popen([JOBCTL, "worker", "--task-queue", "jobs"], env=env, stdout=log, stderr=log)
        try:
            result = await asyncio.wait_for(handle.result(), timeout=60)
        finally:
            replacement.terminate()
            replacement.wait(30)

    assert exit_code == 0
    assert result.retailers_done == 300
    history = await handle.fetch_history()
    completed = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
    failed = [
        e
        for e in history.events
        if e.event_type in (EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED, EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT)
    ]
    started = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    assert completed and not failed
    assert all(e.activity_task_started_event_attributes.attempt == 1 for e in started), "the activity was retried"


async def test_versioned_worker_runs_workflows_once_its_build_is_current(
    dev_env: WorkflowEnvironment, database_url: str, task_queue: str, tmp_path: Path
) -> None:
    from temporalio.api.workflowservice.v1 import SetWorkerDeploymentCurrentVersionRequest

    deployment = f"jobctl-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TASK_QUEUE": task_queue,
        "WORKER_DEPLOYMENT_NAME": deployment,
        "WORKER_BUILD_ID": "build-1",
        **UNUSED_STRIPE,
    }
    with open(tmp_path / "worker.log", "ab") as log:
        worker = subprocess.Popen([JOBCTL, "worker", "--task-queue", "jobs"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:  # the version exists once the worker has polled
                try:
                    await dev_env.client.workflow_service.set_worker_deployment_current_version(
                        SetWorkerDeploymentCurrentVersionRequest(
                            namespace=dev_env.client.namespace, deployment_name=deployment, build_id="build-1"
                        )
                    )
                    break
                except Exception:  # noqa: BLE001 - not registered yet
                    assert time.monotonic() < deadline, "the versioned worker never registered"
                    await asyncio.sleep(0.3)
            handle = await dev_env.client.start_workflow(
                InsightsRegenerationWorkflow.run,
                InsightsRequest(insight_date=date(2026, 11, 23)),
                id=f"insights/versioned-{uuid.uuid4()}",
                task_queue=task_queue,
            )
            await asyncio.wait_for(handle.result(), timeout=30)
            described = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
        finally:
            worker.terminate()
            worker.wait(30)
    assert described.deployment_version.build_id == "build-1"
    assert described.deployment_version.deployment_name == deployment
