"""Plumbing every jobctl process shares: a graceful stop on signals and the readiness check.

The worker, `jobctl api`, the webhook receiver and the dev stack import this module, never each
other, so a process module is only ever loaded by the process it runs.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.client import Client

PROBE_TIMEOUT_S = 5.0


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM (Kubernetes, systemd) and SIGINT (Ctrl-C) both start a graceful drain."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def temporal_problem(client: Client) -> str | None:
    """Why Temporal does not answer a health check, or None when it does."""
    try:
        await asyncio.wait_for(client.service_client.check_health(), timeout=PROBE_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - any failure means not ready; reported, not raised
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


async def database_problem(engine: AsyncEngine) -> str | None:
    """Why the database does not answer `SELECT 1`, or None when it does."""
    try:
        async with engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=PROBE_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - any failure means not ready; reported, not raised
        return type(error).__name__
    return None


async def readiness(client: Client, engine: AsyncEngine) -> dict[str, str | None]:
    """Readiness of a process that uses both: {"temporal": problem, "database": problem}, None = ok."""
    temporal, database = await asyncio.gather(temporal_problem(client), database_problem(engine))
    return {"temporal": temporal, "database": database}
