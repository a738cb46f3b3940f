"""The Prometheus alert rules (deploy/prometheus/) are valid, each is unit-tested with promtool,
and each has its runbook section in docs/OPERATIONS.md (issue #36)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "jobctl-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "jobctl-rules.test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, (
        "promtool is missing: install Debian's `prometheus` package"
        " (apt-get install -y --no-install-recommends prometheus); .ci/run does"
    )
    return found


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_the_rules_are_valid_and_pass_their_unit_tests() -> None:
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    command = [promtool(), "test", "rules", RULE_TESTS.name]
    tested = subprocess.run(command, cwd=RULE_TESTS.parent, capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_has_a_runbook() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text()
    titles = re.findall(r"^#+ (.+)$", operations, re.M)
    headings = {re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-") for title in titles}
    for alert in alerts():
        name = alert["alert"]
        assert name in fired, f"{name}: no promtool test expects it to fire"
        assert alert["labels"]["severity"] in {"page", "ticket", "info"}, name
        runbook = alert["annotations"]["runbook_url"]
        assert runbook.startswith("docs/OPERATIONS.md#"), name
        assert runbook.split("#", 1)[1] in headings, f"{name}: no section #{runbook.split('#', 1)[1]} in OPERATIONS.md"
