"""`jobctl dev`: the whole platform on one machine, from wheels, no Docker.

Starts the Temporal dev server (UI included, state in .jobctl/temporal.db), an embedded
PostgreSQL (data in .jobctl/pg) unless DATABASE_URL is set, migrates, seeds demo data,
bootstraps Temporal (`jobctl bootstrap`: search attributes, the brake,
schedules) and runs the worker, all in this process group. SIGINT/SIGTERM
drains the worker and stops every child; a second run reuses the data.

The Temporal dev server, PostgreSQL and the Stripe sandbox's localstripe are supervised
(`devtools/supervise.py`): restarted on their data when they die, or the stack stops with one line
and exit 1. While it runs, its settings are in JOBCTL_HOME/dev-stack.env (0600) for the commands of
a second terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path

import structlog
from pydantic import SecretStr
from temporalio.client import Client

from activities.database import create_engine
from config.settings import DEV_STACK_FILE, Settings
from devtools import binaries, temporal_config
from devtools.seed import (
    DEMO_CONSOLE_PASSWORD,
    locale_retailers,
    money_loop_retailer,
    seed_console_users,
    seed_demo,
)
from devtools.supervise import Child, StackFailed, Supervisor
from workers import migrate
from workers.bootstrap import bootstrap
from workers.process import stop_on_signals
from workers.temporal_client import connect
from workers.tracing import start_tracing, stop_tracing
from workers.worker import build_workers, run_workers

log = structlog.get_logger(__name__)

STARTUP_TIMEOUT_S = 60.0
DEV_STRIPE_WEBHOOK_SECRET = "whsec_jobctl_dev"
DEV_STRIPE_SECRET_KEY = "sk_test_jobctl_dev"


def temporal_server_command(settings: Settings, db_file: Path) -> list[str]:
    host, port = settings.temporal_address.rsplit(":", 1)
    command = [
        binaries.temporal_cli(),
        "server",
        "start-dev",
        "--ip",
        host,
        "--port",
        port,
        "--ui-port",
        str(settings.temporal_ui_port),
        "--db-filename",
        str(db_file),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
        *temporal_config.dev_server_args(),
    ]
    return command  # the search attributes: `jobctl bootstrap`'s path (`workers.bootstrap`), as on a cluster


class TemporalDevServer:
    """The `temporal` CLI's dev server as a child process, state in `home/temporal.db`."""

    def __init__(self, settings: Settings, home: Path) -> None:
        self._settings, self._home = settings, home
        self.log_path = home / "temporal.log"
        self._log = open(self.log_path, "ab")  # closed by stop()
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            temporal_server_command(self._settings, self._home / "temporal.db"),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    async def ready(self) -> Client:
        return await _wait_for_temporal(self._settings, self.process, self._home)

    async def restart(self) -> None:
        """Start it again on the same SQLite file and ports; returns once it answers. The clients
        already connected (the worker's, the API's) reconnect by themselves."""
        self.process.wait()
        self.process = self._spawn()
        await self.ready()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@asynccontextmanager
async def temporal_dev_server(
    settings: Settings, home: Path, supervisor: Supervisor | None = None
) -> AsyncIterator[Client]:
    """The Temporal dev server as a child process (restarted by `supervisor`); yields a connected client."""
    server = TemporalDevServer(settings, home)
    try:
        client = await server.ready()
        if supervisor is not None:
            supervisor.watch(Child("Temporal dev server", server.alive, server.restart, hint=str(server.log_path)))
        yield client
    finally:
        server.stop()
        log.info("dev.temporal_stopped")


async def _wait_for_temporal(settings: Settings, process: subprocess.Popen[bytes], home: Path) -> Client:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"temporal dev server exited with {process.returncode} (is {settings.temporal_address} in use?); "
                f"see {home / 'temporal.log'}"
            )
        try:
            # polled without the metrics endpoint (each try would bind METRICS_BIND anew), then once with it
            await connect(settings.model_copy(update={"metrics_bind": None}))
            return await connect(settings)
        except Exception:  # not listening yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@asynccontextmanager
async def database(settings: Settings, home: Path, supervisor: Supervisor | None = None) -> AsyncIterator[str]:
    """DATABASE_URL when set, else an embedded PostgreSQL kept in .jobctl/pg (restarted by `supervisor`)."""
    if settings.database_url:
        yield settings.database_url
        return
    from devtools.embedded_db import EmbeddedPostgres

    server = await asyncio.to_thread(EmbeddedPostgres, (home / "pg").resolve())
    if supervisor is not None:

        async def restart() -> None:
            await asyncio.to_thread(server.restart)

        supervisor.watch(Child("embedded PostgreSQL", server.alive, restart, hint=str(home / "pg" / "log")))
    try:
        yield await asyncio.to_thread(server.create_database, "jobctl")
    finally:
        await asyncio.to_thread(server.stop)
        log.info("dev.postgres_stopped")


@asynccontextmanager
async def twilio(settings: Settings) -> AsyncIterator[Settings]:
    """Real Twilio when credentials are set; otherwise the emulator, and settings pointing at it.

    The emulator is strict (Twilio's WhatsApp session and template rules) with the catalogue's
    templates approved under dev SIDs, written to `$JOBCTL_HOME/content_sids.toml` for the workers
    (TWILIO_CONTENT_SIDS_FILE), as a deployment writes the SIDs Twilio issued; and the workers
    check them at start-up as with real Twilio."""
    if settings.twilio_account_sid and settings.twilio_auth_token:
        yield settings
        return
    from devtools.content_templates import register
    from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, serve

    home = Path(settings.jobctl_home)
    sids_file = home / "content_sids.toml"
    _, templates = register(sids_file)
    host = settings.temporal_address.rsplit(":", 1)[0]
    async with serve(host, settings.twilio_emulator_port, strict=True, content_templates=templates) as emulator:
        yield settings.model_copy(
            update={
                "twilio_api_base": emulator.url,
                "twilio_account_sid": DEFAULT_ACCOUNT_SID,
                "twilio_auth_token": SecretStr(DEFAULT_AUTH_TOKEN),
                "twilio_content_sids_file": str(sids_file),
                "twilio_require_content_sids": True,
            }
        )


@asynccontextmanager
async def stripe(settings: Settings, supervisor: Supervisor | None = None) -> AsyncIterator[Settings]:
    """Real Stripe when a secret key is set; otherwise the sandbox (localstripe + idempotency),
    persisted under JOBCTL_HOME/stripe: the customers the database names survive a restart (and
    its localstripe child survives a crash: `supervisor` restarts it on that store)."""
    if settings.stripe_secret_key:
        yield settings
        return
    from devtools.stripe_sandbox import StripeSandbox

    sandbox = await StripeSandbox(data_dir=Path(settings.jobctl_home) / "stripe").start(
        settings.temporal_address.rsplit(":", 1)[0], settings.stripe_sandbox_port
    )
    if supervisor is not None:
        supervisor.watch(Child("Stripe sandbox's localstripe", sandbox.backend_alive, sandbox.restart_backend))
    try:
        yield settings.model_copy(
            update={"stripe_api_base": sandbox.url, "stripe_secret_key": SecretStr(DEV_STRIPE_SECRET_KEY)}
        )
    finally:
        await sandbox.stop()


@asynccontextmanager
async def webhooks(settings: Settings, engine, client) -> AsyncIterator[tuple[Settings, str]]:
    """The webhook receiver, and Twilio status callbacks pointed at it; yields the settings and its
    local URL (WEBHOOK_BASE_URL may be a public one)."""
    from workers.webhook_server import serve_webhooks

    if not settings.stripe_webhook_secret:
        settings = settings.model_copy(update={"stripe_webhook_secret": SecretStr(DEV_STRIPE_WEBHOOK_SECRET)})
    host = settings.temporal_address.rsplit(":", 1)[0]
    async with serve_webhooks(settings, engine, host, settings.webhooks_port, client) as url:
        # Payment links are Checkout Sessions: the sandbox serves their pay page itself.
        yield settings.model_copy(update={"webhook_base_url": settings.webhook_base_url or url}), url


async def _point_emulator_inbound(settings: Settings, webhook: str) -> None:
    """The emulator's numbers' incoming-message webhook, as Twilio's is set on each number: `POST
    /_emulator/inbound` (a retailer's reply) reaches the receiver, which records the WhatsApp
    session the send path reads. Only the emulator `twilio()` started (its dev account)."""
    import aiohttp

    from devtools.twilio_emulator import DEFAULT_ACCOUNT_SID

    if settings.twilio_account_sid != DEFAULT_ACCOUNT_SID:
        return
    async with aiohttp.ClientSession() as http:
        url = f"{settings.twilio_api_base}/_emulator/config"
        async with http.post(url, json={"inbound_webhook": webhook}) as response:
            response.raise_for_status()


API_PORT = 8000


@asynccontextmanager
async def api(settings: Settings, engine, client) -> AsyncIterator[str]:
    """The HTTP API on 127.0.0.1:8000 (any free port if that one is taken); yields its URL."""
    from workers.api.server import serve_api

    host = settings.temporal_address.rsplit(":", 1)[0]
    try:
        server = serve_api(settings, engine, client, host, API_PORT)
        url = await server.__aenter__()
    except OSError:
        server = serve_api(settings, engine, client, host, 0)
        url = await server.__aenter__()
    try:
        yield url
    finally:
        await server.__aexit__(None, None, None)


DEV_RECEIVER = "jobctl dev receiver"
"""The description of the dev stack's own subscription (replaced at each start: its port changes)."""


@asynccontextmanager
async def event_receiver(settings: Settings, engine, client) -> AsyncIterator[str]:
    """The example event receiver (`devtools/event_receiver.py`) on a free port, subscribed to every
    event type: the dev stack's console shows each event as it is delivered, verified. Yields its URL."""
    from sqlalchemy import text

    from devtools.event_receiver import EventReceiver
    from schemas.events import EVENT_TYPES
    from services.events import create_subscription

    host = settings.temporal_address.rsplit(":", 1)[0]
    async with EventReceiver("unset", host=host) as receiver:
        async with engine.begin() as conn:  # the last run's subscription pointed at its own port
            await conn.execute(
                text(
                    "UPDATE event_subscriptions SET disabled_at = now() WHERE description = :d AND disabled_at IS NULL"
                ),
                {"d": DEV_RECEIVER},
            )
        sub = await create_subscription(
            engine,
            client,
            receiver.url,
            list(EVENT_TYPES),
            created_by="jobctl-dev",
            description=DEV_RECEIVER,
            poll_seconds=settings.event_poll_seconds,
            task_queue=settings.task_queue,
        )
        receiver.secret = sub.secret
        yield f"{receiver.url} (subscription {sub.id}; GET /_receiver/events lists what arrived)"


def connection_settings(settings: Settings, database_url: str, api_url: str) -> dict[str, str]:
    """The stack's effective settings a second shell's process needs to join it: addresses, queues,
    the database, the public URLs and, when they are the stack's own emulator and sandbox, their
    URLs and dev keys (dev-only secrets). Real providers' credentials are never written: a process
    beside a stack using them takes them from its own environment."""
    import os

    lines = {
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "TASK_QUEUE": settings.task_queue,
        "MESSAGING_TASK_QUEUE": settings.messaging_task_queue,
        "PUBLIC_BASE_URL": settings.public_base_url or api_url,
        "WEBHOOK_BASE_URL": settings.webhook_base_url,
        "CHURN_MANAGE_URL": settings.churn_manage_url,
        "JOBCTL_API_URL": api_url,
        "JOBCTL_DEV_PID": str(os.getpid()),
    }
    if settings.twilio_content_sids_file:  # a second shell's `jobctl worker` sends as this stack's do
        lines["TWILIO_CONTENT_SIDS_FILE"] = str(Path(settings.twilio_content_sids_file).resolve())
    if settings.twilio_api_base:  # the emulator: its URL and dev credentials
        lines |= {
            "TWILIO_API_BASE": settings.twilio_api_base,
            "TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
            "TWILIO_AUTH_TOKEN": _secret(settings.twilio_auth_token),
            "TWILIO_REQUIRE_CONTENT_SIDS": "true" if settings.content_sids_required else "false",
        }
    if settings.stripe_api_base:  # the sandbox: its URL and dev keys
        lines |= {
            "STRIPE_API_BASE": settings.stripe_api_base,
            "STRIPE_SECRET_KEY": _secret(settings.stripe_secret_key),
            "STRIPE_WEBHOOK_SECRET": _secret(settings.stripe_webhook_secret),
        }
    return {key: value for key, value in lines.items() if value}


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None


def write_connection_file(home: Path, settings: Settings, database_url: str, api_url: str) -> Path:
    """What a second shell's `jobctl` needs to reach this stack (read by config.settings while it
    runs): `connection_settings`, written 0600 from the start (it holds dev keys) and atomically."""
    import os

    path = home / DEV_STACK_FILE
    partial = path.with_suffix(".tmp")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{k}={v}\n" for k, v in connection_settings(settings, database_url, api_url).items()))
    partial.replace(path)
    return path


async def run_dev_stack(settings: Settings, *, demo: bool) -> None:
    home = Path(settings.jobctl_home)
    home.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    stop_on_signals(stop)
    # The worker's Prometheus endpoint (the SDK's), on 9464 unless METRICS_BIND says otherwise or it is taken.
    settings = settings.model_copy(update={"metrics_bind": settings.metrics_bind or _metrics_bind(settings)})
    supervisor = Supervisor(stop)
    async with AsyncExitStack() as stack:
        # OTEL_EXPORTER_OTLP_ENDPOINT (a local Jaeger, docs/OPERATIONS.md): before the client, which takes it up
        if start_tracing(settings, "jobctl-dev") is not None:
            stack.callback(stop_tracing)  # last out: the spans still buffered
        settings = await stack.enter_async_context(twilio(settings))
        settings = await stack.enter_async_context(stripe(settings, supervisor))
        client = await stack.enter_async_context(temporal_dev_server(settings, home, supervisor))
        database_url = await stack.enter_async_context(database(settings, home, supervisor))
        # Watched from here on; stopped before the children are (the exit stack unwinds in reverse).
        stack.push_async_callback(_cancel, asyncio.create_task(supervisor.run()))
        await asyncio.to_thread(migrate.upgrade, database_url)
        engine = create_engine(database_url)
        stack.push_async_callback(engine.dispose)
        if demo:
            report = await seed_demo(
                engine, today=datetime.now(settings.tz).date(), timezone=settings.business_timezone
            )
            print("demo data: " + (f"seeded {report.retailers} retailers" if report else "already present"))
            console_users = await seed_console_users(engine)
        settings, webhooks_url = await stack.enter_async_context(webhooks(settings, engine, client))
        if settings.twilio_api_base:  # the emulator (started here): it posts a recipient's message
            await _point_emulator_inbound(settings, f"{settings.webhook_base_url}/webhooks/twilio/inbound")
        if settings.stripe_secret_key and settings.stripe_secret_key.get_secret_value() == DEV_STRIPE_SECRET_KEY:
            from devtools.stripe_sandbox import register_webhook

            assert settings.stripe_api_base and settings.stripe_webhook_secret
            await register_webhook(
                settings.stripe_api_base,
                f"{settings.webhook_base_url}/webhooks/stripe",
                settings.stripe_webhook_secret.get_secret_value(),
            )
        if settings.stripe_api_base and not settings.churn_manage_url:
            # a member Stripe does not know is sent to the company's own page (the sandbox's), by
            # the nudge (worker) and by /manage/{token} (API)
            manage = f"{settings.stripe_api_base}/membership/{{company_id}}"
            settings = settings.model_copy(update={"churn_manage_url": manage})
        # The API first: the reminders' links point at its /pay/{token} (PUBLIC_BASE_URL).
        api_url = await stack.enter_async_context(api(settings, engine, client))
        settings = settings.model_copy(update={"public_base_url": settings.public_base_url or api_url})
        # As soon as the API answers (its /readyz is what a second terminal waits for): written
        # with the banner, a command started on the first 200 found no settings ("DATABASE_URL:
        # not set") for the seconds the schedules, the workers and the demo jobs took.
        write_connection_file(home, settings, database_url, api_url)
        stack.callback(lambda: (home / DEV_STACK_FILE).unlink(missing_ok=True))
        applied = await bootstrap_dev(client, settings)
        workers = build_workers(client, settings, engine, resources=stack)  # its clients close with the stack
        receiver = await stack.enter_async_context(event_receiver(settings, engine, client))
        if demo:
            await start_demo_jobs(client, engine, settings)
        _print_banner(settings, database_url, applied)
        if demo and (shop := await money_loop_retailer(engine)) is not None:
            print(
                f"  Money loop:    retailer {shop} is over its limit: `jobctl credit profile {shop}` shows its"
                " pause and payment link (README: Paying a reminder)",
                flush=True,
            )
        for rid, locale, currency in await locale_retailers(engine) if demo else []:
            print(f"  Locales:       retailer {rid} ({locale}, {currency}): `jobctl credit profile {rid}`", flush=True)
        print(
            f"  HTTP API:      {api_url} (docs {api_url}/docs; a key: jobctl api-keys create --name me --scopes ...)",
            flush=True,
        )
        print(f"  Events:        {receiver}", flush=True)
        print(f"  Console:       {api_url}/console", flush=True)
        if demo:
            for username, role, company in console_users:
                bound = f" (company {company})" if company else ""
                print(f"    {role + bound:<30} sign in as {username} / {DEMO_CONSOLE_PASSWORD}", flush=True)
        else:
            print("    add a user: jobctl console-user add NAME --role finance", flush=True)
        print(
            f"  Metrics:       API {api_url}/metrics, webhooks {webhooks_url}/metrics,"
            f" worker http://{settings.metrics_bind}/metrics (rules and dashboard: deploy/)",
            flush=True,
        )
        await run_workers(workers, stop)
        if supervisor.failure is not None:
            raise StackFailed(supervisor.failure)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def bootstrap_dev(client: Client, settings: Settings) -> list[tuple[str, str]]:
    """`jobctl bootstrap` against the dev server (search attributes, the `messaging-brake` singleton,
    schedules, codec key): one path for every cluster. Returns the schedules' outcomes."""
    steps = await bootstrap(client, settings)
    failed = [step.line() for step in steps if step.failed]
    if failed:
        raise RuntimeError("bootstrap failed: " + "; ".join(failed))
    return [(step.name.removeprefix("schedule "), step.outcome) for step in steps if step.name.startswith("schedule ")]


DEMO_TRIGGERS = ("order-expiry-sweep", "payment-reminders", "credit-guardrails", "loyalty-reconcile-sweep")


async def start_demo_jobs(client, engine, settings: Settings) -> None:
    """Give every family something to show in the UI at once: the demo's pending checkouts and
    loyalty items get their workflows from the sweeps, today's reminders and guardrails run now,
    and each open churn case gets its workflow."""
    from sqlalchemy import text

    from services.churn import start_case

    for schedule_id in DEMO_TRIGGERS:
        await client.get_schedule_handle(schedule_id).trigger()
    async with engine.connect() as conn:
        members = (
            await conn.execute(text("SELECT membership_id, company_id FROM recovery_cases WHERE status = 'OPEN'"))
        ).all()
    for membership_id, company_id in members:
        await start_case(client, engine, settings, membership_id, "payment_failed", company_id=company_id)


WORKER_METRICS_PORT = 9464


def _metrics_bind(settings: Settings) -> str:
    """host:9464 for the dev worker's metrics, or any free port when 9464 is taken."""
    host = settings.temporal_address.rsplit(":", 1)[0]
    with socket.socket() as probe:
        try:
            probe.bind((host, WORKER_METRICS_PORT))
            return f"{host}:{WORKER_METRICS_PORT}"
        except OSError:
            probe.bind((host, 0))
            return f"{host}:{probe.getsockname()[1]}"


def _without_password(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return database_url if url.password is None else url.render_as_string(hide_password=True)


def _print_banner(settings: Settings, database_url: str, applied: list[tuple[str, str]]) -> None:
    host = settings.temporal_address.rsplit(":", 1)[0]
    lines = [
        "",
        "jobctl dev stack is up",
        f"  Temporal UI:   http://{host}:{settings.temporal_ui_port}/namespaces/{settings.temporal_namespace}/workflows",
        f"  Temporal gRPC: {settings.temporal_address} (namespace {settings.temporal_namespace})",
        f"  Database:      {_without_password(database_url)}",
        f"  Twilio:        {settings.twilio_api_base or 'api.twilio.com'}"
        + (" (emulator: GET /_emulator/messages lists what was sent)" if settings.twilio_api_base else ""),
        f"  Stripe:        {settings.stripe_api_base or 'api.stripe.com'}"
        + (" (sandbox: localstripe with idempotency keys)" if settings.stripe_api_base else ""),
        f"  Webhooks:      {settings.webhook_base_url}/webhooks/stripe, /webhooks/twilio/status",
        "  Schedules:     " + ", ".join(f"{sid} ({outcome})" for sid, outcome in applied),
        f"  Worker:        polling task queues {settings.task_queue}, {settings.messaging_task_queue}",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)
