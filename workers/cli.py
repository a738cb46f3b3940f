"""`jobctl`: the operator's and developer's command line.

Every command reads settings first, so a malformed setting is one line naming it and
exit status 2. Commands that touch Temporal leave through `os._exit` after flushing
(ARCHITECTURE §9: the SDK's runtime can abort during interpreter shutdown).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Annotated, Any, TypeVar

import typer

from workers.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="jobctl",
    help="Durable background jobs on Temporal: run the stack, the worker, schedules and operator actions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain one-line errors: scripts read them too
)
schedules_app = typer.Typer(help="Schedules as code: apply, list, trigger.", no_args_is_help=True, rich_markup_mode=None)
insights_app = typer.Typer(help="Nightly insight regeneration.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(schedules_app, name="schedules")
app.add_typer(insights_app, name="insights")


T = TypeVar("T")


UsageError = typer.BadParameter
"""Bad input from the command line: printed with the usage line, exit 2."""


def settings() -> Settings:
    return load_settings()


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def call_with_client(
    action: Callable[..., Awaitable[T]], *args: object, refused: type[Exception], **kwargs: object
) -> T:
    """Run `action(client, *args, **kwargs)` against the configured Temporal; `refused` (the API's
    "cannot apply" error) is bad input: its reason on one line, exit 2."""
    from workers.temporal_client import connect

    s = settings()

    async def _go() -> T:
        return await action(await connect(s), *args, **kwargs)

    try:
        return run(_go)
    except refused as refusal:
        raise UsageError(str(refusal)) from None


def _configure_logging(s: Settings) -> None:
    from workers.log import configure_logging

    configure_logging(s.log_format, s.log_level)


# --- the stack -------------------------------------------------------------------------------


@app.command()
def dev(
    demo: Annotated[bool, typer.Option("--demo", help="Seed demo data (idempotent).")] = False,
) -> None:
    """Run the whole platform locally: Temporal dev server + UI, PostgreSQL, migrations, schedules, worker."""
    from workers.devstack import run_dev_stack

    s = settings()
    _configure_logging(s)
    run(lambda: run_dev_stack(s, demo=demo))


@app.command()
def worker(
    task_queue: Annotated[
        list[str] | None,
        typer.Option("--task-queue", help="Queues to poll: jobs, messaging (repeatable; default both)."),
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Only check Temporal and the database are reachable; exit 0 or 1.")] = False,
) -> None:
    """Run a worker against the configured Temporal and database (production entry point)."""
    s = settings()
    database_url = s.require_database_url()
    queues = task_queue or ["jobs", "messaging"]
    unknown = sorted(set(queues) - {"jobs", "messaging"})
    if unknown:
        raise UsageError(f"unknown task queue(s): {', '.join(unknown)} (choose from jobs, messaging)")
    _configure_logging(s)
    if check:
        from workers.runner import check_dependencies

        problems = run(lambda: check_dependencies(s, database_url))
        for problem in problems:
            typer.echo(f"not ready: {problem}", err=True)
        if problems:
            raise typer.Exit(1)
        typer.echo("ready: Temporal and the database answer")
        return
    from workers.runner import run_worker_process

    run(lambda: run_worker_process(s, database_url, queues))


@app.command("twilio-emulator")
def twilio_emulator(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")] = 8089,
    rate_limit: Annotated[float | None, typer.Option(min=0.001, help="Messages per second before HTTP 429 (20429).")] = None,
    fail_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of creates answered 5xx.")] = 0.0,
    latency_ms: Annotated[int, typer.Option(min=0, help="Added latency per request.")] = 0,
) -> None:
    """Serve the Twilio Messages API emulator (dev and tests) until Ctrl-C."""
    from workers.twilio_emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, run as run_emulator

    s = settings()
    _configure_logging(s)
    sid = s.twilio_account_sid or DEFAULT_ACCOUNT_SID
    token = s.twilio_auth_token.get_secret_value() if s.twilio_auth_token else DEFAULT_AUTH_TOKEN
    typer.echo(f"Twilio emulator on http://127.0.0.1:{port} (account {sid})")
    run_emulator(port, rate_limit, fail_rate, latency_ms, sid, token)


@app.command("stripe-sandbox")
def stripe_sandbox(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1.")] = 8420,
) -> None:
    """Serve localstripe behind Stripe's idempotency rules (dev and tests) until Ctrl-C."""
    from workers.stripe_sandbox import run as run_sandbox

    _configure_logging(settings())
    typer.echo(f"Stripe sandbox on http://127.0.0.1:{port} (any sk_test_ key)")
    run_sandbox(port)


@app.command()
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
    _configure_logging(s)
    typer.echo(f"webhooks on http://{host}:{port}/webhooks/stripe and /webhooks/twilio/(status|inbound)")
    run(lambda: run_webhook_server(s, database_url, host, port))


@app.command("codec-server")
def codec_server(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8081,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Serve /encode and /decode so the Temporal UI shows decrypted payloads to token holders."""
    from workers.codec import EncryptionCodec
    from workers.codec_server import run as run_codec_server

    s = settings()
    if not s.payload_encryption_key:
        raise UsageError("PAYLOAD_ENCRYPTION_KEY is not set: there is nothing to decode")
    if not s.codec_server_token:
        raise UsageError("CODEC_SERVER_TOKEN is not set: the codec server never runs without a token")
    _configure_logging(s)
    origins = {o.strip() for o in s.codec_cors_origins.split(",") if o.strip()}
    typer.echo(f"codec server on http://{host}:{port} (UI origins: {', '.join(sorted(origins))})")
    run_codec_server(
        EncryptionCodec.from_setting(s.payload_encryption_key.get_secret_value()),
        s.codec_server_token.get_secret_value(),
        origins,
        host,
        port,
    )


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from workers import migrate as migrations

    migrations.upgrade(settings().require_database_url(), revision)
    typer.echo(f"database migrated to {revision}")


@app.command()
def seed(
    retailers: Annotated[
        int, typer.Option("--retailers", min=1, max=1_000_000, help="How many retailers to add (with orders and debts).")
    ] = 1000,
) -> None:
    """Add generated retailers with 60 days of orders and debts (for benchmarks)."""
    from activities.database import create_engine
    from workers.seed import seed_retailers

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


# --- schedules -------------------------------------------------------------------------------


@schedules_app.command("apply")
def schedules_apply() -> None:
    """Create or update every schedule in place (idempotent; a paused schedule stays paused)."""
    from workers import schedules
    from workers.temporal_client import connect

    s = settings()

    async def _apply() -> list[tuple[str, str]]:
        return await schedules.apply(await connect(s), s)

    for schedule_id, outcome in run(_apply):
        typer.echo(f"{schedule_id}: {outcome}")


@schedules_app.command("list")
def schedules_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show every schedule with its state and next run times."""
    from workers import schedules
    from workers.temporal_client import connect

    s = settings()

    async def _list() -> list[dict[str, Any]]:
        client = await connect(s)
        rows = []
        for definition in schedules.SCHEDULES:
            try:
                described = await client.get_schedule_handle(definition.schedule_id).describe()
            except Exception:  # noqa: BLE001 - not applied yet is a state, not an error
                rows.append({"id": definition.schedule_id, "state": "not applied", "next": []})
                continue
            rows.append(
                {
                    "id": definition.schedule_id,
                    "state": "paused" if described.schedule.state.paused else "active",
                    "note": described.schedule.state.note or "",
                    "next": [t.isoformat() for t in described.info.next_action_times[:3]],
                }
            )
        return rows

    rows = run(_list)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['id']:<26} {row['state']:<12} next: {', '.join(row['next']) or '-'}")


@schedules_app.command("trigger")
def schedules_trigger(schedule_id: Annotated[str, typer.Argument(help="Schedule id, e.g. insights-nightly.")]) -> None:
    """Run a schedule's action now."""
    from workers.temporal_client import connect

    _known_schedule(schedule_id)
    s = settings()

    async def _trigger() -> None:
        await (await connect(s)).get_schedule_handle(schedule_id).trigger()

    run(_trigger)
    typer.echo(f"triggered {schedule_id}")


def _known_schedule(schedule_id: str) -> str:
    from workers import schedules

    try:
        return schedules.by_id(schedule_id).schedule_id
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


@schedules_app.command("pause")
def schedules_pause(
    schedule_id: Annotated[str, typer.Argument(help="Schedule id.")],
    note: Annotated[str, typer.Option("--note", help="Why (shown in the UI).")] = "paused with jobctl",
) -> None:
    """Pause a schedule; `apply` keeps it paused until someone unpauses it."""
    from workers.temporal_client import connect

    _known_schedule(schedule_id)
    s = settings()

    async def _pause() -> None:
        await (await connect(s)).get_schedule_handle(schedule_id).pause(note=note)

    run(_pause)
    typer.echo(f"paused {schedule_id}: {note}")


@schedules_app.command("unpause")
def schedules_unpause(
    schedule_id: Annotated[str, typer.Argument(help="Schedule id.")],
    note: Annotated[str, typer.Option("--note")] = "unpaused with jobctl",
) -> None:
    """Resume a paused schedule."""
    from workers.temporal_client import connect

    _known_schedule(schedule_id)
    s = settings()

    async def _unpause() -> None:
        await (await connect(s)).get_schedule_handle(schedule_id).unpause(note=note)

    run(_unpause)
    typer.echo(f"unpaused {schedule_id}")


@schedules_app.command("backfill")
def schedules_backfill(
    schedule_id: Annotated[str, typer.Argument(help="Schedule id.")],
    start: Annotated[datetime, typer.Option("--from", help="Start (exclusive), e.g. 2026-11-01 or 2026-11-01T03:00:00.")],
    end: Annotated[datetime, typer.Option("--to", help="End (inclusive).")],
) -> None:
    """Run the actions a schedule would have taken between two times (e.g. after an outage)."""
    from temporalio.client import ScheduleBackfill, ScheduleOverlapPolicy

    from workers.temporal_client import connect

    _known_schedule(schedule_id)
    s = settings()
    start_at, end_at = (t if t.tzinfo else t.replace(tzinfo=s.tz) for t in (start, end))
    if end_at <= start_at:
        raise UsageError("--to must be after --from")

    async def _backfill() -> None:
        await (await connect(s)).get_schedule_handle(schedule_id).backfill(
            ScheduleBackfill(start_at=start_at, end_at=end_at, overlap=ScheduleOverlapPolicy.ALLOW_ALL)
        )

    run(_backfill)
    typer.echo(f"backfilling {schedule_id} from {start_at.isoformat()} to {end_at.isoformat()}")


# --- insights --------------------------------------------------------------------------------


@insights_app.command("run")
def insights_run(
    day: Annotated[
        datetime | None, typer.Option("--date", formats=["%Y-%m-%d"], help="Insight date (default: today).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
) -> None:
    """Regenerate every retailer's insight for a date now (workflow id insights/DATE)."""
    from schemas.insights import InsightsRequest, InsightsResult
    from workers.temporal_client import connect
    from workflows.insights import InsightsRegenerationWorkflow

    s = settings()
    insight_date: date = day.date() if day else datetime.now(s.tz).date()

    async def _run() -> InsightsResult | None:
        client = await connect(s)
        handle = await client.start_workflow(
            InsightsRegenerationWorkflow.run,
            InsightsRequest(insight_date=insight_date, business_timezone=s.business_timezone),
            id=f"insights/{insight_date.isoformat()}",
            task_queue=s.task_queue,
            static_summary=f"Insight regeneration for {insight_date.isoformat()} (manual)",
        )
        typer.echo(f"started {handle.id}")
        return await handle.result() if wait else None

    result = run(_run)
    if result:
        typer.echo(f"{result.retailers_done} retailers in {result.pages_done} pages")


# --- job families' own commands --------------------------------------------------------------

from workers.cli_orders import orders_app  # noqa: E402  (it imports this module lazily)

app.add_typer(orders_app, name="orders")

from workers.cli_churn import churn_app  # noqa: E402
from workers.cli_credit import credit_app, payments_app  # noqa: E402
from workers.cli_loyalty import loyalty_app  # noqa: E402

app.add_typer(credit_app, name="credit")
app.add_typer(payments_app, name="payments")
app.add_typer(churn_app, name="churn")
app.add_typer(loyalty_app, name="loyalty")


# --- entry point -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    code = _invoke(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _invoke(argv: list[str] | None) -> int:
    try:
        app(args=argv, prog_name="jobctl")
    except SystemExit as exc:  # typer/click report usage errors (exit 2) and --help this way
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SettingsError as exc:
        print(f"jobctl: invalid setting {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jobctl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence prints what failed
        print(f"jobctl: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    main()
