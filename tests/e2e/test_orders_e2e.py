"""Order recovery on the dev server, in real time: expiry to the second, and the safety-net sweep."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.messaging.twilio_gateway import TwilioGateway
from activities.orders import OrderSweepActivities
from schemas import ids
from schemas.orders import OrderSweepRequest, PendingOrderInput, PendingOrderResult
from schemas.tables import PendingOrder
from services.orders import start_pending_order
from tests.activities.test_orders import (
    new_order,
    order_workers,
    pending_row,
    registered,
    sent_to,
    task_failures,
    zone_where,
)
from workflows.orders import OrderExpirySweepWorkflow


async def test_a_short_clock_expires_within_two_seconds_of_its_deadline(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, gateway: TwilioGateway, emulator, task_queue: str
) -> None:
    client = dev_env.client
    oid, rid, phone = await new_order(engine, tz=zone_where(datetime.now(UTC), 12))
    async with order_workers(client, engine, gateway, task_queue) as messaging:
        status = await start_pending_order(
            client,
            engine,
            PendingOrderInput(
                order_id=oid,
                retailer_id=rid,
                follow_up_after=timedelta(seconds=1),
                ttl=timedelta(seconds=4),
                messaging_task_queue=messaging,
            ),
            task_queue=task_queue,
        )
        handle = client.get_workflow_handle(ids.pending_order(oid), result_type=PendingOrderResult)
        result = await handle.result()
    row = await pending_row(engine, oid)
    lateness = (row.expired_at - row.expires_at).total_seconds()
    assert result.state == row.status == "EXPIRED"
    assert row.expires_at == status.expires_at
    assert 0 <= lateness < 2, f"expired {lateness:.3f}s after the deadline"
    assert result.follow_up_sent_at is not None and len(await sent_to(emulator, phone)) == 1
    assert await task_failures(handle) == 0


async def _unwatched_row(engine: AsyncEngine, *, expires_in: timedelta) -> int:
    """A PENDING row written without a clock (say, while Temporal was down)."""
    oid, rid, _ = await new_order(engine)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(PendingOrder).values(
                order_id=oid,
                retailer_id=rid,
                amount=80,
                created_at=now + expires_in - timedelta(hours=24),
                expires_at=now + expires_in,
            )
        )
    return oid


@asynccontextmanager
async def sweep_worker(client: Client, engine: AsyncEngine, task_queue: str) -> AsyncIterator[None]:
    def start(client: Client, order: PendingOrderInput) -> Awaitable[object]:
        return start_pending_order(client, engine, order, task_queue=task_queue)

    sweep = OrderSweepActivities(engine, client, start)
    async with Worker(
        client,
        task_queue=f"{task_queue}-sweep",
        workflows=[OrderExpirySweepWorkflow],
        activities=[sweep.expire_orphaned_orders, sweep.start_missing_order_workflows],
    ):
        yield


async def test_the_sweep_expires_unwatched_stale_rows_and_starts_missing_clocks_only(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, gateway: TwilioGateway, emulator, task_queue: str, record_history
) -> None:
    client = dev_env.client
    stale = await _unwatched_row(engine, expires_in=-timedelta(hours=1))
    live = await _unwatched_row(engine, expires_in=timedelta(hours=3))
    watched, rid, _ = await new_order(engine)
    async with (
        order_workers(client, engine, gateway, task_queue) as messaging,
        sweep_worker(client, engine, task_queue),
    ):
        await start_pending_order(
            client,
            engine,
            PendingOrderInput(order_id=watched, retailer_id=rid, messaging_task_queue=messaging),
            task_queue=task_queue,
        )
        await registered(client.get_workflow_handle(ids.pending_order(watched)))  # the clock holds its deadline
        async with engine.begin() as conn:  # its deadline passed as far as the database knows; its clock decides
            await conn.execute(
                text("UPDATE pending_orders SET expires_at = now() - interval '1 minute' WHERE order_id = :o"),
                {"o": watched},
            )

        sweeps = []
        for _ in range(2):
            sweep = await client.start_workflow(
                OrderExpirySweepWorkflow.run,
                OrderSweepRequest(page_size=2, messaging_task_queue=messaging),
                id=f"order-expiry-sweep/test-{uuid.uuid4().hex[:8]}",
                task_queue=f"{task_queue}-sweep",
            )
            sweeps.append(await sweep.result())
        await record_history(sweep, "order_expiry_sweep")
        live_status = (await client.get_workflow_handle(ids.pending_order(live)).describe()).status
        for order_id in (watched, live):
            await client.get_workflow_handle(ids.pending_order(order_id)).terminate("test done")

    first, second = sweeps
    assert (first.expired, first.started, first.left_alone) == (1, 1, 1)
    assert (second.expired, second.started, second.left_alone) == (0, 0, 2)  # nothing twice
    assert (await pending_row(engine, stale)).status == "EXPIRED"
    assert (await pending_row(engine, watched)).status == "PENDING"
    assert live_status == WorkflowExecutionStatus.RUNNING
    async with engine.connect() as conn:
        audits = await conn.scalar(
            text("SELECT count(*) FROM audit_log WHERE action = 'pending_order_expired' AND reference = :r"),
            {"r": f"order:{stale}"},
        )
    assert audits == 1


async def jobctl_orders(
    dev_env: WorkflowEnvironment, database_url: str, task_queue: str, messaging: str, *args: str
) -> tuple[int, str, str]:
    """`jobctl orders ...` in a subprocess, against the dev server and the module's database."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_"))},
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "DATABASE_URL": database_url,
        "TASK_QUEUE": task_queue,
        "MESSAGING_TASK_QUEUE": messaging,
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "jobctl"),
        "orders",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_the_cli_starts_shows_fails_and_refuses_with_one_clear_line(
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    database_url: str,
    gateway: TwilioGateway,
    emulator,
    task_queue: str,
) -> None:
    oid, _, phone = await new_order(engine, on_credit=Decimal("30.00"))
    async with order_workers(dev_env.client, engine, gateway, task_queue) as messaging:
        jobctl = functools.partial(jobctl_orders, dev_env, database_url, task_queue, messaging)
        code, out, err = await jobctl("start", str(oid))
        assert (code, err) == (0, ""), err
        assert f"pending-order/{oid}: PENDING, follow-up due" in out
        code, out, _ = await jobctl("show", str(oid), "--json")
        assert code == 0 and json.loads(out)["state"] == "PENDING"
        code, _, err = await jobctl("fail", str(oid), "--reason", "  ")
        assert code == 2 and "Invalid value for '--reason': must not be empty" in err, err
        code, out, _ = await jobctl("fail", str(oid), "--reason", "stock ran out")
        assert code == 0
        result = await dev_env.client.get_workflow_handle(
            ids.pending_order(oid), result_type=PendingOrderResult
        ).result()
        assert result.state == "FAILED"

        code, _, err = await jobctl("complete", str(oid))
        assert code == 2 and f"order {oid} is already FAILED" in err
        code, _, err = await jobctl("start", "987654321")
        assert code == 2 and "order 987654321 does not exist" in err
        code, _, err = await jobctl("show", "987654321")  # refused from the database: no clock was started
        assert code == 2 and "order 987654321 has no clock" in err
    assert len(await sent_to(emulator, phone)) == 1  # order_failed only
