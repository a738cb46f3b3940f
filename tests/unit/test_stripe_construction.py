"""One place builds the Stripe client per process (docs/ARCHITECTURE.md, §6 "Stripe"), from the source.

`activities/payments/client.py` is the only code that makes a `stripe.StripeClient`; only the
gateway's `open_stripe_gateway` asks it for one; and each process opens that gateway once, at
startup: the worker, the webhook receiver and the HTTP API. The Stripe activities registered are
the ones a workflow calls.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import Counter
from pathlib import Path

from temporalio import activity

from activities.payments.activities import PaymentActivities

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("schemas", "config", "activities", "workflows", "services", "workers")


def _calls(name: str) -> Counter[str]:
    """Production files (relative paths) calling `name(...)` or `x.name(...)`, with how many times."""
    found: Counter[str] = Counter()
    for package in PRODUCTION:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Call):
                    callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                    if callee == name:
                        found[str(path.relative_to(ROOT))] += 1
    return found


def test_only_the_client_module_makes_a_stripe_client() -> None:
    assert _calls("StripeClient") == {"activities/payments/client.py": 1}


def test_only_the_gateway_factory_asks_for_one() -> None:
    assert _calls("stripe_client") == {"activities/payments/gateway.py": 1}
    assert _calls("StripeGateway") == {"activities/payments/gateway.py": 1}


def test_each_process_opens_one_gateway() -> None:
    assert _calls("open_stripe_gateway") == {
        "workers/worker.py": 1,
        "workers/webhook_server.py": 1,
        "workers/api/app.py": 1,
    }


def test_every_registered_stripe_activity_is_called_by_a_workflow() -> None:
    names = [
        activity._Definition.from_callable(method).name  # type: ignore[union-attr]  # noqa: SLF001 - the SDK's record of an activity
        for _, method in inspect.getmembers(PaymentActivities, inspect.isfunction)
        if activity._Definition.from_callable(method) is not None  # noqa: SLF001 - the SDK's record of an activity
    ]
    workflows = "\n".join(p.read_text() for p in (ROOT / "workflows").glob("*.py"))
    assert names
    assert [n for n in names if not re.search(rf"[\"']{n}[\"']", workflows)] == []
