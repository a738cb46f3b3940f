"""A worker is whole or refuses to start (issue #36 point 6).

Every activity the workflows route to a queue is registered by the registry for that queue, and a
worker whose settings lack what one of them needs refuses before it polls: one line per queue
naming the settings, exit 2, instead of a warning and a half worker that fails the tasks it takes.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from temporalio import activity

import workflows
from activities.database import create_engine
from activities.deps import ActivityDeps
from activities.payments.gateway import open_stripe_gateway
from config.settings import Settings
from workers import families

JOBCTL = str(Path(sys.executable).parent / "jobctl")
ACTIVITY_CALLS = {
    "execute_activity",
    "start_activity",
    "execute_activity_method",
    "start_activity_method",
    "execute_local_activity",
    "start_local_activity",
    "execute_local_activity_method",
    "start_local_activity_method",
}


def _activity_name(module: Any, expression: ast.expr) -> str | None:
    """The activity `expression` names (`Class.method`, a function, a string), else None."""
    if isinstance(expression, ast.Constant):
        return expression.value if isinstance(expression.value, str) else None
    target: Any = module
    for part in ast.unparse(expression).split("."):
        target = getattr(target, part, None)
    return _name_of(target) if callable(target) else None


def _name_of(function: Any) -> str | None:
    """The activity name the SDK registers `function` under (None: not an activity)."""
    definition = activity._Definition.from_callable(function)  # noqa: SLF001 - the SDK's record of an activity
    return definition.name if definition else None


def routed_activities() -> dict[str, set[str]]:
    """What the workflow code routes where, read from its source: an activity call naming a
    `task_queue` goes to the messaging queue (the workflows' inputs carry `messaging_task_queue`);
    every other activity the code names (called at once, or handed to a helper that calls it) to
    the workflow's own queue, `jobs`, where local activities run too."""
    routed: dict[str, set[str]] = {"jobs": set(), "messaging": set()}
    for info in pkgutil.iter_modules(workflows.__path__):
        module = importlib.import_module(f"workflows.{info.name}")
        tree = ast.parse(Path(module.__file__ or "").read_text())
        to_messaging: set[int] = set()
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ACTIVITY_CALLS
                and node.args
            ):
                name = _activity_name(module, node.args[0])
                if any(k.arg == "task_queue" for k in node.keywords):
                    to_messaging.add(id(node.args[0]))
                    if name:
                        routed["messaging"].add(name)
                elif name:
                    routed["jobs"].add(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute | ast.Name) and id(node) not in to_messaging:
                if (name := _activity_name(module, node)) is not None:
                    routed["jobs"].add(name)
    return routed


def whole_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "postgresql+psycopg://u@127.0.0.1:9/never",
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": SecretStr("token"),
        "twilio_api_base": "http://127.0.0.1:9",
        "stripe_secret_key": SecretStr("sk_test_unused"),
        "stripe_api_base": "http://127.0.0.1:9",
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


async def test_the_registry_registers_every_activity_the_workflows_route_to_each_queue() -> None:
    routed = routed_activities()
    assert {"extend_subscription", "payment_intent_status", "business_day"} <= routed["jobs"]
    assert {"send_message", "send_messages"} <= routed["messaging"]

    settings = whole_settings()
    engine = create_engine(settings.require_database_url())  # never connected: building opens nothing
    async with contextlib.AsyncExitStack() as resources:
        stripe = open_stripe_gateway(settings, engine)
        assert stripe is not None
        resources.push_async_callback(stripe.close)
        deps = ActivityDeps(None, settings, engine, stripe, resources)  # type: ignore[arg-type]
        registered = {
            "jobs": {_name_of(a) for a in families.job_activities(deps)},
            "messaging": {_name_of(a) for a in families.messaging_activities(deps)},
        }
    await engine.dispose()
    for queue in ("jobs", "messaging"):
        unregistered = sorted(routed[queue] - registered[queue])
        assert not unregistered, f"{queue}: routed there but not registered: {unregistered}"
    assert families.missing_settings(settings, ("jobs", "messaging")) == {}


def test_what_each_queue_lacks_is_named_per_queue() -> None:
    bare = Settings(_env_file=None)  # type: ignore[call-arg]
    assert families.missing_settings(bare, ("jobs", "messaging")) == {
        "jobs": ["STRIPE_SECRET_KEY not set (payments)"],
        "messaging": ["TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN not set (messaging)"],
    }
    # a messaging-only worker needs no Stripe key, a jobs-only one no Twilio
    assert set(families.missing_settings(bare, ("messaging",))) == {"messaging"}
    assert set(families.missing_settings(whole_settings(stripe_secret_key=None), ("messaging",))) == set()
    # required Content SIDs missing (real Twilio requires them) stop the messaging queue too
    strict = whole_settings(twilio_require_content_sids=True)
    (problem,) = families.missing_settings(strict, ("jobs", "messaging"))["messaging"]
    assert problem.startswith("TWILIO_CONTENT_SIDS_FILE: no WhatsApp Content SID for")


def test_jobctl_worker_without_stripe_and_twilio_refuses_in_one_line(tmp_path: Path) -> None:
    """The issue's case: a second `jobctl worker` with no Stripe key used to warn "payment
    activities not registered" and poll `jobs` anyway."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_", "TWILIO_", "STRIPE_"))}
    env = {**clean, "JOBCTL_HOME": str(tmp_path), "DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:9/never"}
    result = subprocess.run([JOBCTL, "worker"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "jobctl: the worker refuses to start: jobs queue: STRIPE_SECRET_KEY not set (payments); "
        "messaging queue: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN not set (messaging)"
    ], result.stderr
    assert "not registered" not in result.stdout + result.stderr

    messaging_only = subprocess.run(
        [JOBCTL, "worker", "--task-queue", "messaging"],
        capture_output=True,
        text=True,
        env={**env, "STRIPE_SECRET_KEY": "sk_test_unused"},
        timeout=60,
    )
    assert messaging_only.returncode == 2
    assert "STRIPE" not in messaging_only.stderr and "messaging queue: TWILIO_ACCOUNT_SID" in messaging_only.stderr
