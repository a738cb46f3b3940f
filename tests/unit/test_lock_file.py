"""The lock files: `make install` and CI install requirements-dev.lock, the image requirements.lock,
so two builds of one commit get the same versions. A dependency added to pyproject.toml without
`make lock` fails here, naming it, instead of installing fine on one machine and not on the next."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PYPROJECT["dependencies"]]
EVERY = RUNTIME + [Requirement(r) for group in PYPROJECT["optional-dependencies"].values() for r in group]
FIX = "run `make lock` and commit requirements.lock and requirements-dev.lock"


def _pins(lock: str) -> dict[str, set[str]]:
    """{package: locked versions} (a universal lock may pin a package twice, under two markers)."""
    pins: dict[str, set[str]] = defaultdict(set)
    for name, version in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", (ROOT / lock).read_text(), re.M):
        pins[canonicalize_name(name)].add(version)
    return pins


def _missing(requirements: list[Requirement], lock: str) -> list[str]:
    """What the lock does not satisfy: a package it lacks, or pins outside pyproject.toml's range;
    for a requirement with extras (`psycopg[binary]`), what those extras bring too."""
    pins = _pins(lock)
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        allowed = [v for v in pins.get(name, ()) if requirement.specifier.contains(v, prereleases=True)]
        if not pins.get(name):
            problems.append(f"{requirement.name} is not in {lock}")
        elif not allowed:
            problems.append(f"{lock} pins {requirement.name} {sorted(pins[name])}, outside {requirement.specifier}")
        for extra in sorted(requirement.extras):
            for dependency in map(Requirement, importlib.metadata.requires(requirement.name) or []):
                if (
                    dependency.marker
                    and dependency.marker.evaluate({"extra": extra})
                    and not pins.get(canonicalize_name(dependency.name))
                ):
                    problems.append(f"{dependency.name} ({requirement.name}[{extra}]) is not in {lock}")
    return problems


def test_the_dev_lock_pins_every_dependency_pyproject_names() -> None:
    problems = _missing(EVERY, "requirements-dev.lock")
    assert not problems, f"{'; '.join(problems)}: {FIX}"


def test_the_image_lock_pins_every_runtime_dependency() -> None:
    problems = _missing(RUNTIME, "requirements.lock")
    assert not problems, f"{'; '.join(problems)}: {FIX}"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_pin_carries_its_hashes(lock: str) -> None:
    """pip's --require-hashes refuses a lock with one unhashed line; say which before it does."""
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text())
    unhashed = [e.split()[0] for e in entries if "==" in e.split("\n")[0] and "--hash=sha256:" not in e]
    assert not unhashed, f"{', '.join(unhashed)} without hashes in {lock}: {FIX}"


def test_install_and_the_image_install_from_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert stamp_rule, "the Makefile has no install stamp rule"
    assert "requirements-dev.lock" in stamp_rule[1].split(), "the install stamp must be rebuilt when the lock changes"
    assert "--require-hashes -r requirements-dev.lock" in stamp_rule[2]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
