"""Workflow code calls nothing that reads the clock, randomness or the environment.

The sandbox refuses such calls at run time, but `ChurnCaseWorkflow`, `PendingOrderWorkflow` and
`MessageBatchWorkflow` run outside it (`sandboxed=False`: a new or evicted run no longer
re-imports its module; a batch's payloads skip the sandbox's per-payload detour), so this
check holds the line for them, and for every workflow module, from the source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# `workflow.now()`, `workflow.random()`, `workflow.uuid4()` and `asyncio.sleep` (a timer) are
# the deterministic forms of these.
FORBIDDEN = {
    "datetime.now", "datetime.utcnow", "datetime.today", "date.today",
    "time.time", "time.monotonic", "time.perf_counter", "time.sleep",
    "uuid.uuid1", "uuid.uuid4", "os.getenv", "os.environ.get", "open",
}
FORBIDDEN_MODULES = ("random.", "secrets.", "os.environ[")


def nondeterministic_calls(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in FORBIDDEN or name.startswith(FORBIDDEN_MODULES):
                found.append(f"line {node.lineno}: {name}()")
    return found


def test_no_workflow_module_reads_the_clock_randomness_or_the_environment() -> None:
    found = {
        str(path.relative_to(ROOT)): calls
        for path in sorted((ROOT / "workflows").rglob("*.py"))
        if (calls := nondeterministic_calls(path.read_text()))
    }
    assert found == {}


def test_the_unsandboxed_workflows_are_the_ones_this_check_names() -> None:
    """A new `sandboxed=False` is a decision: it is listed here, with the reason in its docstring."""
    unsandboxed = {
        f"{path.stem}.{node.name}"
        for path in (ROOT / "workflows").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        for decorator in node.decorator_list
        if "sandboxed=False" in ast.unparse(decorator)
    }
    assert unsandboxed == {"churn.ChurnCaseWorkflow", "messaging.MessageBatchWorkflow", "orders.PendingOrderWorkflow"}


@pytest.mark.parametrize(
    "call", ["datetime.now(UTC)", "time.time()", "random.randint(1, 6)", "uuid.uuid4()", "os.environ.get('X')"]
)
def test_each_forbidden_call_is_caught(call: str) -> None:
    assert nondeterministic_calls(f"def f():\n    return {call}\n")
