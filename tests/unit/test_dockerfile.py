"""The production image: `docker build` cannot run here, so its Dockerfile is read instead."""

from __future__ import annotations

import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = {"schemas", "config", "activities", "workflows", "services", "workers"}


def _copied_sources() -> list[str]:
    sources = []
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")  # continuation lines
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0].upper() in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
            sources += [w.rstrip("/") for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_the_image_copies_no_dev_tools() -> None:
    copied = _copied_sources()
    assert copied, "the Dockerfile copies nothing: the parse is wrong"
    assert not [src for src in copied if src == "." or src.split("/")[0] in ("devtools", "tests", "benchmarks")]


def test_the_image_copies_every_production_package() -> None:
    """A package left out would fail at import in the image only."""
    assert PRODUCTION_PACKAGES <= set(_copied_sources())
    assert PRODUCTION_PACKAGES == {p.parent.name for p in ROOT.glob("*/__init__.py")} - {
        "devtools",
        "tests",
        "benchmarks",
    }
