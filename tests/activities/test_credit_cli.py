"""`jobctl credit ...` and `jobctl payments record` as an admin uses them: real processes, a real
database; bad input is one clear line, exit 2, and nothing changes."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from tests.activities.test_credit import new_debit, new_retailer
from tests.unit.test_cli_input import jobctl


async def _counts(engine: AsyncEngine) -> tuple[int, int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM credit_transactions), (SELECT count(*) FROM audit_log),"
                    " (SELECT count(*) FROM retailers WHERE credit_status <> 'ACTIVE')"
                )
            )
        ).one()
    return tuple(row)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--amount", "0"], "--amount must be positive"),
        (["--amount", "-25"], "--amount must be positive"),
        (["--amount", "ten"], "is not a number"),
        (["--amount", "10.001"], "more than 2 decimals"),
        (["--amount", "10", "--reference", "bad ref!"], "--reference must be"),
        (["--amount", "10"], "--reference is required"),
        (["--amount", "10", "--reference", "bank-77", "--retailer-override", "999999"], "no retailer 999999"),
    ],
)
async def test_bad_payments_are_refused_and_change_nothing(
    engine: AsyncEngine, database_url: str, args: list[str], complaint: str
) -> None:
    shop, _ = await new_retailer(engine)
    if "--retailer-override" in args:
        shop, args = int(args[-1]), args[:-2]
    before = await _counts(engine)
    result = jobctl(
        "payments", "record", "--retailer", str(shop), *args, "--actor", "admin-1", DATABASE_URL=database_url
    )
    assert result.returncode == 2, result.stderr
    assert complaint in result.stderr
    assert await _counts(engine) == before


async def test_admin_pause_block_and_unpause_are_audited_and_shown_in_the_profile(
    engine: AsyncEngine, database_url: str, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    """Each change starts the retailer's notice (`credit-admin-notice/{audit id}`; no worker needed
    to start it, none here to send it: tests/e2e/test_credit_admin_doors.py sends them)."""
    shop, _ = await new_retailer(engine)
    await new_debit(engine, shop, "120.00", date.today() - timedelta(days=12))
    temporal = {"TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, "TASK_QUEUE": task_queue}

    paused = jobctl(
        "credit",
        "pause",
        str(shop),
        "--reason",
        "disputed",
        "--actor",
        "admin-7",
        DATABASE_URL=database_url,
        **temporal,
    )
    assert paused.returncode == 0 and "ACTIVE -> PAUSED" in paused.stdout
    assert "retailer told (credit-admin-notice/" in paused.stdout, paused.stderr
    again = jobctl("credit", "pause", str(shop), "--reason", "x", "--actor", "admin-7", DATABASE_URL=database_url)
    assert again.returncode == 2 and "already PAUSED" in again.stderr  # refused before Temporal is needed
    blocked = jobctl(
        "credit",
        "block",
        str(shop),
        "--reason",
        "fraud",
        "--actor",
        "admin-8",
        "--json",
        DATABASE_URL=database_url,
        **temporal,
    )
    block = json.loads(blocked.stdout)
    assert block["new_status"] == "BLOCKED"
    assert block["notice_workflow_id"] == f"credit-admin-notice/{block['audit_id']}"

    shown = jobctl("credit", "profile", str(shop), "--json", DATABASE_URL=database_url)
    profile = json.loads(shown.stdout)
    assert (profile["credit_status"], profile["paused_by"], profile["pause_reason"]) == ("BLOCKED", "admin-8", "fraud")
    assert [d["days_overdue"] for d in profile["open_debits"]] == [12]
    assert [a["action"] for a in profile["recent_audit"]] == ["credit_blocked", "credit_paused"]
    human = jobctl("credit", "profile", str(shop), DATABASE_URL=database_url)
    assert f"retailer {shop}: BLOCKED" in human.stdout and "credit_blocked" in human.stdout

    unpaused = jobctl(
        "credit",
        "unpause",
        str(shop),
        "--reason",
        "cleared",
        "--actor",
        "admin-8",
        DATABASE_URL=database_url,
        **temporal,
    )
    assert unpaused.returncode == 0 and "BLOCKED -> ACTIVE" in unpaused.stdout
    unknown = jobctl("credit", "profile", "999999", DATABASE_URL=database_url)
    assert unknown.returncode == 2 and "no retailer 999999" in unknown.stderr


async def test_the_risk_view_buckets_receivables_and_lists_retailers_near_their_limit(
    engine: AsyncEngine, database_url: str
) -> None:
    before = json.loads(jobctl("credit", "risk", "--json", DATABASE_URL=database_url).stdout)
    near, _ = await new_retailer(engine)
    await new_debit(engine, near, "300.00", date.today() - timedelta(days=27))  # limit 30: 3 days left
    far, _ = await new_retailer(engine)
    await new_debit(engine, far, "40.00", date.today() - timedelta(days=3))

    view = json.loads(jobctl("credit", "risk", "--json", DATABASE_URL=database_url).stdout)
    buckets = {b["bucket"]: b for b in view["buckets"]}
    old = {b["bucket"]: b for b in before["buckets"]}
    assert float(buckets["16-30"]["outstanding"]) - float(old["16-30"]["outstanding"]) == 300.0
    assert buckets["1-7"]["debits"] - old["1-7"]["debits"] == 1
    at_risk = {r["retailer_id"]: r for r in view["at_risk"]}
    assert at_risk[near]["days_left"] == 3 and far not in at_risk
    table = jobctl("credit", "risk", DATABASE_URL=database_url).stdout
    assert "16-30" in table and "at risk (within 5 days of their limit)" in table


async def test_an_inr_account_is_shown_in_rupees_at_every_cli_door(
    engine: AsyncEngine, database_url: str, dev_env: WorkflowEnvironment
) -> None:
    # Issue #35: a retailer in India reads ₹ with lakh grouping, and the JSON names the currency: an
    # admin or a backend never meets an amount without one.
    shop, _ = await new_retailer(engine, limit=Decimal("500000"))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE credit_accounts SET currency = 'INR' WHERE retailer_id = :r"), {"r": shop})
        await conn.execute(text("UPDATE retailers SET locale = 'en-IN' WHERE id = :r"), {"r": shop})
    await new_debit(engine, shop, "150000.00", date.today() - timedelta(days=27))
    env = {"DATABASE_URL": database_url, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host}

    order = jobctl("credit", "order", str(shop), "--amount", "40000", "--order", str(900_000 + shop), **env)
    assert order.returncode == 0, order.stderr
    assert f"CREDIT ₹40,000.00 for retailer {shop}" in order.stdout
    assert "available credit ₹3,10,000.00" in order.stdout

    charge = jobctl(
        "credit", "adjust", str(shop), "--amount", "-2500", "--reason", "late fee", "--actor", "admin-1",
        "--reference", f"fee-{shop}", **env,
    )  # fmt: skip
    assert charge.returncode == 0, charge.stderr
    assert f"-₹2,500.00 for retailer {shop}" in charge.stdout

    risk = json.loads(jobctl("credit", "risk", "--json", DATABASE_URL=database_url).stdout)
    inr = {b["bucket"]: b for b in risk["buckets"] if b["currency"] == "INR"}
    assert inr["16-30"]["outstanding"] == "150000.00"  # never added to another currency's debts
    assert {r["currency"] for r in risk["at_risk"] if r["retailer_id"] == shop} == {"INR"}
    table = jobctl("credit", "risk", DATABASE_URL=database_url).stdout
    assert "₹150,000.00" in table  # a bucket's total: many retailers' locales, so the default one
    assert "₹1,92,500.00" in table  # the retailer's own line: as en-IN writes it
