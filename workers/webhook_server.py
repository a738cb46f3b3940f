"""The webhook receiver as a process: `jobctl webhooks` and the dev stack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from activities.database import create_engine
from activities.deps import ActivityDeps
from activities.payments.gateway import open_stripe_gateway
from config.settings import Settings
from services.messaging import reply_help
from workers import families
from workers.process import stop_on_signals
from workers.temporal_client import connect
from workers.tracing import start_tracing, stop_tracing, webhook_middleware
from workers.webhooks import create_app


@asynccontextmanager
async def serve_webhooks(
    settings: Settings, engine: AsyncEngine, host: str, port: int, client: Client | None = None
) -> AsyncIterator[str]:
    """Serve until the block ends; yields the base URL. Without a client, Stripe events are only recorded.

    The handlers share the receiver's one Stripe gateway (when STRIPE_SECRET_KEY is set), closed
    with the receiver."""
    assert settings.stripe_webhook_secret and settings.twilio_auth_token
    async with AsyncExitStack() as resources:
        deps = None
        if client:
            deps = ActivityDeps(client, settings, engine, open_stripe_gateway(settings, engine), resources)
            if deps.stripe is not None:
                resources.push_async_callback(deps.stripe.close)
        app = create_app(
            engine,
            stripe_webhook_secret=settings.stripe_webhook_secret.get_secret_value(),
            twilio_auth_token=settings.twilio_auth_token.get_secret_value(),
            public_base_url=settings.webhook_base_url,
            stripe_handlers=families.stripe_handlers(deps) if deps else None,
            help_reply=(lambda t, r, sid: reply_help(client, settings, t, r, sid)) if client else None,
        )
        if (traced := webhook_middleware()) is not None:  # tracing on (workers/tracing.py)
            app.middlewares.insert(0, traced)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        resources.push_async_callback(runner.cleanup)  # before the gateway closes: no handler runs after
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}"


async def run_webhook_server(settings: Settings, database_url: str, host: str, port: int) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    start_tracing(settings, "jobctl-webhooks")  # before the client: the workflows it signals continue the trace
    engine = create_engine(database_url, pool_size=settings.database_pool_size)
    try:
        client = await connect(settings)
        async with serve_webhooks(settings, engine, host, port, client):
            await stop.wait()
    finally:
        await engine.dispose()
        stop_tracing()  # the spans still buffered
