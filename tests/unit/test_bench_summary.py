"""`make bench --only X` re-measures X's figures and keeps every other figure's row."""

from benchmarks.bench import HEADER, Figure, merged, rows


def test_a_partial_run_replaces_its_rows_and_keeps_the_others() -> None:
    existing = "\n".join(
        [
            "intro",
            "",
            *HEADER,
            "| a: rate | 1 /s | – | – | >= 2 | not met | old |",
            "| b: p99 | 9 ms | – | – | < 10 | met | old |",
        ]
    )
    summary = merged(
        existing, ["| a: rate | 3 /s | – | – | >= 2 | met | new |", "| c: count | 0 | – | – | == 0 | met | new |"]
    )
    rows = [line for line in summary.splitlines() if line.startswith("| ") and line not in HEADER]
    assert rows == [
        "| a: rate | 3 /s | – | – | >= 2 | met | new |",
        "| b: p99 | 9 ms | – | – | < 10 | met | old |",
        "| c: count | 0 | – | – | == 0 | met | new |",
    ]


def test_a_figure_shown_beside_its_floor_has_a_ratio_and_no_verdict_of_its_own() -> None:
    beside = Figure(
        "api: p99, to Temporal alone's", "ms", "", "a bare start", [120.0, 80.0, 100.0], [100.0, 100.0, 50.0]
    )
    (row,) = rows([beside], 3)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:6] == ["api: p99, to Temporal alone's", "100 ms", "100 (a bare start)", "1.200", "–", "–"]
    assert Figure("a", "ms", "< 100", "", [120.0], [None]).met() is False
