"""Shared test harness: real PostgreSQL, real Temporal servers, unique task queues.

- one embedded PostgreSQL per session, a fresh migrated database per test module;
- a time-skipping WorkflowEnvironment and a dev-server WorkflowEnvironment, both from
  the binaries the dev extra installs (nothing is downloaded).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis
import pytest
import pytest_asyncio
import stripe
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.database import create_engine
from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
from activities.payments.client import close_stripe_client, stripe_client
from activities.payments.gateway import StripeGateway
from devtools import binaries, temporal_config
from devtools.embedded_db import EmbeddedPostgres
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas import search_attributes
from tests import properties
from workers import migrate

# No developer's `temporal` CLI profile reaches the tests' clients (workers/temporal_client.py reads
# envconfig): none in process, and none in the `jobctl` subprocesses that drop TEMPORAL_* variables
# (the CLI's default file is under XDG_CONFIG_HOME on Linux).
os.environ["TEMPORAL_CONFIG_FILE"] = os.devnull
os.environ.pop("TEMPORAL_PROFILE", None)
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="jobctl-test-config-")

# The ledger property tests' profiles (tests/properties.py): HYPOTHESIS_PROFILE=money is `make test-money`.
if properties.PROFILE != "default":
    hypothesis.settings.load_profile(properties.PROFILE)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    root = Path(tempfile.mkdtemp(prefix="jobctl-test-pg-"))
    server = EmbeddedPostgres(root / "pg", delete_on_stop=True)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def _module_db_name(request: pytest.FixtureRequest) -> str:
    stem = Path(str(request.node.path)).stem.lower()
    return f"t_{stem[:40]}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def empty_database_url(pg_server: EmbeddedPostgres, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database for this test module."""
    return pg_server.create_database(_module_db_name(request), exist_ok=False)


@pytest.fixture(scope="module")
def database_url(empty_database_url: str) -> str:
    """A fresh database for this test module, migrated to head.

    Its id sequences start at an offset of its own: the Temporal servers live for the whole session,
    and business-keyed workflow ids (`pending-order/1`, `churn-case/1`) must not meet a closed
    workflow of another module's order 1, as they never would in production."""
    migrate.upgrade(empty_database_url)
    _offset_sequences(empty_database_url, next(_SEQUENCE_BLOCKS) * 1_000_000)
    return empty_database_url


# A block of a million ids per module, distinct within the session (two modules that drew the same
# random offset met each other's `pending-order/{id}` on the shared server), every other block so a
# test's `id + 1_000_000` stays its own, from a random start; under 2**31 for int columns.
_SEQUENCE_BLOCKS = itertools.count(random.randrange(1, 500) * 2, 2)


def _offset_sequences(url: str, start: int) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for (sequence,) in conn.execute(
            "SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = 'public'"
        ):
            conn.execute(f"ALTER SEQUENCE {sequence} RESTART WITH {start}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=10)
    yield eng
    await eng.dispose()


async def start_time_skipping() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=binaries.temporal_test_server(),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in search_attributes.ALL},
        )
    )
    return env


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server per module (about a second to start): a run a module leaves open (a
    payment still holding its message after the door answered, a re-check nobody waits for) keeps
    the server's clock from skipping, and a shared server timed out the next module's sleeps."""
    env = await start_time_skipping()
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binaries.temporal_cli(),
        search_attributes=search_attributes.ALL,
        dev_server_extra_args=temporal_config.dev_server_args(**{"frontend.enableUpdateWorkflowExecution": "true"}),
    )
    yield env
    await env.shutdown()


HISTORIES = Path(__file__).parent / "replay" / "histories"


@pytest.fixture
def record_history():
    """Save a finished workflow's history for the replay suite when RECORD_HISTORIES=1.

    `RECORD_HISTORIES=1 make test` regenerates tests/replay/histories/ from the tests that use this.
    """

    async def record(handle, name: str) -> None:
        if os.environ.get("RECORD_HISTORIES") != "1":
            return
        history = await handle.fetch_history()
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json())

    return record


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def emulator() -> AsyncIterator[TwilioEmulator]:
    """A Twilio emulator per test module; tests count what it accepted via /_emulator/messages."""
    async with TwilioEmulator() as emu:
        yield emu


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(emulator: TwilioEmulator) -> AsyncIterator[TwilioGateway]:
    """The product's Twilio gateway (real SDK) pointed at the module's emulator."""
    gw = TwilioGateway(twilio_client(emulator.url, emulator.account_sid, emulator.auth_token, async_client=True))
    yield gw
    await gw.close()


STRIPE_TEST_KEY = "sk_test_jobctl"

UNUSED_STRIPE = {"STRIPE_SECRET_KEY": "sk_test_unused", "STRIPE_API_BASE": "http://127.0.0.1:9"}
"""The environment of a `jobs` worker process in a test that never reaches Stripe: a worker is whole or
refuses to start, and the payments activities need a key. Nothing listens on port 9, so a call made
after all fails at once, never reaching Stripe."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sandbox() -> AsyncIterator[StripeSandbox]:
    """A Stripe sandbox (localstripe behind Stripe's idempotency rules) per test module."""
    async with StripeSandbox() as sb:
        yield sb


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stripe_api(sandbox: StripeSandbox) -> AsyncIterator[stripe.StripeClient]:
    """The product's Stripe client pointed at the module's sandbox."""
    c = stripe_client(STRIPE_TEST_KEY, sandbox.url, timeout_s=10)
    yield c
    await close_stripe_client(c)


@pytest.fixture
def stripe_gateway(engine: AsyncEngine, stripe_api: stripe.StripeClient) -> StripeGateway:
    """The product's Stripe gateway on the module's `stripe_api` client (which closes it)."""
    return StripeGateway(stripe_api, engine)


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real credentials from the environment."""
    for name in list(os.environ):
        if name.startswith(("TWILIO_", "STRIPE_", "TEMPORAL_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name, raising=False)
