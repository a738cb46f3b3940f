"""`jobctl import`: every example file (native and the seeds' shapes) into a real database, twice;
a file with 10 % bad rows; dry runs; bad invocations; a kill -9 halfway and a re-run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.database import create_engine
from config.settings import load_settings
from devtools.embedded_db import EmbeddedPostgres
from services.imports import ImportRequest, Summary, import_file
from tests.unit.test_cli_input import JOBCTL, jobctl
from workers import migrate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "import"

# Dependencies first: the accounts name retailers, the cases members, the balances customers.
NATIVE = [
    ("retailers", "retailers.csv"),
    ("credit_accounts", "credit_accounts.csv"),
    ("credit_transactions", "credit_transactions.csv"),
    ("orders", "orders.csv"),
    ("companies", "companies.jsonl"),
    ("memberships", "memberships.jsonl"),
    ("recovery_cases", "recovery_cases.csv"),
    ("customers", "customers.csv"),
    ("loyalty_balances", "loyalty_balances.csv"),
]
SEEDS = [
    ("retailers", "seed001", "seed001/Retailer.csv"),
    ("credit_accounts", "seed001", "seed001/CreditAccount.csv"),
    ("credit_transactions", "seed001", "seed001/CreditTransaction.csv"),
    ("orders", "seed001", "seed001/Order.csv"),
    ("memberships", "seed003", "seed003/memberships.csv"),
    ("recovery_cases", "seed003", "seed003/recovery_cases.csv"),
    ("customers", "seed004", "seed004/customers.csv"),
    ("loyalty_balances", "seed004", "seed004/customers.csv"),
]

# What "the same database" means: every table an import writes, in a stable order, without the
# columns a clock or a sequence decides.
DUMP = {
    "retailers": "SELECT external_id, name, phone, preferred_channel, timezone, locale, credit_status FROM retailers",
    "credit_accounts": "SELECT r.external_id, a.credit_limit, a.available_credit, a.max_order_value,"
    " a.max_outstanding_days, a.payment_terms_days, a.currency FROM credit_accounts a JOIN retailers r"
    " ON r.id = a.retailer_id",
    "credit_transactions": "SELECT r.external_id, t.type, t.amount, t.cleared_amount, t.status, t.due_date,"
    " t.reference FROM credit_transactions t JOIN retailers r ON r.id = t.retailer_id",
    "audit_log": "SELECT action, reference, performed_by FROM audit_log",
    "orders": "SELECT external_id, status, payment_mode, total_amount FROM orders",
    "companies": "SELECT id, name, timezone, reminder_offsets_days, channels FROM companies",
    "memberships": "SELECT company_id, external_id, name, phone, status FROM memberships",
    "recovery_cases": "SELECT m.external_id, c.status, c.trigger FROM recovery_cases c JOIN memberships m"
    " ON m.id = c.membership_id",
    "customers": "SELECT external_id, name, phone, loyalty_points, earn_rate FROM customers",
    "loyalty_transactions": "SELECT c.external_id, t.type, t.points, t.balance_after, t.reference_type,"
    " t.reference_id FROM loyalty_transactions t JOIN customers c ON c.id = t.customer_id",
}


async def dump(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.connect() as conn:
        return {
            table: sorted((tuple(row) for row in await conn.execute(text(query))), key=repr)
            for table, query in DUMP.items()
        }


def importer(
    engine: AsyncEngine, database_url: str, client: Client | None = None, task_queue: str = "jobs"
) -> Callable[..., Awaitable[Summary]]:
    settings = load_settings(database_url=database_url, task_queue=task_queue, messaging_task_queue=f"{task_queue}-m")

    async def the_client() -> Client:
        assert client is not None, "this import needs Temporal"
        return client

    async def run(kind: str, file: str | Path, mapping: str = "jobctl", **options: Any) -> Summary:
        request = ImportRequest(kind=kind, path=EXAMPLES / file, mapping=mapping, **options)
        return await import_file(request, engine=engine, settings=settings, client=the_client)

    return run


async def scalar(engine: AsyncEngine, query: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(query), params)


async def test_the_native_examples_import_and_a_second_run_changes_nothing(
    engine: AsyncEngine, database_url: str, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    run = importer(engine, database_url, dev_env.client, task_queue)
    for kind, file in NATIVE:
        summary = await run(kind, file)
        assert summary.refused == 0, (kind, summary.refusals)
        assert summary.imported > 0 and summary.created == summary.imported, (kind, summary)
    first = await dump(engine)

    assert len(first["retailers"]) == 10
    assert ("shop-1001", "Sharma General Store", "+919876543210", "whatsapp", "Asia/Kolkata", "hi-IN", "ACTIVE") in (
        first["retailers"]
    )
    # available = limit - outstanding, from the imported debits (12,500 of which 2,500 paid).
    available = await scalar(
        engine,
        "SELECT available_credit FROM credit_accounts a JOIN retailers r ON r.id = a.retailer_id"
        " WHERE r.external_id = 'shop-1001'",
    )
    assert available == 50000 - 10000
    # shop-1002: 18,000 owed, then the imported 5,000 payment cleared part of it.
    owed = await scalar(
        engine,
        "SELECT amount - cleared_amount FROM credit_transactions t JOIN retailers r ON r.id = t.retailer_id"
        " WHERE r.external_id = 'shop-1002' AND t.type = 'DEBIT'",
    )
    assert owed == 13000
    assert ("debit_imported", "import:inv-2026-0411", "import") in first["audit_log"]
    assert ("payment_imported", "import:pay-2026-0099", "import") in first["audit_log"]
    assert len(first["recovery_cases"]) == 3
    # points equal the ledger's sum, one opening row each
    assert (
        await scalar(
            engine,
            "SELECT count(*) FROM customers c WHERE c.loyalty_points <> COALESCE((SELECT sum(points)"
            " FROM loyalty_transactions t WHERE t.customer_id = c.id), 0)",
        )
        == 0
    )
    assert await scalar(engine, "SELECT loyalty_points FROM customers WHERE external_id = 'cust-5005'") == 3020

    for kind, file in NATIVE:  # the same files again: each run finds its checkpoint finished
        summary = await run(kind, file)
        assert summary.already_finished and summary.refused == 0
    assert await dump(engine) == first

    # Even without the checkpoints, the writers change nothing (same rows, same ids).
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM import_runs"))
    for kind, file in NATIVE:
        summary = await run(kind, file)
        assert summary.refused == 0 and summary.created == 0 and summary.changed == 0, (kind, summary)
    assert await dump(engine) == first


async def test_the_seed_shaped_exports_import(
    engine: AsyncEngine, database_url: str, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    run = importer(engine, database_url, dev_env.client, task_queue)
    await run("companies", "companies.jsonl")  # seed 003's members name these companies
    results = {}
    for kind, mapping, file in SEEDS:
        results[(kind, file)] = summary = await run(kind, file, mapping)
        assert summary.refused == 0, (kind, mapping, summary.refusals)

    # The closed case is skipped, said so, not refused: only open cases are for jobctl.
    cases = results[("recovery_cases", "seed003/recovery_cases.csv")]
    assert (cases.created, cases.skipped) == (2, 1)
    assert cases.skips == {"case recovered: only open cases are imported": 1}
    assert (
        await scalar(engine, "SELECT name FROM customers WHERE external_id = '8d7e6f5a-1111-4c2b-9a3d-000000000003'")
        == "Sara Thomas"
    )
    assert (
        await scalar(
            engine, "SELECT loyalty_points FROM customers WHERE external_id = '8d7e6f5a-1111-4c2b-9a3d-000000000003'"
        )
        == 1575
    )
    # Prisma's "1,500.00" is an amount; availableCredit is recomputed, not copied
    assert (
        await scalar(
            engine,
            "SELECT credit_limit FROM credit_accounts a JOIN retailers r ON r.id = a.retailer_id"
            " WHERE r.external_id = 'ret_e6f7'",
        )
        == 1500
    )
    assert (
        await scalar(
            engine,
            "SELECT available_credit FROM credit_accounts a JOIN retailers r ON r.id = a.retailer_id"
            " WHERE r.external_id = 'ret_c9d0'",
        )
        == 40000 - 22000
    )
    # The debit paid in full stays cleared; the CREDIT is a payment of the retailer's oldest debit.
    assert (
        await scalar(engine, "SELECT status FROM credit_transactions WHERE reference = 'import:txn_7004'") == "CLEARED"
    )
    assert (
        await scalar(engine, "SELECT cleared_amount FROM credit_transactions WHERE reference = 'import:txn_7003'")
        == 10000
    )


async def test_a_file_with_ten_percent_bad_rows_imports_the_rest_and_reports_each_by_line(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    report = tmp_path / "refused.csv"
    result = jobctl(
        "import",
        "retailers",
        str(EXAMPLES / "retailers_with_bad_rows.csv"),
        "--batch-size",
        "7",
        "--report",
        str(report),
        DATABASE_URL=database_url,
    )
    assert result.returncode == 1, result.stderr
    assert "18 imported (18 new, 0 updated, 0 unchanged), 2 refused" in result.stdout
    assert "line 6: phone: " in result.stdout
    assert "line 15: timezone: " in result.stdout
    assert "2 rows refused (listed above); the other rows were imported" in result.stdout
    with report.open() as rows:
        refused = list(csv.DictReader(rows))
    assert [r["line"] for r in refused] == ["6", "15"]
    assert await scalar(engine, "SELECT count(*) FROM retailers WHERE external_id LIKE 'bad-%'") == 18

    again = jobctl("import", "retailers", str(EXAMPLES / "retailers_with_bad_rows.csv"), DATABASE_URL=database_url)
    assert again.returncode == 1 and "imported before" in again.stdout and "line 6: phone: " in again.stdout


async def test_a_dry_run_writes_nothing_and_shows_what_the_database_would_refuse(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await importer(engine, database_url)("retailers", "retailers.csv")
    accounts = tmp_path / "accounts.csv"
    accounts.write_text(
        "retailer_external_id,credit_limit,currency\nshop-1001,99000.00,INR\nghost-1,1000.00,INR\nshop-1002,5.5.5,INR\n"
    )
    before = await dump(engine)
    runs = await scalar(engine, "SELECT count(*) FROM import_runs")
    result = jobctl("import", "credit_accounts", str(accounts), "--dry-run", DATABASE_URL=database_url)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("dry run, nothing written: "), result.stdout
    assert "1 imported" in result.stdout and "2 refused" in result.stdout
    assert "line 3: retailer_external_id: " in result.stdout  # the database's word: no such retailer
    assert "line 4: credit_limit: " in result.stdout  # the model's
    assert await dump(engine) == before
    assert await scalar(engine, "SELECT count(*) FROM import_runs") == runs


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["widgets", "retailers.csv"], "unknown kind 'widgets'"),
        (["retailers", "retailers.csv", "--mapping", "seed009"], "unknown mapping 'seed009'"),
        (["retailers", "retailers.csv", "--mapping", "seed004"], "mapping seed004 has no retailers"),
        (["retailers", "missing.csv"], "no such file"),
        (["retailers", "retailers.csv", "--format", "xlsx"], "unknown format 'xlsx'"),
        (["retailers", "customers.csv"], "bad header: unknown column 'earn_rate'"),
        (["customers", "seed004/customers.csv", "--mapping", "seed001"], "mapping seed001 has no customers"),
        (["retailers", "retailers.csv", "--batch-size", "0"], "--batch-size must be 1..100000"),
    ],
)
async def test_a_bad_invocation_is_one_line_exit_2_and_writes_nothing(
    engine: AsyncEngine, database_url: str, args: list[str], complaint: str
) -> None:
    before = await scalar(engine, "SELECT count(*) FROM import_runs")
    args = [str(EXAMPLES / a) if a.endswith(".csv") else a for a in args]
    result = jobctl("import", *args, DATABASE_URL=database_url)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and complaint in lines[0], result.stderr
    assert await scalar(engine, "SELECT count(*) FROM import_runs") == before


async def test_a_file_that_is_not_utf8_is_refused_whole(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("external_id,name\nshop-x,Caf\xe9 Central\n".encode("latin-1"))
    result = jobctl("import", "retailers", str(latin), DATABASE_URL=database_url)
    assert result.returncode == 2 and "not UTF-8 (line 2, byte 28)" in result.stderr, result.stderr
    assert await scalar(engine, "SELECT count(*) FROM retailers WHERE external_id = 'shop-x'") == 0


def _big_file(path: Path, rows: int, prefix: str = "kill") -> Path:
    with path.open("w") as out:
        out.write("external_id,name,phone,timezone\n")
        for i in range(rows):
            out.write(f"{prefix}-{i:06d},Store {i},+9198{40000000 + i:08d},Asia/Kolkata\n")
    return path


async def test_kill_9_halfway_then_a_rerun_gives_the_database_of_one_clean_run(
    engine: AsyncEngine, database_url: str, pg_server: EmbeddedPostgres, tmp_path: Path
) -> None:
    """A real kill -9 of the CLI while it imports (batches of 25 of 3,000 rows), then the same
    command again: the database is the one a single clean run gives (another database)."""
    big = _big_file(tmp_path / "big.csv", 3000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_"))}
    process = subprocess.Popen(
        [JOBCTL, "import", "retailers", str(big), "--batch-size", "25"],
        env={**env, "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = await scalar(engine, f"SELECT coalesce(max(lines_done), 0) FROM import_runs WHERE source = '{big}'")
        if done > 800:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    halfway = await scalar(engine, f"SELECT lines_done FROM import_runs WHERE source = '{big}'")
    assert 800 < halfway < 3001, halfway
    assert await scalar(engine, "SELECT count(*) FROM retailers WHERE external_id LIKE 'kill-%'") >= halfway - 1

    rerun = jobctl("import", "retailers", str(big), "--batch-size", "25", DATABASE_URL=database_url)
    assert rerun.returncode == 0, rerun.stderr
    assert f"(resumed after line {halfway})" in rerun.stdout

    # One clean run into another database holds the same rows, audit rows and report.
    clean_url = pg_server.create_database(f"t_imports_clean_{uuid.uuid4().hex[:8]}", exist_ok=False)
    migrate.upgrade(clean_url)
    clean = jobctl("import", "retailers", str(big), "--batch-size", "25", DATABASE_URL=clean_url)
    assert clean.returncode == 0, clean.stderr
    clean_engine = create_engine(clean_url, pool_size=2)
    try:
        assert await _killed_rows(engine) == await _killed_rows(clean_engine)
    finally:
        await clean_engine.dispose()


async def _killed_rows(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        retailers = (
            await conn.execute(
                text(
                    "SELECT external_id, name, phone, timezone, locale, credit_status FROM retailers"
                    " WHERE external_id LIKE 'kill-%' ORDER BY external_id"
                )
            )
        ).all()
        audits = await conn.scalar(
            text(
                "SELECT count(*) FROM audit_log a JOIN retailers r ON r.id = a.retailer_id"
                " WHERE r.external_id LIKE 'kill-%'"
            )
        )
        run = (
            await conn.execute(
                text(
                    "SELECT lines_done, imported, refused, finished_at IS NOT NULL FROM import_runs"
                    " WHERE source LIKE '%big.csv'"
                )
            )
        ).one()
    return {"retailers": [tuple(r) for r in retailers], "audits": audits, "run": tuple(run)}


async def test_ctrl_c_stops_after_the_batch_in_flight_and_says_how_to_resume(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    big = _big_file(tmp_path / "ctrl_c.csv", 2000, prefix="stop")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_"))}
    process = subprocess.Popen(
        [JOBCTL, "import", "retailers", str(big), "--batch-size", "50"],
        env={**env, "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    done = 0
    for _ in range(1500):
        done = await scalar(engine, f"SELECT coalesce(max(lines_done), 0) FROM import_runs WHERE source = '{big}'")
        if done > 300:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, (out, err)
    stopped = await scalar(engine, f"SELECT lines_done FROM import_runs WHERE source = '{big}'")
    assert f"interrupted after line {stopped} (committed); run the same command again" in err
    assert stopped < 2001
    assert await scalar(engine, "SELECT count(*) FROM retailers WHERE external_id LIKE 'stop-%'") == stopped - 1

    rerun = jobctl("import", "retailers", str(big), "--batch-size", "50", DATABASE_URL=database_url)
    assert rerun.returncode == 0 and f"(resumed after line {stopped})" in rerun.stdout, rerun.stdout
    assert await scalar(engine, "SELECT finished_at IS NOT NULL FROM import_runs WHERE source = :s", s=str(big))


async def test_two_imports_of_one_file_at_once_count_each_row_once(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    """Each batch locks the run's row and checks its checkpoint: the second process stops (exit 2,
    saying why) as soon as the first moved it, and the run counts every row once."""
    big = _big_file(tmp_path / "twice.csv", 600, prefix="twice")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_"))}
    both = [
        subprocess.Popen(
            [JOBCTL, "import", "retailers", str(big), "--batch-size", "10"],
            env={**env, "DATABASE_URL": database_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=60), p.communicate()) for p in both]
    assert sorted(code for code, _ in outcomes) in ([0, 0], [0, 2]), outcomes
    for code, (_, err) in outcomes:
        assert code == 0 or "another jobctl import of this file moved its checkpoint" in err, err
    if [code for code, _ in outcomes].count(0) == 2:  # the second started after the first ended
        assert any("imported before" in out for _, (out, _) in outcomes)
    async with engine.connect() as conn:
        run = (
            await conn.execute(
                text("SELECT lines_done, imported, refused FROM import_runs WHERE source = :s"), {"s": str(big)}
            )
        ).one()
    assert tuple(run) == (601, 600, 0)
    assert await scalar(engine, "SELECT count(*) FROM retailers WHERE external_id LIKE 'twice-%'") == 600
