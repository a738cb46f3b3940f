"""`make bench`: every benchmark, three runs each on a quiet machine, one summary table.

Each benchmark refuses to start while the machine is busy (benchmarks.harness.require_quiet) and
prints its figures as `FIGURE {json}` lines: a value, the floor measured in the same run (where
there is one), and a target on the ratio to that floor (or on the value). This script runs each
benchmark `--runs` times, takes the median of every figure and writes the table between the
summary markers of docs/BENCHMARKS.md. A refused or failed run stops it (exit 1): no figure in the
table comes from a run taken beside other work.

    python benchmarks/bench.py [--runs 3] [--only orders,messaging] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import operator
import statistics
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:summary:begin -->", "<!-- bench:summary:end -->"

# Sizes that end within 10 minutes each on this machine (2 cores).
BENCHMARKS: dict[str, list[str]] = {
    "insights": ["benchmarks/insights.py", "--retailers", "10000"],
    "messaging": ["benchmarks/messaging.py", "--messages", "5000", "--limit", "200"],
    "workflow_bytecode": ["benchmarks/workflow_bytecode.py", "--orders", "1000"],
    "api": ["benchmarks/api.py", "--requests", "1000", "--clients", "50"],
    "orders": ["benchmarks/orders.py", "--orders", "3000", "--expiry-orders", "600", "--ttl", "60", "--expiry-rate", "20"],
}

COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Figure:
    name: str
    unit: str
    target: str
    floor_name: str
    values: list[float]
    floors: list[float | None]

    @property
    def value(self) -> float:
        return statistics.median(self.values)

    @property
    def floor(self) -> float | None:
        floors = [f for f in self.floors if f is not None]
        return statistics.median(floors) if floors else None

    @property
    def ratio(self) -> float | None:
        ratios = [v / f for v, f in zip(self.values, self.floors) if f]
        return statistics.median(ratios) if ratios else None

    def met(self) -> bool:
        op, bound = self.target.split()
        measured = self.ratio if self.ratio is not None else self.value
        return COMPARE[op](measured, float(bound))


def run_once(name: str, argv: list[str]) -> list[dict]:
    print(f"== {name}: {' '.join(argv)}", flush=True)
    process = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    sys.stdout.write(process.stdout)
    if process.returncode != 0:
        sys.stderr.write(process.stderr[-4000:])
        raise SystemExit(f"{name} exited {process.returncode}: no table written")
    return [json.loads(line.removeprefix("FIGURE ")) for line in process.stdout.splitlines() if line.startswith("FIGURE ")]


def table(figures: list[Figure], runs: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Medians of {runs} runs on a quiet machine (1-minute load <= 0.5 at each start), {stamp}.",
        "",
        "| figure | median | floor (same run) | ratio | target | |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        floor = f"{f.floor:,.3g} ({f.floor_name})" if f.floor is not None else "–"
        ratio = f"{f.ratio:.3f}" if f.ratio is not None else "–"
        lines.append(
            f"| {f.name} | {f.value:,.4g} {f.unit} | {floor} | {ratio} | {f.target} | {'met' if f.met() else 'not met'} |"
        )
    return "\n".join(lines)


def write(summary: str) -> None:
    text = DOC.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(f"{head}{BEGIN}\n{summary}\n{END}{tail}")
    else:
        title, _, body = text.partition("\n")
        DOC.write_text(f"{title}\n\n## Summary (`make bench`)\n\n{BEGIN}\n{summary}\n{END}\n{body}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated benchmark names: " + ", ".join(BENCHMARKS))
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    chosen = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown or args.runs < 1:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}" if unknown else "--runs must be at least 1")
    figures: dict[str, Figure] = {}
    for name in chosen:
        for _ in range(args.runs):
            for record in run_once(name, BENCHMARKS[name]):
                figure = figures.setdefault(
                    record["name"], Figure(record["name"], record["unit"], record["target"], record["floor_name"], [], [])
                )
                figure.values.append(record["value"])
                figure.floors.append(record["floor"])
    summary = table(list(figures.values()), args.runs)
    print(summary)
    if not args.no_write:
        write(summary)


if __name__ == "__main__":
    main()
