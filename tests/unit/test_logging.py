"""Logs: one JSON event per line, bound with Temporal ids, phone numbers and secrets masked."""

from __future__ import annotations

import io
import json
import logging
import random
import re
import subprocess
import sys
import uuid
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import pytest
    import structlog
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from workers.log import LoggingInterceptor, configure_logging, mask_emails, mask_phone, mask_text


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


@pytest.fixture
def console_lines():
    stream = io.StringIO()
    configure_logging("console", "INFO", stream=stream)
    yield stream.getvalue
    configure_logging("console", "WARNING")


SECRETS_AND_PII = (
    "+1 555 123 4567",
    "555-123-4567",
    "15551234567",
    "ada.lovelace@example.com",
    "sk_live_51HabcdefGHIJKLmnop",
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "whsec_abcdef0123456789XYZ",
    "rk_live_51Habcdefghijklmno",
    "0123456789abcdef0123456789abcdef",  # a Twilio auth token's shape
)


def _fail_with_pii() -> None:
    try:
        raise RuntimeError(
            "could not text +1 555 123 4567 (alt 555-123-4567, 15551234567) for ada.lovelace@example.com"
        )
    except RuntimeError as exc:
        # the shape of SQLAlchemy's error text: the statement and a parameter dump
        raise ValueError(
            "(psycopg.errors.UniqueViolation) duplicate key [SQL: INSERT INTO retailers (phone) VALUES (%(phone)s)]"
            " [parameters: {'phone': '+1 555 123 4567', 'key': 'sk_live_51HabcdefGHIJKLmnop',"
            " 'hook': 'whsec_abcdef0123456789XYZ', 'restricted': 'rk_live_51Habcdefghijklmno',"
            " 'test': 'sk_test_4eC39HqLyjWDarjtT1zdp7dc', 'twilio': '0123456789abcdef0123456789abcdef'}]"
        ) from exc


def _log_failure_both_ways() -> None:
    try:
        _fail_with_pii()
    except ValueError:
        structlog.get_logger("test").exception("sms.crashed", note="reach 555.123.4567 or +44 7700-900-123")
        logging.getLogger("sqlalchemy.engine").exception("stdlib record for +1 555 123 4567")


def test_an_exception_holding_pii_and_secrets_is_masked_in_json_logs(log_lines) -> None:
    _log_failure_both_ways()
    lines = log_lines()
    assert len(lines) == 2 and all("Traceback" in line["exception"] for line in lines)
    text = json.dumps(lines)
    for leaked in (*SECRETS_AND_PII, "555.123.4567", "7700-900-123"):
        assert leaked not in text, leaked
    assert "RuntimeError" in text and "UniqueViolation" in text  # the error itself still reads


def test_an_exception_holding_pii_and_secrets_is_masked_in_console_logs(console_lines) -> None:
    _log_failure_both_ways()
    text = console_lines()
    assert "Traceback" in text and "sms.crashed" in text
    for leaked in (*SECRETS_AND_PII, "555.123.4567", "7700-900-123"):
        assert leaked not in text, leaked


def test_ids_dates_and_amounts_are_not_mistaken_for_pii(log_lines) -> None:
    kept = {
        "workflow_id": "churn-case/1234567890",
        "run_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "schedule_workflow": "insights/nightly-2026-11-23T03:00:00Z",
        "idempotency_key": "reminder:42:2026-11-23",
        "provider_sid": "SM0123456789abcdef0123456789abcdef",
        "event_id": "evt_1NqAbCdEfGhIjKlMnOpQrStU",
        "window": "2026-11-23 10:00 to 2026-11-24 10:00",
        "amount": "125000.50",
        "actor_id_hash": "a" * 64,
    }
    structlog.get_logger("test").info("case.step", **kept)
    (line,) = log_lines()
    for key, value in kept.items():
        assert line[key] == value, key


# The pattern e-mail masking used before issue #33: the reference for what `mask_emails` masks.
QUADRATIC_EMAIL = re.compile(r"[\w.+\-]+@([\w\-]+(?:\.[\w\-]+)+)")


def test_email_masking_masks_what_the_old_pattern_did() -> None:
    """Seeded random texts over the characters that matter (name, domain, separators, "@"): the
    linear scan and the old regex agree on every one, addresses back to back and nested included."""
    assert mask_text("write to ada.l+x@mail.example.com now") == "write to ***@mail.example.com now"
    rng = random.Random(33)
    alphabet = "ab1_.+-@ /é"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert mask_emails(text) == QUADRATIC_EMAIL.sub(r"***@\1", text), text


def test_masking_a_megabyte_of_text_is_linear() -> None:
    """A megabyte with no "@", or with hundreds of thousands, masks well inside a 60 s hard limit
    (quadratic, the first took hours). A subprocess, because a regex holds the GIL and no thread
    could time it out; the limit only catches a catastrophic slowdown, it times nothing."""
    script = (
        "from workers.log import mask_text\n"
        "for text in ('a' * 2**20, 'ab.c-' * 2**18, 'a@' * 2**19, 'x.y@' * 2**18, 'a' * 2**20 + '@b', '1' * 2**20):\n"
        "    mask_text(text)\n"
        "print(mask_text('ada@example.com ' * 2**16)[:16])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "***@example.com"
