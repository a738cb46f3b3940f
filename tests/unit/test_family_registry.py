"""A family declares in its registry module what the processes need from it: its scopes and its
settings group among them, so neither lives in a list elsewhere that a new family must edit."""

from __future__ import annotations

import ast
from pathlib import Path

from config.settings import Settings
from workers.api.auth import SCOPES
from workers.families import FAMILIES
from workers.families.registry import PROCESS_SETTINGS

ROUTES = Path(__file__).resolve().parents[2] / "workers" / "api" / "routes"


def test_every_setting_belongs_to_exactly_one_family_or_to_the_processes() -> None:
    owners: dict[str, list[str]] = {name: [] for name in Settings.model_fields}
    for name in PROCESS_SETTINGS:
        owners[name].append("process")
    for family in FAMILIES:
        for name in family.settings:
            assert name in owners, f"{family.name} declares {name}, which Settings does not have"
            owners[name].append(family.name)
    assert {name: who for name, who in owners.items() if len(who) != 1} == {}


def _required_scopes(path: Path) -> set[str]:
    """The scopes a routes module asks for: `require("family:read")` calls."""
    return {
        node.args[0].value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and ast.unparse(node.func).endswith("require")
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def test_every_scope_a_route_requires_is_declared_by_its_family() -> None:
    declared = {scope: family.name for family in FAMILIES for scope in family.scopes}
    assert SCOPES.keys() == declared.keys(), "the API's scopes are the families' scopes"
    required: set[str] = set()
    for path in sorted(ROUTES.glob("*.py")):
        for scope in _required_scopes(path):
            assert declared.get(scope) == scope.split(":")[0], f"{path.name} requires {scope}: no family declares it"
            required.add(scope)
    assert required == declared.keys(), "a declared scope no route requires"
