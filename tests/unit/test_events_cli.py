"""`jobctl events` bad input: one clear line, exit 2, before any connection is made."""

from __future__ import annotations

import pytest

from tests.unit.test_cli_input import jobctl

NOWHERE = {"DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/never", "TEMPORAL_ADDRESS": "127.0.0.1:1"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("subscriptions", "create", "--url", "ftp://x.example/h", "--types", "credit.paused"), "http:// or https://"),
        (("subscriptions", "create", "--url", "https://x.example/h", "--types", "credit.exploded"), "credit.exploded"),
        (("subscriptions", "create", "--url", "https://x.example/h", "--types", ","), "at least one event type"),
        (("subscriptions", "delete", "0"), "greater than or equal to 1"),
        (("list", "--type", "nope"), "--type must be one of"),
        (("replay", "evt_123", "--subscription", "1"), "EVENT_ID must be evt_"),
        (("replay", "evt_" + "0" * 32, "--subscription", "0"), "--subscription"),
    ],
)
def test_bad_input_is_one_clear_refusal(args: tuple[str, ...], says: str) -> None:
    result = jobctl("events", *args, **NOWHERE)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
