"""Paths of the server binaries the dev extras install into the venv's bin/.

Passing these to temporalio stops it from ever downloading a server.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _venv_binary(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name!r} not found next to {sys.executable} or on PATH; install the dev extra: pip install -e '.[dev]'"
    )


def temporal_cli() -> str:
    return _venv_binary("temporal")


def temporal_test_server() -> str:
    return _venv_binary("temporal-test-server")
