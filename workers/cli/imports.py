"""`jobctl import KIND FILE`: bulk import of a CSV or JSON-lines file (`services.imports`).

Exit codes: 0 every row imported (or unchanged, or skipped as not for jobctl); 1 some rows were
refused (the good ones are imported; each refused line is listed, `--report` writes them as CSV);
2 a bad invocation (unknown kind or mapping, unreadable file, bad header): one line, nothing
written. Ctrl-C stops after the batch in flight commits and says how to resume (the same command).
"""

from __future__ import annotations

import asyncio
import csv
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from workers.cli.runner import Context, call, settings

imports_app = typer.Typer(rich_markup_mode=None)

KIND_HELP = (
    "retailers, credit_accounts, credit_transactions, orders, companies, memberships, recovery_cases,"
    " customers or loyalty_balances."
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"jobctl import: {message}", err=True)
    return typer.Exit(2)


@imports_app.command("import")
def import_command(
    kind: Annotated[str, typer.Argument(help=KIND_HELP, show_default=False)],
    file: Annotated[Path, typer.Argument(help="A .csv (header line) or .jsonl file.", show_default=False)],
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv or jsonl (default: by the file's extension).")
    ] = None,
    mapping: Annotated[
        str,
        typer.Option(
            "--mapping",
            help="The file's shape: jobctl (the fields' own names), seed001 (Prisma retailer, credit account,"
            " transaction and order exports), seed003 (memberships, recovery_cases), seed004 (customers and"
            " their loyalty_points).",
        ),
    ] = "jobctl",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per transaction (and checkpoint).")] = 1000,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and write in a transaction that is rolled back; no checkpoint.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the refused rows here (CSV: line, field, reason).")
    ] = None,
    actor: Annotated[str, typer.Option("--actor", help="Who imports (the audit rows' actor).")] = "import",
) -> None:
    """Import a file of KIND rows: streamed in batches, resumable, every refused row reported by line."""
    from services.imports import BadImport, ImportRequest, Summary, import_file, resolve

    request = ImportRequest(
        kind=kind,
        path=file,
        format=file_format,
        mapping=mapping,
        batch_size=batch_size,
        dry_run=dry_run,
        actor=actor,
    )
    try:
        resolve(request)  # a bad invocation needs no settings, database or Temporal
    except BadImport as error:
        raise _fail(str(error)) from None

    from workers.log import configure_logging

    # The summary is the output; the writers' per-batch log lines would bury it (warnings stay, on stderr).
    configure_logging(settings().log_format, "WARNING")
    stopping = asyncio.Event()

    async def action(ctx: Context) -> Summary:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, _stop_soon, stopping)

        async def client() -> Any:
            return ctx.client

        return await import_file(
            request,
            engine=ctx.engine,
            settings=ctx.settings,
            client=client,
            stop=stopping.is_set,
            progress=_progress if sys.stderr.isatty() else lambda _: None,
        )

    try:
        summary = call(action, temporal="lazy", database=True)
    except BadImport as error:
        raise _fail(str(error)) from None
    _print(summary)
    if report is not None:
        with report.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["line", "field", "reason"])
            writer.writerows([r.line, r.field or "", r.reason] for r in summary.refusals)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.refusals or summary.refused:
        raise typer.Exit(1)


def _stop_soon(stopping: asyncio.Event) -> None:
    if not stopping.is_set():
        typer.echo("jobctl import: stopping after the batch in flight commits...", err=True)
    stopping.set()


def _progress(summary: Any) -> None:
    typer.echo(f"  line {summary.lines_done}: {summary.imported} imported, {summary.refused} refused", err=True)


def _print(s: Any) -> None:
    what = f"{s.kind} from {s.source} (mapping {s.mapping})"
    if s.already_finished:
        typer.echo(
            f"{what}: imported before (run {s.run_id[:40]}...): {s.total_imported} imported, {s.total_refused}"
            " refused; nothing to do"
        )
    else:
        prefix = "dry run, nothing written: " if s.dry_run else ""
        resumed = f" (resumed after line {s.resumed_from})" if s.resumed_from else ""
        typer.echo(
            f"{prefix}{what}{resumed}: {s.imported} imported ({s.created} new, {s.changed} updated,"
            f" {s.unchanged} unchanged), {s.refused} refused, {s.skipped} skipped"
        )
        for reason, count in sorted(s.skips.items()):
            typer.echo(f"skipped {count}: {reason}")
    for refusal in s.refusals:
        typer.echo(f"line {refusal.line}: {refusal.field or '-'}: {refusal.reason}")
    if s.interrupted:
        typer.echo(
            f"interrupted after line {s.lines_done} (committed); run the same command again to finish the file",
            err=True,
        )
    elif s.refusals or s.refused:
        count = len(s.refusals) or s.refused
        rest = "would be imported" if s.dry_run else "were imported"
        typer.echo(f"{count} row{'s' if count != 1 else ''} refused (listed above); the other rows {rest}")
