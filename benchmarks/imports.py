"""Benchmark: `jobctl import` of N retailers and their credit accounts, against a plain COPY of the
same rows into the same tables.

    python benchmarks/imports.py --retailers 50000 [--batch-size 1000]

Two CSV files are generated (N retailers with Indian mobile numbers in a spreadsheet's spacing,
time zone and locale; N credit accounts naming them), then imported through `jobctl import`'s
engine (`services.imports.import_file`, as the command runs it: the file streamed and hashed,
each row through the mapping and `schemas.directory`'s models, each batch through
`services.directory`'s writer with its refusals and checkpoint in the same transaction).

The floor, measured in the same run on the same database: the same rows, already valid and in
E.164, `COPY`ed into `retailers` and then `credit_accounts` (the accounts' `retailer_id` looked up
by external id, as the import does), with nothing validated, audited or checkpointed. The tables
are emptied between the two.

Figures: retailers with accounts per second through the import (>= 5,000), and its ratio to the
COPY's rate (the price of validation, audit rows and the checkpoint, per row). The CPU per row by
process is printed beside them: the import's own Python (parsing, phonenumbers, pydantic) is the
benchmark process's.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.harness import (
    Measured,
    cpu_per,
    cpu_seconds,
    cpu_used,
    figure,
    machine,
    print_load_at_end,
    require_quiet,
    stack,
)
from config.settings import load_settings
from services.imports import ImportRequest, import_file
from workers.log import configure_logging

TIMEZONES = ("Asia/Kolkata", "Asia/Kolkata", "Asia/Kolkata", "Asia/Dubai")
LOCALES = ("en-IN", "hi-IN", "ta-IN", "en")


def write_files(directory: Path, n: int) -> tuple[Path, Path]:
    retailers, accounts = directory / "retailers.csv", directory / "credit_accounts.csv"
    with retailers.open("w") as out:
        out.write("external_id,name,phone,preferred_channel,timezone,locale\n")
        for i in range(n):
            number = f"{90000000 + i:08d}"
            out.write(
                f"bench-{i:07d},Kirana Store {i},+91 98 {number[:4]} {number[4:]},whatsapp,"
                f"{TIMEZONES[i % 4]},{LOCALES[i % 4]}\n"
            )
    with accounts.open("w") as out:
        out.write(
            "retailer_external_id,credit_limit,payment_terms_days,max_order_value,max_outstanding_days,currency\n"
        )
        for i in range(n):
            out.write(f"bench-{i:07d},{25000 + (i % 40) * 1000}.00,30,{10000 + (i % 10) * 500}.00,30,INR\n")
    return retailers, accounts


async def empty(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE retailers, credit_accounts, audit_log, import_runs, import_refusals CASCADE"))


def copy_floor(database_url: str, n: int) -> float:
    """The same rows COPYed (valid already, E.164 phones): seconds for retailers then accounts."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            with cur.copy(
                "COPY retailers (external_id, name, phone, preferred_channel, timezone, locale) FROM STDIN"
            ) as copy:
                for i in range(n):
                    copy.write_row(
                        (
                            f"bench-{i:07d}",
                            f"Kirana Store {i}",
                            f"+9198{90000000 + i:08d}",
                            "whatsapp",
                            TIMEZONES[i % 4],
                            LOCALES[i % 4],
                        )
                    )
            ids = dict(cur.execute("SELECT external_id, id FROM retailers WHERE external_id LIKE 'bench-%'").fetchall())
            with cur.copy(
                "COPY credit_accounts (retailer_id, credit_limit, available_credit, payment_terms_days,"
                " max_order_value, max_outstanding_days, currency) FROM STDIN"
            ) as copy:
                for i in range(n):
                    limit = 25000 + (i % 40) * 1000
                    copy.write_row((ids[f"bench-{i:07d}"], limit, limit, 30, 10000 + (i % 10) * 500, 30, "INR"))
        conn.commit()
    return time.perf_counter() - started


async def through_import(
    engine: AsyncEngine, database_url: str, files: tuple[Path, Path], batch_size: int, profile: bool
) -> float:
    settings = load_settings(database_url=database_url)

    async def no_client() -> None:
        raise RuntimeError("the directory kinds need no Temporal here")

    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    for kind, path in zip(("retailers", "credit_accounts"), files, strict=True):
        summary = await import_file(
            ImportRequest(kind=kind, path=path, batch_size=batch_size),
            engine=engine,
            settings=settings,
            client=no_client,  # type: ignore[arg-type]
        )
        if summary.refused or summary.created != summary.lines_done - 1:
            raise SystemExit(f"{kind}: expected every row created, got {summary}")
    elapsed = time.perf_counter() - started
    if profiler:
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())
    return elapsed


async def main(n: int, batch_size: int, profile: bool) -> Measured:
    configure_logging("json", "WARNING")
    with tempfile.TemporaryDirectory(prefix="jobctl-bench-imports-") as tmp:
        files = write_files(Path(tmp), n)
        async with stack() as s:
            copy_s = copy_floor(s.database_url, n)
            await empty(s.engine)
            cpu_before = cpu_seconds()
            import_s = await through_import(s.engine, s.database_url, files, batch_size, profile)
            cpu_after = cpu_seconds()
            async with s.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        text(
                            "SELECT (SELECT count(*) FROM retailers), (SELECT count(*) FROM credit_accounts),"
                            " (SELECT count(*) FROM audit_log)"
                        )
                    )
                ).one()

    rate, floor = n / import_s, n / copy_s
    print(f"machine: {machine()}")
    print(f"{n} retailers with accounts, batches of {batch_size}: rows now {tuple(rows)} (retailers, accounts, audit)")
    print(f"  jobctl import: {import_s:.2f} s = {rate:,.0f} retailers with accounts/s")
    print(f"  plain COPY:    {copy_s:.2f} s = {floor:,.0f} retailers with accounts/s (the floor)")
    print(f"  ratio to COPY: {rate / floor:.3f} ({floor / rate:.1f}x slower)")
    print(f"  {cpu_per(cpu_before, cpu_after, n, 'retailer with account')}")
    figure("imports: retailers with accounts per second", rate, "rows/s", target=">= 5000")
    figure(
        "imports: retailers with accounts per second, to a plain COPY",
        rate,
        "rows/s",
        target=">= 0.05",
        floor=floor,
        floor_name="plain COPY",
    )
    print_load_at_end()
    # The directory kinds start no workflow: no Temporal action.
    used = cpu_used(cpu_before, cpu_after)
    return Measured(n, "retailer with account", import_s, used, 0.0, {"to COPY": rate / floor})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retailers", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--profile", action="store_true", help="cProfile the import (the benchmark process)")
    args = parser.parse_args()
    require_quiet()
    asyncio.run(main(args.retailers, args.batch_size, args.profile))
