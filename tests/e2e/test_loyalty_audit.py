"""The nightly integrity audit and `jobctl loyalty` on the dev server: a real PostgreSQL, the
worker's Prometheus endpoint, and the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.loyalty.audit import LoyaltyAuditActivities
from activities.loyalty.ledger import apply_points_at_checkout
from activities.loyalty.queue import LoyaltyQueueActivities
from config.settings import load_settings
from schemas import ids
from schemas.loyalty import LoyaltyAuditRequest, ReconcileResult
from services.loyalty import enqueue_failed_points
from tests.loyalty_factories import balance_and_ledger, new_customer, order_ref
from workers import families
from workers.temporal_client import connect
from workflows.loyalty import LoyaltyIntegrityAuditWorkflow, LoyaltyReconciliationWorkflow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def loyalty_worker(client: Client, engine: AsyncEngine, task_queue: str) -> AsyncIterator[None]:
    queue = LoyaltyQueueActivities(engine)
    audit = LoyaltyAuditActivities(engine)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=families.by_name("loyalty").workflows(),
        activities=[
            audit.audit,
            queue.load_item,
            queue.apply_queued_points,
            queue.mark_needs_review,
            queue.resolve_item,
            queue.reopen_item,
        ],
    ):
        yield


async def busy_customers(engine: AsyncEngine, count: int) -> list[int]:
    """Customers with a few real applications each (balances that match their ledgers)."""
    ids = [await new_customer(engine, 100 * (i + 1)) for i in range(count)]
    await asyncio.gather(
        *(apply_points_at_checkout(engine, cid, order_ref(), 50, Decimal("19.90")) for cid in ids for _ in range(2))
    )
    return ids


async def jobctl_loyalty(dev_env: WorkflowEnvironment, task_queue: str, *args: str) -> tuple[int, str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_"))},
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TASK_QUEUE": task_queue,
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "jobctl"),
        "loyalty",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_the_audit_reports_the_one_balance_corrupted_by_sql_and_never_rewrites_it(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, task_queue: str, record_history
) -> None:
    bind = f"127.0.0.1:{_free_port()}"
    client = await connect(
        load_settings(temporal_address=dev_env.client.service_client.config.target_host, metrics_bind=bind)
    )
    customers = await busy_customers(engine, 6)
    corrupted = customers[3]
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE customers SET loyalty_points = loyalty_points + 7 WHERE id = :c"), {"c": corrupted}
        )
    balance, ledger = await balance_and_ledger(engine, corrupted)
    assert balance == ledger + 7

    async with loyalty_worker(client, engine, task_queue):
        handle = await client.start_workflow(
            LoyaltyIntegrityAuditWorkflow.run,
            LoyaltyAuditRequest(audit_date=date(2026, 11, 23)),
            id=f"loyalty-audit/test-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        result = await handle.result()
        await record_history(handle, "loyalty_audit")

    assert (result.audit_date, result.discrepancy_count) == (date(2026, 11, 23), 1)
    assert result.customers_checked >= len(customers)
    (found,) = result.discrepancies
    assert (found.customer_id, found.balance, found.ledger_sum, found.difference) == (corrupted, balance, ledger, 7)
    assert await balance_and_ledger(engine, corrupted) == (balance, ledger)  # reported, not rewritten

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{bind}/metrics") as response:
            metrics = await response.text()
    gauge = [line for line in metrics.splitlines() if line.startswith("loyalty_discrepancies")]
    assert gauge and all(line.endswith(" 1") for line in gauge), gauge

    async with engine.begin() as conn:  # repaired by a person: the next audit is clean
        await conn.execute(
            text("UPDATE customers SET loyalty_points = loyalty_points - 7 WHERE id = :c"), {"c": corrupted}
        )


async def test_jobctl_loyalty_audit_resolve_and_bad_arguments(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, task_queue: str
) -> None:
    client = dev_env.client
    cid = await new_customer(engine, 10)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE customers SET loyalty_points = 25 WHERE id = :c"), {"c": cid})
    async with loyalty_worker(client, engine, task_queue):
        code, out, err = await jobctl_loyalty(dev_env, task_queue, "audit")
        assert code == 0, err
        assert (
            "1 with a balance that differs from their ledger" in out
            and f"{cid:>12} {25:>12} {10:>12} {'+15':>12}" in out
        ), out
        code, out, err = await jobctl_loyalty(dev_env, task_queue, "audit", "--json", "--date", "2026-11-20")
        assert code == 0, err
        report = json.loads(out)
        assert (report["audit_date"], report["discrepancy_count"]) == ("2026-11-20", 1)
        assert report["discrepancies"][0]["customer_id"] == cid
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE customers SET loyalty_points = 10 WHERE id = :c"), {"c": cid})

        queued = await enqueue_failed_points(client, engine, cid, order_ref(), 500, Decimal("0"), task_queue=task_queue)
        handle = client.get_workflow_handle(ids.loyalty_reconcile(queued.item_id), result_type=ReconcileResult)
        for _ in range(100):
            if (await handle.query(LoyaltyReconciliationWorkflow.status)).phase == "waiting for review":
                break
            await asyncio.sleep(0.1)
        code, out, _ = await jobctl_loyalty(dev_env, task_queue, "show", str(queued.item_id))
        assert code == 0 and "NEEDS_REVIEW (waiting for review), reason: InsufficientPoints" in out, out

        code, _, err = await jobctl_loyalty(
            dev_env, task_queue, "resolve", str(queued.item_id), "--actor", "  ", "--note", "x"
        )
        # A blank actor: the free-text check every door shares, one line naming the option.
        assert code == 2 and "Invalid value for '--actor': must not be empty" in err, err
        code, _, err = await jobctl_loyalty(dev_env, task_queue, "resolve", str(queued.item_id), "--actor", "ops-1")
        assert code == 2 and "--note" in err
        code, _, err = await jobctl_loyalty(dev_env, task_queue, "retry", "0", "--actor", "ops-1")
        assert code == 2 and "Invalid value" in err
        code, _, err = await jobctl_loyalty(dev_env, task_queue, "retry", "987654321", "--actor", "ops-1")
        assert code == 2 and "item 987654321 has no reconciliation workflow" in err

        code, out, err = await jobctl_loyalty(
            dev_env,
            task_queue,
            "resolve",
            str(queued.item_id),
            "--actor",
            "ops-1",
            "--note",
            "customer compensated",
            "--json",
        )
        assert code == 0, err
        assert json.loads(out) == {"item_id": queued.item_id, "signal": "resolve_manually", "actor_id": "ops-1"}
        result = await handle.result()
        code, _, err = await jobctl_loyalty(dev_env, task_queue, "retry", str(queued.item_id), "--actor", "ops-1")
        assert code == 2 and f"item {queued.item_id} is already RESOLVED" in err
    assert (result.status, result.resolved_by, result.resolution) == (
        "RESOLVED",
        "ops-1",
        "manual: customer compensated",
    )
    assert await balance_and_ledger(engine, cid) == (10, 10)
