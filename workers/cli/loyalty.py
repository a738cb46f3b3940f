"""`jobctl loyalty retry|resolve|show ITEM` and `jobctl loyalty audit`: loyalty, for operators.

Registered by workers/cli.py, whose `main` flushes and leaves through `os._exit`
(docs/ARCHITECTURE.md §8). A signal that cannot apply (no such item, item already resolved) or a bad
argument is bad input: one clear line, exit 2.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer

from schemas.text import Reason, ShortText
from workers.cli.runner import UsageError, call, free_text, settings

T = TypeVar("T")

loyalty_app = typer.Typer(
    help="Loyalty: act on reconciliation items (retry, resolve, show) and run the integrity audit.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ItemArg = Annotated[
    int, typer.Argument(min=1, help="Reconciliation item id (loyalty_reconciliation_queue.id).", show_default=False)
]
ActorOpt = Annotated[
    str,
    typer.Option(
        "--actor",
        help="Who acts (an admin id, recorded on the item).",
        show_default=False,
        callback=free_text(ShortText),
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _call(action: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
    """Run one service call against Temporal (a refusal is exit 2, by the runner)."""
    return call(lambda c: action(c.client, *args, **kwargs), temporal=True)


def _actor(actor: str) -> str:
    actor = actor.strip()
    if not actor or len(actor) > 64:
        raise UsageError("--actor must be 1 to 64 characters")
    return actor


def _echo(as_json: bool, payload: dict[str, object], line: str) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else line)


@loyalty_app.command("retry")
def loyalty_retry(item_id: ItemArg, actor: ActorOpt, as_json: JsonOpt = False) -> None:
    """Signal `retry_now`: try ITEM again now (a fresh 24-hour window of retries)."""
    from services.loyalty import retry_now

    actor_id = _actor(actor)
    _call(retry_now, item_id, actor_id)
    _echo(
        as_json,
        {"item_id": item_id, "signal": "retry_now", "actor_id": actor_id},
        f"loyalty-reconcile/{item_id}: retry requested by {actor_id}",
    )


@loyalty_app.command("resolve")
def loyalty_resolve(
    item_id: ItemArg,
    actor: ActorOpt,
    note: Annotated[
        str,
        typer.Option(
            "--note", help="Why (stored with the resolution).", show_default=False, callback=free_text(Reason)
        ),
    ],
    points: Annotated[
        int | None,
        typer.Option("--points", help="Adjust the customer's points by this (+/-) through the ledger, once."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Signal `resolve_manually`: close ITEM by hand, recording who and why (optionally adjusting points)."""
    from services.loyalty import resolve_manually

    actor_id = _actor(actor)
    note = note.strip()
    if not note or len(note) > 500:
        raise UsageError("--note must be 1 to 500 characters")
    if points is not None and (points == 0 or abs(points) > 1_000_000_000):
        raise UsageError("--points must be non-zero, at most 1,000,000,000 either way")
    _call(resolve_manually, item_id, actor_id, note, points_adjustment=points)
    _echo(
        as_json,
        {"item_id": item_id, "signal": "resolve_manually", "actor_id": actor_id},
        f"loyalty-reconcile/{item_id}: resolution requested by {actor_id}",
    )


@loyalty_app.command("show")
def loyalty_show(item_id: ItemArg, as_json: JsonOpt = False) -> None:
    """Show ITEM's reconciliation: status, what it is doing, why it needs review."""
    from services.loyalty import reconciliation_status

    status = _call(reconciliation_status, item_id)
    line = f"loyalty-reconcile/{item_id}: {status.status or '-'} ({status.phase})"
    if status.resolution:
        line += f", {status.resolution}"
    if status.reason:
        line += f", reason: {status.reason}"
    _echo(as_json, status.model_dump(mode="json"), line)


@loyalty_app.command("audit")
def loyalty_audit(
    day: Annotated[
        datetime | None, typer.Option("--date", formats=["%Y-%m-%d"], help="Audit date (default: today).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the integrity audit now (loyalty-audit/DATE) and print every balance that differs from its ledger."""
    from services.loyalty import run_audit

    s = settings()
    audit_date = day.date() if day else datetime.now(s.tz).date()
    result = _call(run_audit, audit_date, business_timezone=s.business_timezone, task_queue=s.task_queue)
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    typer.echo(
        f"loyalty-audit/{audit_date.isoformat()}: {result.customers_checked} customers checked,"
        f" {result.discrepancy_count} with a balance that differs from their ledger"
    )
    if result.discrepancies:
        typer.echo(f"{'customer':>12} {'balance':>12} {'ledger sum':>12} {'difference':>12}")
        for d in result.discrepancies:
            typer.echo(f"{d.customer_id:>12} {d.balance:>12} {d.ledger_sum:>12} {d.difference:>+12}")
        if result.discrepancy_count > len(result.discrepancies):
            typer.echo(f"... and {result.discrepancy_count - len(result.discrepancies)} more")


@loyalty_app.command("items")
def loyalty_items(
    state: Annotated[str | None, typer.Option("--state", help="PENDING, RESOLVED or NEEDS_REVIEW.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="How many (oldest first).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List reconciliation items by state (NEEDS_REVIEW: the ones waiting for a person)."""
    from services.loyalty import list_items

    if state not in (None, "PENDING", "RESOLVED", "NEEDS_REVIEW"):
        raise UsageError(f"--state must be PENDING, RESOLVED or NEEDS_REVIEW (got {state!r})")
    rows = call(lambda c: list_items(c.engine, state=state, limit=limit), database=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    typer.echo(f"{'item':<8}{'customer':>9}  {'order':<24}{'status':<14}{'attempts':>9}  last error")
    for r in rows:
        typer.echo(
            f"{r['item_id']:<8}{r['customer_id']:>9}  {r['order_id']:<24}{r['status']:<14}{r['attempts']:>9}"
            f"  {r['last_error'] or ''}"
        )
