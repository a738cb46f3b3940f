"""Hypothesis settings of the ledger property tests (issue #32): bounded in `make test`, long in
`make test-money`.

`make test` has a 15-minute budget on a 2-core CI machine, so there each ledger property runs a
fixed, derandomized handful of sequences (the same ones every run: a failure there is a change in
the code, never the dice). `make test-money` sets HYPOTHESIS_PROFILE=money: thousands of random
sequences per property (MONEY_EXAMPLES, 2000 by default), the failing one printed with its
reproduction blob. The profile is registered here and loaded by tests/conftest.py.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
MONEY = PROFILE == "money"

_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "money",
    max_examples=int(os.environ.get("MONEY_EXAMPLES", "2000")),
    deadline=None,
    database=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=_QUIET,
)


def ledger_settings(examples: int) -> settings:
    """`examples` derandomized sequences in the default profile; the money profile's count under it."""
    if MONEY:
        return settings(settings.get_profile("money"))
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=_QUIET,
    )
