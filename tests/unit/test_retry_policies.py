"""Every retry policy in a workflow ends: a maximum interval and a maximum number of attempts.

An item that fails the same way forever must land as `failed` with its reason, not retry
forever; Stripe's must end well inside its 24-hour idempotency window.
"""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

from workflows.churn import STRIPE_RETRY
from workflows.loyalty import BACKOFF

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def _policies() -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted(WORKFLOWS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RetryPolicy":
                found.append((f"{path.name}:{node.lineno}", node))
    return found


def test_every_retry_policy_has_a_maximum_interval_and_attempts() -> None:
    policies = _policies()
    assert len(policies) >= 8
    for where, call in policies:
        keywords = {k.arg for k in call.keywords}
        assert {"maximum_interval", "maximum_attempts"} <= keywords, f"{where} can retry forever"


def _longest_run(policy) -> timedelta:
    total, interval = timedelta(0), policy.initial_interval
    for _ in range(policy.maximum_attempts - 1):
        total += interval
        interval = min(interval * policy.backoff_coefficient, policy.maximum_interval)
    return total


def test_stripe_retries_end_well_inside_the_idempotency_window() -> None:
    for policy in (STRIPE_RETRY, BACKOFF):
        assert _longest_run(policy) < timedelta(hours=12)
