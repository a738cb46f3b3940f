"""Workflow code calls nothing that reads the clock, randomness or the environment.

The sandbox refuses such calls at run time, but `ChurnCaseWorkflow`, `PendingOrderWorkflow` and
`MessageBatchWorkflow` run outside it (`sandboxed=False`: a new or evicted run no longer
re-imports its module; a batch's payloads skip the sandbox's per-payload detour), so this
check holds the line for them, and for every workflow module, from the source. It also keeps
each workflow to as few paths as its open runs need: every `patched` and `deprecate_patch` id is
listed, the deprecated ones with their date.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# `workflow.now()`, `workflow.random()`, `workflow.uuid4()` and `asyncio.sleep` (a timer) are
# the deterministic forms of these.
FORBIDDEN = {
    "datetime.now",
    "datetime.utcnow",
    "datetime.today",
    "date.today",
    "time.time",
    "time.monotonic",
    "time.perf_counter",
    "time.sleep",
    "uuid.uuid1",
    "uuid.uuid4",
    "os.getenv",
    "os.environ.get",
    "open",
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


def patch_calls(source: str) -> tuple[set[str], set[str]]:
    """The ids passed to `workflow.patched` and to `workflow.deprecate_patch` (a literal, or a
    module constant of the same module)."""
    tree = ast.parse(source)
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    calls: dict[str, set[str]] = {"workflow.patched": set(), "workflow.deprecate_patch": set()}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (name := ast.unparse(node.func)) in calls:
            arg = node.args[0]
            calls[name].add(constants[arg.id] if isinstance(arg, ast.Name) else ast.literal_eval(arg))
    return calls["workflow.patched"], calls["workflow.deprecate_patch"]


def test_every_patch_is_listed_and_each_deprecated_one_says_when_it_goes() -> None:
    """Old branches are retired (issue #31): a short-lived workflow has one path. A `patched`
    branch kept for long-lived runs, and a `deprecate_patch` left for them, is listed in
    docs/ARCHITECTURE.md, §4 "Patches" (the deprecated ones with their removal date)."""
    architecture = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = architecture[architecture.index("### Patches") : architecture.index("## 5.")]
    patched: set[str] = set()
    deprecated: set[str] = set()
    for path in sorted((ROOT / "workflows").rglob("*.py")):
        branches, ids = patch_calls(path.read_text())
        patched |= branches
        deprecated |= ids
    assert patched == {"churn-signals-before-run", "churn-nudge-now-answers-held", "churn-load-case-as-local-activity"}
    assert deprecated == {
        "precise-order-clock",
        "churn-decide-nudge-as-local-activity",
        "churn-reread-subscription-before-cancel",
        "churn-signals-name-the-company",
        "messages-deferred-delivery",
    }
    assert [p for p in sorted(patched | deprecated) if f"`{p}`" not in section] == []


def test_a_patch_call_is_found() -> None:
    source = 'P = "p-1"\ndef f():\n    workflow.deprecate_patch(P)\n    return workflow.patched("p-2")\n'
    assert patch_calls(source) == ({"p-2"}, {"p-1"})
