"""Bad input at the command line: one clear line and exit status 2, nothing touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

JOBCTL = str(Path(sys.executable).parent / "jobctl")


def jobctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_"))}
    return subprocess.run([JOBCTL, *args], capture_output=True, text=True, env={**clean, **env}, timeout=60)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/shop"),
        ("DATABASE_URL", "postgresql+psycopg://u@host:notaport/db"),
        ("TEMPORAL_ADDRESS", "localhost"),
        ("TEMPORAL_ADDRESS", "127.0.0.1:99999"),
        ("BUSINESS_TIMEZONE", "Mars/Olympus"),
    ],
)
def test_malformed_setting_is_one_line_naming_it(setting: str, value: str) -> None:
    result = jobctl("worker", **{setting: value})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0]
    assert value not in lines[0] or setting != "DATABASE_URL", "a URL may carry a password: never echo it"


def test_missing_database_url_is_named_for_the_worker() -> None:
    result = jobctl("worker")
    assert result.returncode == 2
    assert result.stderr.strip() == "jobctl: invalid setting DATABASE_URL: not set"


def test_negative_retailer_count_is_refused_clearly() -> None:
    result = jobctl("seed", "--retailers", "-5", DATABASE_URL="postgresql+psycopg://u@127.0.0.1:1/never")
    assert result.returncode == 2
    assert "Invalid value for '--retailers'" in result.stderr and "greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_task_queue_is_refused() -> None:
    result = jobctl("worker", "--task-queue", "emails", DATABASE_URL="postgresql+psycopg://u@127.0.0.1:1/db")
    assert result.returncode == 2
    assert "emails" in result.stderr


def test_unknown_schedule_is_refused_before_connecting() -> None:
    result = jobctl("schedules", "trigger", "coffee-break", TEMPORAL_ADDRESS="127.0.0.1:1")
    assert result.returncode == 2
    assert "coffee-break" in result.stderr and "insights-nightly" in result.stderr
