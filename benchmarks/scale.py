"""`make bench-scale`: each family at 1k, 10k and 100k units, its cost per unit at each, and the
cost of a day (issue #38 points 4 and 5). Not part of `make bench`: the 100k runs take an hour.

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--families insights,orders] [--runs 3]
                               [--large-runs 1] [--no-write]

Each (family, size) runs in a process of its own (`--one FAMILY --size N`), which calls that
family's benchmark (`main()` of benchmarks/reminders.py, insights.py, orders.py, churn.py,
loyalty.py, imports.py, the same measurement their CLIs print) and hands back what it measured
(`harness.Measured`) as one `SCALE {json}` line. Per family and size this prints units/s, CPU ms
per unit by component, billable Temporal actions per unit (benchmarks/actions.py) and the family's
own targets, then the largest/smallest ratio of CPU per unit (goal <= 1.2).

What a unit is, per family (the benchmark process is the jobctl process that does the work):
reminders, a reminder sent on the first cadence day under production's limits (the jobs worker;
the messaging worker is "worker processes"); insights, a retailer regenerated (the jobs worker);
orders, a pending-order clock started and asleep (the jobs worker and the starting client);
churn, a case opened and asleep (the jobs and messaging workers); loyalty, a points application
over as many customers (the API's checkout path); imports, a retailer with its credit account
through `jobctl import`.

Results are medians of `--runs` runs (`--large-runs` for sizes of 100,000 and more), merged into
docs/benchmarks-scale.json by (family, size); the tables in docs/BENCHMARKS.md ("Scale curve",
"Cost of a day") are rendered from that file, so `--families insights --sizes 100000` re-measures
one row and keeps the others. The cost of a day takes each family's largest measured size.

Under `JOBCTL_BENCH_ALLOW_LOAD=1` (beside other work) the rows are marked loaded, and the doc says
so: counts (actions per unit) hold under load, rates and CPU per unit do not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.actions import (
    DAY_UNITS,
    DAYS_A_MONTH,
    PRICE_PER_MILLION_ACTIONS,
    PRICE_PER_VCPU_HOUR,
    DayCost,
    PerUnit,
    compute_cpu_s,
    cost_of_a_day,
    monthly_usd,
)
from benchmarks.harness import Measured, load_allowed, require_quiet

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
DATA = ROOT / "docs" / "benchmarks-scale.json"
CURVE = ("<!-- scale:curve:begin -->", "<!-- scale:curve:end -->")
COST = ("<!-- scale:cost:begin -->", "<!-- scale:cost:end -->")

FAMILIES = ("reminders", "insights", "orders", "churn", "loyalty", "imports")
# What the benchmark process is in each family's run: its CPU is that component's.
OWN_PROCESS = {
    "reminders": "workers",
    "insights": "workers",
    "orders": "workers",
    "churn": "workers",
    "loyalty": "api",
    "imports": "import (CLI)",
}
COMPONENT = {
    "worker processes": "workers",
    "temporal server": "temporal server",
    "postgresql": "postgresql",
    "served (`serve`)": "emulators",
}
LARGE = 100_000
ASLEEP = frozenset({"orders", "churn"})
"""Families whose runs leave a workflow per unit open on the dev server (order clocks, churn cases)."""
MAPS_PER_OPEN_WORKFLOW = 1.0
"""The dev server's in-memory store maps memory as it grows: 74,300 mappings with 100,000 churn
cases open (2026-12-07, /proc/PID/maps), 4.7 GB resident. Past the kernel's
`vm.max_map_count` (65,530 by default) its next mmap fails and the server dies (ENOMEM) with
about 55,000 open: the first 100k churn run did. One mapping per open workflow leaves room."""
MAP_COUNT = Path("/proc/sys/vm/max_map_count")


def map_count_short(families: list[str], sizes: list[int], limit: int | None) -> str | None:
    """Why the largest run of a family that leaves its units open would kill the dev server, or None."""
    n = max(sizes) if ASLEEP & set(families) else 0
    needed = int(n * MAPS_PER_OPEN_WORKFLOW) + 20_000
    if limit is None or n == 0 or limit >= needed:
        return None
    return (
        f"vm.max_map_count is {limit:,}: {n:,} open workflows need about {needed:,} memory mappings in the"
        f" dev server, which dies when it runs out (run `sysctl -w vm.max_map_count={max(needed, 262_144)}`"
        " as root, or leave the largest size out of --sizes)"
    )


def measure(family: str, n: int) -> Measured:
    """One run of `family`'s benchmark at `n` units, in this process."""
    if family == "reminders":
        from benchmarks import reminders

        args = argparse.Namespace(
            production=True,
            retailers=n,
            cron_retailers=200,
            page_size=reminders.RemindersRequest().page_size,
            in_flight=100,
            deadline=3600.0,
        )
        return asyncio.run(reminders.main(args))
    if family == "insights":
        from benchmarks import insights

        return asyncio.run(insights.main(n, baseline_sample=100))
    if family == "orders":
        from benchmarks import orders

        return asyncio.run(orders.main(n, 600, 60.0, 200, 20.0, True, 50, bare=False))
    if family == "churn":
        from benchmarks import churn

        return asyncio.run(churn.main(n, min(200, n), 200))
    if family == "loyalty":
        import uvloop

        from benchmarks import loyalty

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(loyalty.main(n, 10, n, 20, 200))
    if family == "imports":
        from benchmarks import imports

        return asyncio.run(imports.main(n, 1000, False))
    raise ValueError(f"unknown family {family}")


def components(family: str, m: Measured) -> dict[str, float]:
    """CPU ms per unit by component (workers, API, PostgreSQL, Temporal, emulators)."""
    out: dict[str, float] = {}
    for process, ms in m.cpu_ms_per_unit().items():
        name = OWN_PROCESS[family] if process == "benchmark process" else COMPONENT.get(process, process)
        out[name] = out.get(name, 0.0) + ms
    return out


def record(family: str, n: int, m: Measured) -> dict[str, Any]:
    return {
        "family": family,
        "size": n,
        "units": m.units,
        "unit": m.unit,
        "rate": m.rate,
        "cpu_ms": components(family, m),
        "actions": m.actions_per_unit,
        "targets": m.targets,
        "loaded": load_allowed(),
    }


def run_child(family: str, n: int) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", family, "--size", str(n)]
    print(f"== {family} at {n:,}", flush=True)
    process = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    lines = process.stdout.splitlines()
    sys.stdout.write("".join(f"   {line}\n" for line in lines if not line.startswith("SCALE ")))
    if process.returncode != 0:
        sys.stderr.write(process.stderr[-4000:])
        raise SystemExit(f"{family} at {n} exited {process.returncode}")
    return next(json.loads(line.removeprefix("SCALE ")) for line in lines if line.startswith("SCALE "))


def median_record(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs (per component, per target)."""
    first = runs[0]
    med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else None  # noqa: E731 - a one-line helper beside its uses
    return {
        **first,
        "rate": med([r["rate"] for r in runs]),
        "cpu_ms": {k: med([r["cpu_ms"].get(k, 0.0) for r in runs]) for k in first["cpu_ms"]},
        "actions": med([r["actions"] for r in runs]),
        "targets": {k: med([r["targets"].get(k) for r in runs]) for k in first["targets"]},
        "runs": len(runs),
        "loaded": any(r["loaded"] for r in runs),
        "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def total(r: dict[str, Any]) -> float:
    return float(sum(r["cpu_ms"].values()))


def ratios(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int, float]]:
    """Per family: (smallest size, largest size, largest/smallest total CPU per unit)."""
    out = {}
    for family in FAMILIES:
        mine = sorted((r for r in rows if r["family"] == family), key=lambda r: r["size"])
        if len(mine) > 1 and total(mine[0]):
            out[family] = (mine[0]["size"], mine[-1]["size"], total(mine[-1]) / total(mine[0]))
    return out


def number(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def fmt_targets(targets: dict[str, float | None]) -> str:
    return "; ".join(f"{k} {number(v)}" for k, v in targets.items() if v is not None) or "–"


def curve_table(rows: list[dict[str, Any]]) -> str:
    rows = sorted(rows, key=lambda r: (FAMILIES.index(r["family"]), r["size"]))
    loaded = any(r["loaded"] for r in rows)
    lines = [
        "LOADED, not quiet (JOBCTL_BENCH_ALLOW_LOAD=1, beside other work: rates and CPU per unit are inflated;"
        " actions per unit hold)."
        if loaded
        else "Quiet machine (1-minute load <= 0.5 at each start).",
        "",
        "| family (unit) | units | units/s | CPU ms per unit: total (by component) | billable actions per unit"
        " | the family's targets | runs | measured |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu_ms"].items()) if v)
        actions = "–" if r["actions"] is None else f"{r['actions']:.4g}"
        lines.append(
            f"| {r['family']} ({r['unit']}) | {r['size']:,} | {r['rate']:,.0f} | {total(r):.2f} ({parts}) | {actions}"
            f" | {fmt_targets(r['targets'])} | {r['runs']}{' (loaded)' if r['loaded'] else ''} | {r['measured']} |"
        )
    lines += ["", "| family | CPU per unit, largest / smallest | goal |", "| --- | --- | --- |"]
    for family, (small, large, ratio) in ratios(rows).items():
        lines.append(f"| {family} | {ratio:.2f} ({large:,} / {small:,}) | <= 1.2 |")
    return "\n".join(lines)


def day_cost(rows: list[dict[str, Any]]) -> tuple[DayCost, dict[str, int]]:
    """The cost of point 5's day from each family's largest measured size."""
    largest: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["family"] not in largest or r["size"] > largest[r["family"]]["size"]:
            largest[r["family"]] = r
    per_unit = {f: PerUnit(r["cpu_ms"], r["actions"] or 0.0) for f, r in largest.items()}
    day = cost_of_a_day(per_unit, {f: units for f, (units, _) in DAY_UNITS.items()})
    return day, {f: r["size"] for f, r in largest.items()}


def cost_table(rows: list[dict[str, Any]]) -> str:
    day, sizes = day_cost(rows)
    actions_usd, compute_usd = monthly_usd(day)
    lines = [
        "| family | units a day | from the run at | actions a day | CPU-seconds a day |",
        "| --- | --- | --- | --- | --- |",
    ]
    for family, (actions, cpu_s) in day.by_family.items():
        units, why = DAY_UNITS[family]
        lines.append(f"| {family} | {units:,.0f} ({why}) | {sizes[family]:,} | {actions:,.0f} | {cpu_s:,.0f} |")
    lines.append(f"| **day** | | | **{day.actions:,.0f}** | **{day.cpu_total_s:,.0f}** |")
    lines += ["", "| component | CPU-seconds a day | vCPU-hours a month |", "| --- | --- | --- |"]
    for component, seconds in sorted(day.cpu_s.items()):
        lines.append(f"| {component} | {seconds:,.0f} | {seconds * DAYS_A_MONTH / 3600:,.1f} |")
    own = compute_cpu_s(day)
    lines += [
        "",
        f"Monthly estimate: actions {day.actions:,.0f}/day x {DAYS_A_MONTH} / 1,000,000 x"
        f" ${PRICE_PER_MILLION_ACTIONS:g} = **${actions_usd:,.2f}** (Temporal Cloud); jobctl's own CPU"
        f" (workers, API, PostgreSQL; not the Temporal server, which the actions pay for, nor the emulators)"
        f" {own:,.0f} s/day x {DAYS_A_MONTH} / 3600 x ${PRICE_PER_VCPU_HOUR:g} = **${compute_usd:,.2f}** (compute)."
        + (" From loaded runs: the CPU figures are high." if any(r["loaded"] for r in rows) else ""),
    ]
    return "\n".join(lines)


def load_data() -> list[dict[str, Any]]:
    return json.loads(DATA.read_text()) if DATA.exists() else []


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fresh = {(r["family"], r["size"]): r for r in new}
    kept = [r for r in old if (r["family"], r["size"]) not in fresh]
    return sorted([*kept, *fresh.values()], key=lambda r: (FAMILIES.index(r["family"]), r["size"]))


def replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    begin, end = markers
    if begin not in text or end not in text:
        raise SystemExit(f"{DOC.relative_to(ROOT)} has no {begin} ... {end}: nowhere to write")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def write(rows: list[dict[str, Any]]) -> None:
    DATA.write_text(json.dumps(rows, indent=1) + "\n")
    text = replace_between(DOC.read_text(), CURVE, curve_table(rows))
    DOC.write_text(replace_between(text, COST, cost_table(rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--families", default=",".join(FAMILIES), help=", ".join(FAMILIES))
    parser.add_argument("--runs", type=int, default=3, help="runs per size below 100,000 (the median is kept)")
    parser.add_argument("--large-runs", type=int, default=1, help="runs per size of 100,000 and more")
    parser.add_argument("--no-write", action="store_true", help="print, leave docs/ alone")
    parser.add_argument("--one", choices=FAMILIES, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one measurement, handed back as data
        m = measure(args.one, args.size)
        print("SCALE " + json.dumps(record(args.one, args.size, m)), flush=True)
        return
    families = [f for f in args.families.split(",") if f]
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not sizes or min(sizes) < 1 or args.runs < 1 or args.large_runs < 1:
        parser.error(f"unknown famil(ies): {', '.join(unknown)}" if unknown else "sizes and runs must be positive")
    limit = int(MAP_COUNT.read_text()) if MAP_COUNT.exists() else None
    if short := map_count_short(families, sizes, limit):
        parser.error(short)
    rows = []
    for family in families:
        for n in sizes:
            require_quiet()
            runs = [run_child(family, n) for _ in range(args.large_runs if n >= LARGE else args.runs)]
            rows.append(median_record(runs))
            r = rows[-1]
            print(
                f"{family} at {n:,}: {r['rate']:,.0f} a second ({r['unit']}); CPU {total(r):.2f} ms per {r['unit']}"
                f" ({', '.join(f'{k} {v:.2f}' for k, v in r['cpu_ms'].items())});"
                f" actions {r['actions']}; {fmt_targets(r['targets'])}",
                flush=True,
            )
            if not args.no_write:  # each row as it is measured: a later run's failure keeps it
                write(merge(load_data(), rows))
    merged = merge(load_data(), rows)
    print(curve_table(merged))
    print()
    print("Cost of a day (100,000 retailers, 10,000 members, 50,000 orders):")
    print(cost_table(merged))


if __name__ == "__main__":
    main()
