"""`jobctl webhooks` refuses to start when it could not verify what Twilio signs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_jobctl_webhooks_refuses_to_start_without_webhook_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBHOOK_BASE_URL", raising=False)
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql+psycopg://jobctl@127.0.0.1:1/jobctl",
        "STRIPE_WEBHOOK_SECRET": "whsec_test",
        "TWILIO_AUTH_TOKEN": "0" * 32,
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jobctl"), "webhooks", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "WEBHOOK_BASE_URL" in lines[0] and "0" * 32 not in lines[0]
