"""`make bench`: every benchmark, three runs each on a quiet machine, one summary table.

Each benchmark refuses to start while the machine is busy (benchmarks.harness.require_quiet) and
prints its figures as `FIGURE {json}` lines: a value, the floor measured in the same run (where
there is one), and a target on the ratio to that floor (or on the value). This script runs each
benchmark `--runs` times, takes the median of every figure and writes the table between the
summary markers of docs/BENCHMARKS.md. A refused or failed run stops it (exit 1): no figure in the
table comes from a run taken beside other work.

A functional check beside other work (does each benchmark run, what does it count):

    JOBCTL_BENCH_ALLOW_LOAD=1 python benchmarks/bench.py --only reminders --runs 1 --no-write

Such runs mark their figures `"loaded": true`; the table says so, and this script refuses to
write a table holding any of them into docs/BENCHMARKS.md (exit 1). Counts (actions per unit,
Stripe calls per reminder) mean the same under load; rates and latencies do not.

    python benchmarks/bench.py [--runs 3] [--only orders,messaging] [--no-write] [--small]

`--small` runs the SMALL sizes instead (a minute or two each) and never writes.
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
    # 20,000 messages at 200 msg/s (about 105 s), the same unlimited and as a no-op, then 4,000 on two worker processes.
    "messaging": ["benchmarks/messaging.py", "--messages", "20000", "--limit", "200", "--in-flight", "50"],
    # Issue #38: a pool of 3 sender numbers at 80 msg/s each (WhatsApp's per-number rate), 20,000 messages (about 85 s).
    "senders": ["benchmarks/senders.py", "--messages", "20000", "--senders", "3", "--rate", "80"],
    "workflow_bytecode": ["benchmarks/workflow_bytecode.py", "--runs", "1000"],
    "api": ["benchmarks/api.py", "--requests", "1000", "--clients", "50"],
    # The 10,000 clocks asleep (for the worker's RSS); starting them is most of the run.
    "orders": [
        "benchmarks/orders.py",
        "--orders",
        "10000",
        "--expiry-orders",
        "600",
        "--ttl",
        "60",
        "--expiry-rate",
        "20",
        "--life-orders",
        "50",
    ],
    # Production's day of 10,000 retailers through the 8-step cadence (about 3 minutes), the cron on
    # 200. At 1,000 the first page's read, which nothing overlaps, was 8 % of the day.
    "reminders": ["benchmarks/reminders.py", "--retailers", "10000", "--cron-retailers", "200"],
    # The same day under production's limits (Stripe 25 req/s, Twilio 200 msg/s), then the next cadence day.
    "reminders_production": ["benchmarks/reminders.py", "--production", "--retailers", "10000"],
    # The 10,000 open cases: opening them is most of the run (about 5 minutes on a quiet machine).
    "churn": ["benchmarks/churn.py", "--cases", "10000", "--nudges", "200"],
    "loyalty": ["benchmarks/loyalty.py", "--applications", "5000", "--hot", "10", "--cold", "1000", "--queued", "200"],
    "guardrails": ["benchmarks/guardrails.py", "--retailers", "2000"],
    # Issue #34's 50,000 retailers with their credit accounts through `jobctl import`, beside a plain COPY.
    "imports": ["benchmarks/imports.py", "--retailers", "50000"],
    # Issue #36's drill: 3 workers per queue, 2 API processes, a 20,000-retailer day at 200 msg/s
    # (about 105 s) with 1,000 checkouts at 10/s; -9 one worker per queue and one API after 30 s.
    "scale_out": ["benchmarks/scale_out.py", "--retailers", "20000", "--checkouts", "1000", "--checkout-rate", "10"],
    # Issue #38 point 1: manual nudges idle and during a 10,000-retailer day at 200 msg/s; a small
    # company's 100 nudges alone and beside a big company's 2,000.
    "priority": ["benchmarks/priority.py", "--retailers", "10000", "--limit", "200", "--nudges", "200"],
    # The console's pages as each role crawls them: 1,000 retailers, 10,000 churn cases, 1,000 loyalty items.
    "console": ["benchmarks/console.py", "--retailers", "1000", "--churn-cases", "10000", "--loyalty-items", "1000"],
}

# Run only when named (`--only scale_out`, `make bench-scale-out`), not by a bare `make bench`.
OPT_IN = {"scale_out"}

# `--small`: the same benchmarks at sizes that end in a minute or two, to check that each runs and
# what it counts (actions per unit and Stripe calls per reminder hold at any size); never written.
SMALL: dict[str, list[str]] = {
    "insights": ["benchmarks/insights.py", "--retailers", "500", "--baseline-sample", "100"],
    "messaging": ["benchmarks/messaging.py", "--messages", "300", "--limit", "200", "--two-worker-messages", "200"],
    "senders": ["benchmarks/senders.py", "--messages", "600", "--senders", "3", "--rate", "80"],
    "workflow_bytecode": ["benchmarks/workflow_bytecode.py", "--runs", "100"],
    "api": ["benchmarks/api.py", "--requests", "100", "--clients", "10"],
    "orders": [
        "benchmarks/orders.py",
        "--orders",
        "200",
        "--expiry-orders",
        "50",
        "--ttl",
        "15",
        "--expiry-rate",
        "20",
        "--life-orders",
        "10",
    ],
    "reminders": ["benchmarks/reminders.py", "--retailers", "100", "--cron-retailers", "20"],
    "reminders_production": ["benchmarks/reminders.py", "--production", "--retailers", "100"],
    "churn": ["benchmarks/churn.py", "--cases", "300", "--nudges", "20"],
    "loyalty": ["benchmarks/loyalty.py", "--applications", "200", "--hot", "10", "--cold", "200", "--queued", "20"],
    "guardrails": ["benchmarks/guardrails.py", "--retailers", "150"],
    "imports": ["benchmarks/imports.py", "--retailers", "2000"],
    "scale_out": [
        "benchmarks/scale_out.py",
        "--retailers",
        "6000",
        "--limit",
        "100",
        "--checkouts",
        "240",
        "--checkout-rate",
        "4",
        "--ttl",
        "10",
        "--before",
        "10",
        "--window",
        "8",
    ],
    "priority": ["benchmarks/priority.py", "--retailers", "300", "--nudges", "10", "--small-company", "5"],
    "console": [
        "benchmarks/console.py",
        "--retailers",
        "100",
        "--churn-cases",
        "500",
        "--loyalty-items",
        "100",
        "--repeat",
        "5",
    ],
}

COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


@dataclass
class Figure:
    name: str
    unit: str
    target: str
    floor_name: str
    values: list[float]
    floors: list[float | None]
    loaded: bool = False  # some run was taken under JOBCTL_BENCH_ALLOW_LOAD=1

    @property
    def value(self) -> float:
        return statistics.median(self.values)

    @property
    def floor(self) -> float | None:
        floors = [f for f in self.floors if f is not None]
        return statistics.median(floors) if floors else None

    @property
    def ratio(self) -> float | None:
        ratios = [v / f for v, f in zip(self.values, self.floors, strict=True) if f]
        return statistics.median(ratios) if ratios else None

    def met(self) -> bool | None:
        """None: a figure with no target of its own (shown beside one that has)."""
        if not self.target:
            return None
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
    return [
        json.loads(line.removeprefix("FIGURE ")) for line in process.stdout.splitlines() if line.startswith("FIGURE ")
    ]


HEADER = [
    "| figure | median | floor (same run) | ratio | target | | measured |",
    "| --- | --- | --- | --- | --- | --- | --- |",
]


def rows(figures: list[Figure], runs: int) -> list[str]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = []
    for f in figures:
        floor = f"{f.floor:,.3g} ({f.floor_name})" if f.floor is not None else "–"
        ratio = f"{f.ratio:.3f}" if f.ratio is not None else "–"
        met = f.met()
        verdict = ("–" if met is None else "met" if met else "not met") + (" (loaded)" if f.loaded else "")
        lines.append(
            f"| {f.name} | {f.value:,.5g} {f.unit} | {floor} | {ratio} | {f.target or '–'} |"
            f" {verdict} | {stamp}, {runs} runs |"
        )
    return lines


def table(figures: list[Figure], runs: int) -> str:
    first = f"Medians of {runs} runs on a quiet machine (1-minute load <= 0.5 at each start)."
    if any(f.loaded for f in figures):
        first = f"LOADED (JOBCTL_BENCH_ALLOW_LOAD=1: taken beside other work, timings are noise), {runs} run(s)."
    return "\n".join([first, "", *HEADER, *rows(figures, runs)])


def merged(existing: str, new_rows: list[str]) -> str:
    """The summary with `new_rows` in place of the rows of the same figures; the others stay,
    so `--only` re-measures some benchmarks without dropping the rest."""
    key = lambda row: row.split("|")[1].strip()  # noqa: E731 - a one-line key, beside its use
    fresh = {key(r): r for r in new_rows}
    kept = [
        line
        for line in existing.splitlines()
        if line.startswith("| ")
        and line not in HEADER
        and not line.startswith("| figure ")
        and not line.startswith("| ---")
    ]
    out = [fresh.pop(key(r), r) for r in kept]
    out += list(fresh.values())
    intro = "Each row is the median of the runs it names, all on a quiet machine (1-minute load <= 0.5 at each start)."
    return "\n".join([intro, "", *HEADER, *out])


def write(new_rows: list[str]) -> None:
    text = DOC.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        existing, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{BEGIN}\n{merged(existing, new_rows)}\n{END}{tail}")
    else:
        title, _, body = text.partition("\n")
        DOC.write_text(f"{title}\n\n## Summary (`make bench`)\n\n{BEGIN}\n{merged('', new_rows)}\n{END}\n{body}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated benchmark names: " + ", ".join(BENCHMARKS))
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/BENCHMARKS.md alone")
    parser.add_argument(
        "--small", action="store_true", help="the SMALL sizes: a functional check, never written (implies --no-write)"
    )
    args = parser.parse_args()
    sizes = SMALL if args.small else BENCHMARKS
    chosen = [n for n in args.only.split(",") if n] or [n for n in BENCHMARKS if n not in OPT_IN]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown or args.runs < 1:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}" if unknown else "--runs must be at least 1")
    figures: dict[str, Figure] = {}
    for name in chosen:
        for _ in range(args.runs):
            for record in run_once(name, sizes[name]):
                figure = figures.setdefault(
                    record["name"],
                    Figure(record["name"], record["unit"], record["target"], record["floor_name"], [], []),
                )
                figure.values.append(record["value"])
                figure.floors.append(record["floor"])
                figure.loaded = figure.loaded or bool(record.get("loaded"))
    summary = table(list(figures.values()), args.runs)
    print(summary)
    if args.no_write or args.small:
        return
    if any(f.loaded for f in figures.values()):
        raise SystemExit(
            "refused: figures taken under JOBCTL_BENCH_ALLOW_LOAD=1 (beside other work) are not written to"
            f" {DOC.relative_to(ROOT)}; run `make bench` on a quiet machine"
        )
    write(rows(list(figures.values()), args.runs))


if __name__ == "__main__":
    main()
