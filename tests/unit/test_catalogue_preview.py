"""The README shows the demo retailers' reminder texts as the catalogue renders them today."""

from __future__ import annotations

from pathlib import Path

from devtools.catalogue_preview import preview

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_shows_the_catalogues_reminder_texts() -> None:
    assert "```text\n" + preview() + "```" in README.read_text(), "run python -m devtools.catalogue_preview"
