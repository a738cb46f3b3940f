"""The HTTP API against the real stack: PostgreSQL, the Temporal dev server with the product's
own workers (every family, on this module's task queues), the Twilio emulator and the Stripe
sandbox; requests go through the real ASGI app (httpx's ASGITransport), its lifespan run as uvicorn
runs it (it opens the API's one Stripe gateway)."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings, load_settings
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas.tables import ApiKey
from tests.conftest import STRIPE_TEST_KEY
from workers.api.app import create_app
from workers.api.auth import SCOPES, create_key, hash_key
from workers.api.auth import new_key as new_api_key
from workers.api.problems import type_uri
from workers.worker import build_workers

ALL_SCOPES = list(SCOPES)
API_BASE = "http://api"  # the `http` client's base URL
API_APPLICATION_NAME = "jobctl-api-under-test"


def stack_settings(emulator: TwilioEmulator, sandbox: StripeSandbox, **overrides: Any) -> Settings:
    queue = f"api-{uuid.uuid4().hex[:10]}"
    return load_settings(
        task_queue=queue,
        messaging_task_queue=f"{queue}-msg",
        twilio_api_base=emulator.url,
        twilio_account_sid=emulator.account_sid,
        twilio_auth_token=SecretStr(emulator.auth_token),
        stripe_secret_key=SecretStr(STRIPE_TEST_KEY),
        stripe_api_base=sandbox.url,
        **(
            {
                "quiet_hours_start": 0,  # the outbox's own rules off (a module may turn them on): the company's apply
                "quiet_hours_end": 0,
                "message_daily_cap": 10_000,
                "public_base_url": API_BASE,  # the reminders' /pay/{token} links: the `http` client's app
                # where a nudge's /manage/{token} link sends a member without a Stripe customer (unset,
                # such a member gets no nudge: it would have no link)
                "churn_manage_url": "https://billing.example.test/{company_id}/membership",
            }
            | overrides
        ),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api_settings(emulator: TwilioEmulator, sandbox: StripeSandbox) -> Settings:
    return stack_settings(emulator, sandbox)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def running_workers(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, api_settings: Settings
) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for worker in build_workers(dev_env.client, api_settings, engine, resources=stack):
            await stack.enter_async_context(worker)
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def http(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, api_settings: Settings, running_workers: None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_settings, engine, dev_env.client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API_BASE, timeout=60) as client,
    ):
        yield client


async def new_key(
    engine: AsyncEngine, *scopes: str, company: str | None = None, name: str | None = None
) -> dict[str, str]:
    """Headers carrying a new key (all scopes unless given)."""
    key, _ = await create_key(engine, name or f"k-{uuid.uuid4().hex[:10]}", list(scopes or ALL_SCOPES), company)
    return {"Authorization": f"Bearer {key}"}


async def bound_key_by_hand(engine: AsyncEngine, company: str, *scopes: str) -> dict[str, str]:
    """Headers carrying a key bound to `company` with any scopes (all unless given), written to the
    table directly as a key created before `create_key` refused such scopes would be (issue #33)."""
    key = new_api_key()
    async with engine.begin() as conn:
        await conn.execute(
            insert(ApiKey).values(
                name=f"by-hand-{uuid.uuid4().hex[:10]}",
                key_hash=hash_key(key),
                prefix=key[:9],
                scopes=list(scopes or ALL_SCOPES),
                company_id=company,
            )
        )
    return {"Authorization": f"Bearer {key}"}


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["title"]
    # typed (issue #34): a stable code, and the type URI made from it, on every problem
    assert re.fullmatch(r"[a-z][a-z0-9_]*", body["code"]) and body["type"] == type_uri(body["code"]), body
    if field is not None:
        assert body["field"] == field, body
    return body


@pytest.fixture(scope="module")
def server(api_settings, database_url: str, dev_env: WorkflowEnvironment, running_workers: None) -> Iterator[str]:
    """`serve_api` in a thread: the schemathesis client is synchronous (requests)."""
    from activities.database import create_engine
    from workers.api.server import serve_api
    from workers.temporal_client import connect

    settings_ = api_settings.model_copy(
        update={"temporal_address": dev_env.client.service_client.config.target_host, "database_url": database_url}
    )
    ready: dict[str, str] = {}
    stop = threading.Event()
    started = threading.Event()

    async def main() -> None:
        # Its own name on its connections: a test can tell the API's writes from the workers'.
        named = database_url + ("&" if "?" in database_url else "?") + f"application_name={API_APPLICATION_NAME}"
        engine = create_engine(named, pool_size=10)
        client = await connect(settings_)
        try:
            async with serve_api(settings_, engine, client, "127.0.0.1", 0) as url:
                ready["url"] = url
                started.set()
                while not stop.is_set():
                    await asyncio.sleep(0.1)
        finally:
            await engine.dispose()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(60), "the API did not start"
    yield ready["url"]
    stop.set()
    thread.join(30)
