"""`make bench --only X` re-measures X's figures and keeps every other figure's row."""

from benchmarks.bench import HEADER, merged


def test_a_partial_run_replaces_its_rows_and_keeps_the_others() -> None:
    existing = "\n".join(["intro", "", *HEADER, "| a: rate | 1 /s | – | – | >= 2 | not met | old |",
                          "| b: p99 | 9 ms | – | – | < 10 | met | old |"])
    summary = merged(existing, ["| a: rate | 3 /s | – | – | >= 2 | met | new |", "| c: count | 0 | – | – | == 0 | met | new |"])
    rows = [line for line in summary.splitlines() if line.startswith("| ") and line not in HEADER]
    assert rows == [
        "| a: rate | 3 /s | – | – | >= 2 | met | new |",
        "| b: p99 | 9 ms | – | – | < 10 | met | old |",
        "| c: count | 0 | – | – | == 0 | met | new |",
    ]
