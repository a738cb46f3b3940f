"""Screenshots of the real Temporal UI for docs/OPERATIONS.md (needs Debian's chromium).

    apt-get install -y chromium && .venv/bin/python docs/screenshots.py [NAME ...]

Starts `jobctl dev --demo` in a scratch home on free ports, runs the demo jobs, and writes
PNGs of the UI into docs/img/ (only the NAMEs given, e.g. `pay-page`, the Stripe sandbox's page
for the demo's paused retailer, `pay-page-inr` and `pay-page-eur` for its rupee and euro
retailers, and `api-docs`, the HTTP API's `/docs`). Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

BIN = Path(sys.executable).parent
OUT = Path(__file__).resolve().parent / "img"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=15000",
]
WANTED = set(sys.argv[1:])


FAMILY_VIEWS = {
    "churn-cases": 'WorkflowType = "ChurnCaseWorkflow" AND CaseStatus = "OPEN"',
    "payment-reminders": 'WorkflowType = "PaymentRemindersWorkflow"',
    "credit-guardrails": 'WorkflowType = "CreditGuardrailsWorkflow"',
    "pending-orders": 'WorkflowType = "PendingOrderWorkflow"',
    "loyalty-items": 'WorkflowType = "LoyaltyReconciliationWorkflow"',
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(output: Path, pattern: str, timeout: float = 120) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(pattern, output.read_text(errors="replace")):
            return match
        time.sleep(0.5)
    raise SystemExit(f"{pattern!r} never appeared; see {output}")


def screenshot(url: str, name: str, profile: Path, size: str = "1600,1000") -> None:
    target = OUT / f"{name}.png"
    if WANTED and name not in WANTED:
        return
    subprocess.run(
        [
            shutil.which("chromium") or "chromium",
            *CHROMIUM_FLAGS,
            f"--window-size={size}",
            f"--user-data-dir={profile}",
            f"--screenshot={target}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"wrote {target.relative_to(OUT.parent.parent)}")


def demo_payment_link(log: Path, env: dict[str, str], shop_line: str = r"Money loop:\s+retailer (\d+)") -> str:
    """The open Checkout link of the demo's paused retailer (or the one `shop_line` finds in the
    dev stack's output), as `jobctl credit profile` shows it."""
    shop = wait_for(log, shop_line).group(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = subprocess.run(
            [str(BIN / "jobctl"), "credit", "profile", shop, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if shown.returncode == 0 and (link := json.loads(shown.stdout).get("payment_link")):
            return link["url"]
        time.sleep(1)
    raise SystemExit(f"retailer {shop} never got a payment link; see {log}")


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="jobctl-shots-"))
    grpc, ui = free_port(), free_port()
    address = f"127.0.0.1:{grpc}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_", "TWILIO_", "STRIPE_"))}
    env |= {
        "JOBCTL_HOME": str(home),
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_UI_PORT": str(ui),
        "TWILIO_EMULATOR_PORT": "0",
        "WEBHOOKS_PORT": "0",
        "STRIPE_SANDBOX_PORT": "0",
    }
    log = home / "dev.log"
    stack = subprocess.Popen(
        [str(BIN / "jobctl"), "dev", "--demo"], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT
    )
    try:
        base = wait_for(log, r"Temporal UI:\s+(http://\S+)/workflows").group(1)
        subprocess.run(
            [str(BIN / "temporal"), "schedule", "trigger", "--schedule-id", "insights-nightly", "--address", address],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [str(BIN / "jobctl"), "insights", "run", "--date", "2026-11-23"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        time.sleep(10)  # the demo's jobs (triggered by `jobctl dev --demo`) get going
        profile = home / "chromium"
        OUT.mkdir(exist_ok=True)
        screenshot(f"{base}/workflows", "workflows", profile)
        by_job = quote('JobName="insights"')
        screenshot(f"{base}/workflows?query={by_job}", "search-by-jobname", profile)
        screenshot(f"{base}/workflows/{quote('insights/2026-11-23', safe='')}", "insights-run", profile)
        screenshot(f"{base.rsplit('/namespaces', 1)[0]}/namespaces/default/schedules", "schedules", profile)
        # Each job family's workflows, with their search attributes (the demo started them all).
        for name, query in FAMILY_VIEWS.items():
            screenshot(f"{base}/workflows?query={quote(query)}", name, profile)
        screenshot(demo_payment_link(log, env), "pay-page", profile, size="1000,800")
        for currency in ("INR", "EUR"):  # the demo's retailers in another locale and currency (issue #35)
            if not WANTED or f"pay-page-{currency.lower()}" in WANTED:
                link = demo_payment_link(log, env, rf"Locales:\s+retailer (\d+) \([a-zA-Z-]+, {currency}\)")
                screenshot(link, f"pay-page-{currency.lower()}", profile, size="1000,800")
        api = wait_for(log, r"HTTP API:\s+(http://\S+)").group(1)
        screenshot(f"{api}/docs", "api-docs", profile)
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
