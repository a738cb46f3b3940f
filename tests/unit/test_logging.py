"""Logs: one JSON event per line, bound with Temporal ids, phone numbers and secrets masked."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import pytest
    import structlog
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from workers.log import LoggingInterceptor, configure_logging, mask_phone


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    configure_logging("console", "WARNING")


@activity.defn
async def notify(recipient_id: str) -> str:
    structlog.get_logger("test").info("notify.sent", recipient_id=recipient_id, to="whatsapp:+15551234567")
    return "ok"


@workflow.defn
class NotifyWorkflow:
    @workflow.run
    async def run(self, recipient_id: str) -> str:
        workflow.logger.info("notify.start")
        return await workflow.execute_activity(notify, recipient_id, start_to_close_timeout=timedelta(seconds=10))


def test_phone_numbers_and_secrets_are_masked(log_lines) -> None:
    log = structlog.get_logger("test")
    log.info(
        "sms.failed",
        detail="could not reach +447700900123 today",
        auth_token="s3cr3t-value",
        database_url="postgresql+psycopg://jobctl:hunter2@db:5432/jobctl",
        idempotency_key="reminder:42:2026-11-23",
        due_date="2026-11-23",
    )
    (line,) = log_lines()
    assert line["event"] == "sms.failed"
    assert "+447700900123" not in json.dumps(line) and line["detail"].endswith("23 today")
    assert line["auth_token"] == "***"
    assert "hunter2" not in line["database_url"]
    assert line["idempotency_key"] == "reminder:42:2026-11-23"
    assert line["due_date"] == "2026-11-23"


def test_mask_phone_keeps_last_two_digits() -> None:
    assert mask_phone("whatsapp:+15551234567") == "whatsapp:+*********67"


async def test_activity_and_workflow_lines_carry_temporal_ids(
    log_lines, time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    workflow_id = f"notify/{uuid.uuid4()}"
    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=[NotifyWorkflow],
        activities=[notify],
        interceptors=[LoggingInterceptor()],
    ):
        await time_skipping_env.client.execute_workflow(
            NotifyWorkflow.run, "retailer-7", id=workflow_id, task_queue=task_queue
        )
    lines = log_lines()
    sent = next(line for line in lines if line["event"] == "notify.sent")
    assert sent["workflow_id"] == workflow_id
    assert sent["activity_type"] == "notify" and sent["attempt"] == 1 and sent["run_id"]
    assert "+15551234567" not in json.dumps(sent)
    started = next(line for line in lines if str(line["event"]).startswith("notify.start"))
    assert started["workflow_id"] == workflow_id
    assert all(isinstance(line, dict) for line in lines)
    logging.getLogger().handlers.clear()
