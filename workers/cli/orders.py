"""`jobctl orders start|complete|fail|show ORDER`: an order's clock, for operators and demos.

Registered by workers/cli.py (`app.add_typer(orders_app, name="orders")`), whose `main` flushes
and leaves through `os._exit` (docs/ARCHITECTURE.md §8). A start, signal or lookup that cannot apply
(unknown order, order already settled) is bad input: one clear line, exit 2.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, TypeVar

import typer

from schemas.money import format_money
from schemas.text import Reason
from workers.cli.runner import UsageError, call, free_text, settings

T = TypeVar("T")

orders_app = typer.Typer(
    help="Pending orders: start, complete, fail or show an order's 24-hour clock.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

OrderArg = Annotated[int, typer.Argument(min=1, help="Order id (orders.id).", show_default=False)]


def _call(action: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
    """Run one service call against Temporal (a refusal is exit 2, by the runner)."""
    return call(lambda c: action(c.client, *args, **kwargs), temporal=True)


@orders_app.command("start")
def orders_start(
    order_id: OrderArg,
    follow_up_after: Annotated[
        float | None, typer.Option("--follow-up-after", min=1, help="Seconds before the follow-up (default 2 h).")
    ] = None,
    ttl: Annotated[
        float | None, typer.Option("--ttl", min=1, help="Seconds until expiry for a new row (default 24 h).")
    ] = None,
) -> None:
    """Start ORDER's clock (idempotent: a running clock is reused)."""
    from activities.messaging.outbox import QuietHours
    from schemas.orders import ORDER_TTL, PendingOrderInput
    from services.orders import start_pending_order

    s = settings()
    order = PendingOrderInput(
        order_id=order_id,
        messaging_task_queue=s.messaging_task_queue,
        follow_up_after=timedelta(seconds=follow_up_after) if follow_up_after else s.order_followup_after,
        ttl=timedelta(seconds=ttl) if ttl else ORDER_TTL,
    )
    quiet_hours = QuietHours(s.quiet_hours_start, s.quiet_hours_end)
    status = call(
        lambda c: start_pending_order(c.client, c.engine, order, task_queue=s.task_queue, quiet_hours=quiet_hours),
        temporal=True,
        database=True,
    )
    typer.echo(
        f"pending-order/{order_id}: {status.state}, follow-up due {_at(status.follow_up_at)},"
        f" expires {_at(status.expires_at)}"
    )


@orders_app.command("complete")
def orders_complete(order_id: OrderArg) -> None:
    """Signal `completed`: COMPLETED, or RECOVERED if the follow-up went out first."""
    from services.orders import complete_order

    _call(complete_order, order_id, actor_id="jobctl")
    typer.echo(f"pending-order/{order_id}: completed")


@orders_app.command("fail")
def orders_fail(
    order_id: OrderArg,
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="Why the order failed (stored on the order).",
            show_default=False,
            callback=free_text(Reason),
        ),
    ],
) -> None:
    """Signal `failed`: fail ORDER, reverse its credit debit and tell the retailer."""
    from services.orders import fail_order

    reason = reason.strip()
    if not reason or len(reason) > 500:
        raise UsageError("--reason must be 1 to 500 characters")
    s = settings()
    late = _call(fail_order, order_id, reason, task_queue=s.task_queue, messaging_task_queue=s.messaging_task_queue)
    if late is None:
        typer.echo(f"pending-order/{order_id}: failed ({reason})")
    elif late.changed:
        typer.echo(
            f"order-failure/{order_id}: failed after its clock ended ({reason});"
            f" reversed {format_money(late.reversed_amount or 0, late.currency or 'USD')};"
            f" the retailer is told by order-failure/{order_id}"
        )
    else:
        typer.echo(f"order-failure/{order_id}: already failed; nothing changed")


@orders_app.command("show")
def orders_show(order_id: OrderArg, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show ORDER's clock: state, follow-up, expiry."""
    from services.orders import order_status

    status = _call(order_status, order_id)
    if as_json:
        typer.echo(json.dumps(status.model_dump(mode="json"), indent=2))
        return
    sent = f"sent {_at(status.follow_up_sent_at)}" if status.follow_up_sent_at else f"due {_at(status.follow_up_at)}"
    typer.echo(f"pending-order/{order_id}: {status.state}, follow-up {sent}, expires {_at(status.expires_at)}")


def _at(instant: object) -> str:
    return instant.isoformat(timespec="seconds") if hasattr(instant, "isoformat") else "-"
