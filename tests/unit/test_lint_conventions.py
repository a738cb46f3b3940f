"""Conventions ruff cannot hold by itself: every `# noqa` names its codes and says why.

`# noqa: BLE001 - reported, not raised`: the codes (ruff's PGH004 refuses a bare `# noqa`,
RUF100 one that silences nothing), then ` - ` and the reason, on the same line. Only comments
count (tokenize), so a string that mentions a noqa is not one.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = (
    "schemas",
    "config",
    "activities",
    "workflows",
    "services",
    "workers",
    "devtools",
    "migrations",
    "tests",
    "benchmarks",
)

# A suppression as ruff reads one, anywhere in a comment: noqa after a hash, alone or after
# `ruff:` or `flake8:` (a file's exemption).
PRAGMA = re.compile(r"#\s*(?:(?:ruff|flake8)\s*:\s*)?noqa\b", re.IGNORECASE)
WITH_REASON = re.compile(r"noqa:\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*\s+-\s+\S", re.IGNORECASE)


def unexplained_noqa(source: str, name: str = "<source>") -> list[str]:
    """`name:line: comment` for each noqa without codes or without a reason after them."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        for pragma in PRAGMA.finditer(token.string):
            if not WITH_REASON.match(token.string, pragma.start() + pragma.group().lower().index("noqa")):
                found.append(f"{name}:{token.start[0]}: {token.string}")
    return found


def _sources() -> list[Path]:
    return sorted(path for top in SCANNED for path in (ROOT / top).rglob("*.py"))


def test_every_noqa_names_its_codes_and_says_why() -> None:
    found = [line for path in _sources() for line in unexplained_noqa(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "a noqa needs its codes and a reason: `# noqa: CODE - why`\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "x = 1  # noqa: E501\n",
        "x = 1  # noqa\n",
        "x = 1  # NOQA:E501\n",
        "x = 1  # noqa: E501, F401\n",
        "x = 1  # noqa: E501 -\n",
        "x = 1  # noqa: E501 (too long)\n",
        "x = 1  # type: ignore[misc]  # noqa: E501\n",
        "# ruff: noqa\n",
        "# ruff: noqa: E501\n",
        "x = 1  # noqa: E501 - a reason  # noqa: F401\n",
    ],
)
def test_a_noqa_without_codes_or_reason_is_caught(source: str) -> None:
    [found] = unexplained_noqa(source)
    assert found.startswith("<source>:1: #")


@pytest.mark.parametrize(
    "source",
    [
        "x = 1  # noqa: E501 - generated\n",
        "x = 1  # noqa: E501, F401 - re-exported for the CLI\n",
        "x = 1  # type: ignore[misc]  # noqa: SLF001 - the SDK's own attribute\n",
        "# ruff: noqa: E501 - a table of fixtures\n",
        'x = "# noqa"  # strings are not comments\n',
        "x = 1  # no quarrel with this line\n",
    ],
)
def test_a_noqa_with_codes_and_reason_passes(source: str) -> None:
    assert unexplained_noqa(source) == []
