"""Issue #34's acceptance: an empty jobctl (migrated, no demo seed) and the example import files make
a working system. Every file goes in through `jobctl import` (real processes); then the real jobs
run on what was imported: a reminder for an imported overdue debit reaches the Twilio emulator,
the guardrails pause the imported over-limit and long-overdue retailers, checkout on an imported
order starts its clock, the imported open churn cases run (their workflows nudge, or hold the
nudge in quiet hours), and the loyalty ledger adds up to the imported balances and takes an order."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from activities.loyalty.audit import audit_balances
from activities.loyalty.ledger import apply_points_at_checkout
from activities.messaging.twilio_gateway import TwilioGateway
from devtools.twilio_emulator import TwilioEmulator
from schemas import ids
from schemas.churn import CaseStatus
from schemas.credit import GuardrailsRequest
from schemas.orders import PendingOrderInput
from services import orders as orders_api
from tests.activities.test_churn import churn_workers
from tests.activities.test_credit import credit_workers, remind, sent_to
from tests.unit.test_cli_input import jobctl
from workflows.credit import CreditGuardrailsWorkflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "import"
FILES = [
    ("retailers", "retailers.csv"),
    ("credit_accounts", "credit_accounts.csv"),
    ("credit_transactions", "credit_transactions.csv"),
    ("orders", "orders.csv"),
    ("companies", "companies.jsonl"),
    ("memberships", "memberships.jsonl"),
    ("customers", "customers.csv"),
    ("loyalty_balances", "loyalty_balances.csv"),
]


async def one(engine: AsyncEngine, query: str, **params: object) -> object:
    async with engine.connect() as conn:
        return await conn.scalar(text(query), params)


async def column(engine: AsyncEngine, query: str) -> list[object]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(query))).scalars())


async def test_an_empty_jobctl_and_the_example_files_make_a_working_system(
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    database_url: str,
    emulator: TwilioEmulator,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    assert await one(engine, "SELECT count(*) FROM retailers") == 0, "no demo: an empty database"
    env = {
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TASK_QUEUE": task_queue,
        "MESSAGING_TASK_QUEUE": f"{task_queue}-msg",
    }
    async with churn_workers(dev_env.client, engine, gateway, stripe_api, task_queue):
        for kind, file in [*FILES, ("recovery_cases", "recovery_cases.csv")]:
            result = jobctl("import", kind, str(EXAMPLES / file), **env)
            assert result.returncode == 0, (kind, result.stdout, result.stderr)
            assert " 0 refused" in result.stdout, result.stdout

        # Churn: each imported open case's workflow runs on the worker. Stretch Studio's nudge at
        # offset 0 is decided at once (sent, or held for its quiet hours: an action row either
        # way); Lift Club's first is a day out (offsets 1 and 4), its timer set.
        async with engine.connect() as conn:
            cases = dict((await conn.execute(text("SELECT id, company_id FROM recovery_cases ORDER BY id"))).all())
        assert sorted(cases.values()) == ["lift-club", "stretch-studio", "stretch-studio"]
        for case_id, company in cases.items():
            handle = dev_env.client.get_workflow_handle(ids.churn_case(case_id))
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
            status = await handle.query("status", result_type=CaseStatus)
            assert (status.case_id, status.company_id, status.status) == (case_id, company, "OPEN")
        now_ones = [case_id for case_id, company in cases.items() if company == "stretch-studio"]
        for _ in range(300):
            acted = await one(
                engine, "SELECT count(DISTINCT case_id) FROM recovery_actions WHERE case_id = ANY(:ids)", ids=now_ones
            )
            if acted == len(now_ones):
                break
            await asyncio.sleep(0.1)
        assert acted == len(now_ones), "each case due a nudge now took its first step"
        later = next(case_id for case_id, company in cases.items() if company == "lift-club")
        status = await dev_env.client.get_workflow_handle(ids.churn_case(later)).query("status", result_type=CaseStatus)
        assert status.next_nudge_at is not None and status.next_nudge_at > datetime.now(UTC) + timedelta(hours=20)

    credit_queue = f"{task_queue}-credit"
    async with credit_workers(dev_env.client, engine, gateway, stripe_api, credit_queue) as messaging:
        # Reminders: Gupta Traders' imported debit (8,000, due 2026-11-01) is due a reminder the day after.
        status = await remind(dev_env, credit_queue, messaging, date(2026, 11, 2))
        assert status.sent >= 1, status
        gupta = await sent_to(emulator, "+919123456780")
        assert any("8000" in m["body"] or "8,000" in m["body"] for m in gupta), gupta

        # Guardrails: Gupta Traders owes 12,500 on a 10,000 limit; Sharma General Store's debit is
        # overdue past its 30 days. Both are paused and told; the healthy ones are left alone.
        today = date.today()
        result = await dev_env.client.execute_workflow(
            CreditGuardrailsWorkflow.run,
            GuardrailsRequest(check_date=today, messaging_task_queue=messaging),
            id=f"credit-guardrails/{today}-{uuid.uuid4().hex[:6]}",
            task_queue=credit_queue,
        )
        paused = set(
            await column(
                engine, "SELECT external_id FROM retailers WHERE credit_status = 'PAUSED' AND paused_by = 'system'"
            )
        )
        assert {"shop-1001", "shop-1004"} <= paused, (paused, result)
        assert "shop-1005" not in paused  # its debit is due in 2027

    # Clocks: checkout started on an imported order starts its 24-hour clock.
    order_id = int(await one(engine, "SELECT id FROM orders WHERE external_id = 'ord-88005'"))
    clock = await orders_api.start_pending_order(
        dev_env.client, engine, PendingOrderInput(order_id=order_id), task_queue=task_queue
    )
    assert clock.order_id == order_id
    described = await dev_env.client.get_workflow_handle(ids.pending_order(order_id)).describe()
    assert described.status == WorkflowExecutionStatus.RUNNING
    assert await one(engine, "SELECT status FROM pending_orders WHERE order_id = :o", o=order_id) == "PENDING"

    # Loyalty: every balance is the sum of its ledger (the nightly audit finds nothing), each the
    # imported one, and an order on an imported customer earns on top of it.
    checked, wrong, _ = await audit_balances(engine, 10)
    assert (checked, wrong) == (5, 0)
    priya = int(await one(engine, "SELECT id FROM customers WHERE external_id = 'cust-5001'"))
    applied = await apply_points_at_checkout(engine, priya, f"imp-{uuid.uuid4().hex[:8]}", 250, Decimal("400"))
    assert applied.balance_after == 1250 - 250 + 400
