"""Serving the API with uvicorn: in its own process (`jobctl api`) or inside the dev stack."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import uvicorn

from workers.api.app import create_app

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.client import Client

    from config.settings import Settings


@contextlib.asynccontextmanager
async def serve_api(
    settings: Settings, engine: AsyncEngine, client: Client, host: str, port: int
) -> AsyncIterator[str]:
    """Serve until the block ends; yields the base URL (port 0: any free port)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    # lifespan "on": the app opens its Stripe gateway at startup and closes it at shutdown
    config = uvicorn.Config(create_app(settings, engine, client), log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # The process owns its signals (`workers/process.py`): uvicorn must not take SIGINT/SIGTERM over
    # while it serves, which would stop the API before the process drains the rest in order.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # on purpose
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
            raise RuntimeError("the API did not start: its lifespan failed (logged above)")
        await asyncio.sleep(0.05)
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def run_api(settings: Settings, database_url: str, host: str, port: int) -> None:
    """`jobctl api`: serve until SIGTERM/SIGINT."""
    from activities.database import create_engine
    from workers.heap import freeze_startup_heap
    from workers.process import stop_on_signals
    from workers.temporal_client import connect
    from workers.tracing import start_tracing, stop_tracing

    stop = asyncio.Event()
    stop_on_signals(stop)
    start_tracing(settings, "jobctl-api")  # before the client and the app: both take it up
    # No ping per request: a stale connection is one 503 (problems.py).
    engine = create_engine(database_url, pool_size=settings.database_pool_size)
    try:
        client = await connect(settings)
        async with serve_api(settings, engine, client, host, port) as url:
            freeze_startup_heap()
            print(f"API on {url} (OpenAPI {url}/openapi.json, docs {url}/docs)", flush=True)
            await stop.wait()
    finally:
        await engine.dispose()
        stop_tracing()  # the spans still buffered
