"""A Python client generated from `docs/openapi.json` by a standard generator (issue #34).

The OpenAPI document is the contract: a shop's developers generate their client from it, in
whatever language. This generates one with `openapi-python-client` (from the package index; no
Docker, no Java), the way they would, so the suite can call the API through it
(`tests/e2e/test_api_generated_client.py`) and `make client-check` can show it.

The generator lives in its own virtualenv under `.jobctl/` (made on first use): it pins httpx and
typer below the versions jobctl runs on, so it cannot share `.venv`. The client it writes needs
only httpx and attrs, which `.venv` has (the dev extras name them).

`python -m devtools.openapi_client [OUT]` generates the client into OUT (default
`.jobctl/openapi-client/jobctl_client`), refusing any warning the generator prints: a schema it
cannot turn into a class (two enums under one name, a broken reference) is a client that silently
lacks the operation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "openapi.json"
GENERATOR = "openapi-python-client>=0.29,<0.30"
PACKAGE = "jobctl_client"
HOME = ROOT / ".jobctl" / "openapi-client"
CONFIG = "post_hooks: []\n"  # no `ruff format` of the output: the client is read by Python, not people


class GeneratorWarned(RuntimeError):
    """The generator wrote a client, but said some of the document could not be turned into it."""


def generator(home: Path = HOME) -> Path:
    """The generator's executable, installed in its own virtualenv on first use."""
    env = home / "venv"
    executable = env / "bin" / "openapi-python-client"
    if not executable.exists():
        venv.create(env, with_pip=True)
        subprocess.run(
            [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", GENERATOR],
            check=True,
        )
    return executable


def generate(out: Path, document: Path = DOCUMENT, home: Path = HOME) -> Path:
    """Generate the client package into `out` (a directory named after the package, replaced if
    present); returns `out`. Raises `GeneratorWarned` with the generator's output on any warning."""
    config = home / "config.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG)
    run = subprocess.run(
        [
            str(generator(home)),
            "generate",
            "--path",
            str(document),
            "--output-path",
            str(out),
            "--meta",
            "none",
            "--overwrite",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    said = (run.stdout + run.stderr).strip()
    # "Warning(s) encountered while generating. Client was generated, but some pieces may be missing"
    if run.returncode != 0 or "encountered while generating" in said:
        raise GeneratorWarned(said)
    return out


if __name__ == "__main__":  # make client-check
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HOME / PACKAGE
    generate(target)
    print(f"generated {target} from {DOCUMENT.relative_to(ROOT)} with {GENERATOR}")
