"""The layers' import rules, computed from the source (docs/ARCHITECTURE.md, "Import rules").

Every `import` and `from ... import` counts: at module level, inside functions and inside
`if TYPE_CHECKING:` blocks. Only a workflow module's `with workflow.unsafe.imports_passed_through():`
block may name activities, and then only their classes and functions (the activity references).
"""

from __future__ import annotations

import ast
import concurrent.futures
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("schemas", "config", "activities", "workflows", "services", "workers", "devtools")
PRODUCTION = ("schemas", "config", "activities", "workflows", "services", "workers")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (for `from X import Y`: X, and X.Y when that is a module)
    names: tuple[str, ...]
    line: int
    top_level: bool  # executed when the module is imported (not inside a function)
    passthrough: bool  # inside `with workflow.unsafe.imports_passed_through():`

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target} {list(self.names) or ''}".rstrip()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_passthrough(node: ast.With) -> bool:
    return any(
        isinstance(item.context_expr, ast.Call)
        and ast.unparse(item.context_expr.func).endswith("imports_passed_through")
        for item in node.items
    )


def imports_of(path: Path, text: str | None = None) -> list[Import]:
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, *, top_level: bool, passthrough: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(module, alias.name, (), child.lineno, top_level, passthrough))
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, is_package, child)
                names = tuple(a.name for a in child.names)
                found.append(Import(module, target, names, child.lineno, top_level, passthrough))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, top_level=False, passthrough=passthrough)
            elif isinstance(child, ast.With) and _is_passthrough(child):
                visit(child, top_level=top_level, passthrough=True)
            else:
                visit(child, top_level=top_level, passthrough=passthrough)

    visit(ast.parse(path.read_text() if text is None else text, filename=str(path)), top_level=True, passthrough=False)
    return found


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _layer(target: str) -> str | None:
    head = target.split(".")[0]
    return head if head in OURS else None


def _is_activity_reference(imp: Import) -> bool:
    """`from activities.x import SomeActivities, some_activity`: a class with activity methods, or
    an activity function; a payload model or a helper defined there is not one."""
    import importlib
    import inspect

    def is_activity(obj: object) -> bool:
        return hasattr(obj, "__temporal_activity_definition")

    def ok(obj: object) -> bool:
        if inspect.isclass(obj):
            return any(is_activity(member) for _, member in inspect.getmembers(obj, inspect.isfunction))
        return inspect.isfunction(obj) and is_activity(obj)

    module = importlib.import_module(imp.target)
    return all(ok(getattr(module, name, None)) for name in imp.names)


def violations(planted: dict[str, str] | None = None) -> list[str]:
    """Every breach in the tree, plus in `planted` ({relative path: source}) when given."""
    problems: list[str] = []
    files = [(p, None) for p in _sources(*OURS)] + [(ROOT / rel, text) for rel, text in (planted or {}).items()]
    for path, text in files:
        for imp in imports_of(path, text):
            source, target = _layer(imp.module), _layer(imp.target)
            if target is None:
                continue
            if source == "schemas" and target != "schemas":
                problems.append(f"{imp}: schemas import nothing of ours")
            elif source == "config" and target not in ("schemas", "config"):
                problems.append(f"{imp}: config imports only schemas")
            elif source == "activities" and target in ("workers", "workflows", "devtools", "services"):
                problems.append(f"{imp}: activities never know the process, the workflows or the dev tools")
            elif source == "workflows" and target not in ("schemas", "workflows"):
                if not (target == "activities" and imp.passthrough and imp.names and _is_activity_reference(imp)):
                    problems.append(
                        f"{imp}: workflows import schemas and workflows; activity classes and functions only"
                        " inside imports_passed_through()"
                    )
            elif source in PRODUCTION and target == "devtools" and imp.top_level:
                problems.append(f"{imp}: production code loads devtools lazily, never at module level")
    return problems


def test_the_source_keeps_every_import_rule() -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # see test_each_rule_catches_its_breach
        assert pool.submit(violations).result() == []


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("schemas/x.py", "from workers.settings import Settings\n", "schemas import nothing of ours"),
        ("config/x.py", "def f():\n    from workers.codec import EncryptionCodec\n", "config imports only schemas"),
        ("activities/x.py", "def f():\n    from workers.worker import build_workers\n", "activities never know"),
        (
            "activities/x.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workers.worker import X\n",
            "activities never know",
        ),
        ("workflows/x.py", "from activities.churn.cases import hash_actor_table\n", "workflows import schemas"),
        (
            "workflows/x.py",
            "from temporalio import workflow\nwith workflow.unsafe.imports_passed_through():\n"
            "    from activities.orders import OrderActivities, SessionLocal\n",
            "workflows import schemas",
        ),
        ("workers/x.py", "from devtools.seed import seed_demo\n", "loads devtools lazily"),
    ],
)
def test_each_rule_catches_its_breach(module: str, source: str, rule: str) -> None:
    """The check is not vacuous: a planted breach of each rule is reported."""
    # In a thread of its own: CPython 3.11's ast.parse can raise "AST constructor recursion depth
    # mismatch" in a thread whose recursion counter an earlier test left off (gh-106905).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        found = pool.submit(violations, {module: source}).result()
    assert any(rule in problem for problem in found), found


def test_a_workflow_may_name_activity_classes_inside_passthrough_only() -> None:
    inside = imports_of(ROOT / "workflows" / "churn.py")
    assert any(i.target.startswith("activities") and i.passthrough for i in inside)
    assert not any(i.target.startswith("activities") and not i.passthrough for i in inside)


# --------------------------------------------------------------------------- circles


def _module_files() -> dict[str, Path]:
    return {_module_name(p): p for p in _sources(*OURS)}


def import_graph(planted: dict[str, str] | None = None) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (`from X import Y` counts X.Y when that is a module,
    else X), over every import: module level, inside functions and under TYPE_CHECKING."""
    files: dict[str, tuple[Path, str | None]] = {name: (path, None) for name, path in _module_files().items()}
    for rel, text in (planted or {}).items():
        files[_module_name(ROOT / rel)] = (ROOT / rel, text)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, (path, text) in files.items():
        for imp in imports_of(path, text):
            if _layer(imp.target) is None:
                continue
            submodules = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in files]
            for target in submodules or [imp.target]:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_circle_among_our_modules() -> None:
    """A circle makes two modules one: neither can be read, tested or moved without the other."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # see test_each_rule_catches_its_breach
        assert pool.submit(lambda: circles(import_graph())).result() == []


def test_a_planted_circle_is_caught() -> None:
    planted = {
        "devtools/circle_a.py": "def f():\n    from devtools.circle_b import g\n",
        "devtools/circle_b.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from devtools import circle_a\n",
    }
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        found = pool.submit(lambda: circles(import_graph(planted))).result()
    assert ["devtools.circle_a", "devtools.circle_b"] in found, found
