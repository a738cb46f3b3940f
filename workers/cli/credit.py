"""`jobctl credit ...` and `jobctl payments record`: what an admin does with retailers' credit.

Mounted by the credit family (workers/families/credit.py). Tables for people, `--json` for scripts. Bad input (a zero or
negative amount, a malformed reference, an unknown retailer) is one clear line and exit 2, and
nothing changes. The admin actions are `services.credit_admin`'s, the functions the HTTP API calls:
a pause, unpause or block tells the retailer, adjustments and limits re-check a system pause; Temporal
is reached only once a change is made (`temporal="lazy"`).
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

import typer

from schemas import text
from schemas.money import format_money
from workers.cli.runner import UsageError, call, configure_logging, echo, free_text, settings

credit_app = typer.Typer(
    help="Credit: pause, unpause or block a retailer; limits, adjustments, credit orders; the risk view; a profile.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
payments_app = typer.Typer(
    help="Payments: record one (oldest debits first).", no_args_is_help=True, rich_markup_mode=None
)

RetailerArg = Annotated[int, typer.Argument(min=1, help="Retailer id (retailers.id).", show_default=False)]
Reason = Annotated[
    str,
    typer.Option(
        "--reason", help="Why (stored in the audit log).", show_default=False, callback=free_text(text.Reason)
    ),
]
Actor = Annotated[
    str,
    typer.Option(
        "--actor",
        help="The admin acting (stored in the audit log).",
        show_default=False,
        callback=free_text(text.Actor),
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AdminVerb = Literal["pause", "unpause", "block"]
REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{2,99}$")


def _amount(raw: str, flag: str, *, signed: bool = False, zero: bool = False) -> Decimal:
    """A money amount with at most 2 decimals: > 0 (>= 0 with `zero`; != 0 when `signed`)."""
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise UsageError(f"{flag} {raw!r} is not a number") from None
    if not value.is_finite():
        raise UsageError(f"{flag} {raw!r} is not a number")
    if signed and value == 0:
        raise UsageError(f"{flag} must be non-zero (got {raw})")
    if not signed and (value < 0 if zero else value <= 0):
        raise UsageError(f"{flag} must be {'zero or more' if zero else 'positive'} (got {raw})")
    if value.as_tuple().exponent < -2:  # type: ignore[operator]
        raise UsageError(f"{flag} has more than 2 decimals ({raw})")
    if abs(value) >= Decimal("1e12"):
        raise UsageError(f"{flag} is too large ({raw})")
    return value


def _admin(action: AdminVerb, retailer_id: int, reason: str, actor: str, as_json: bool) -> None:
    from services.credit_admin import change_status

    if not reason.strip() or not actor.strip():
        raise UsageError("--reason and --actor must not be empty")
    configure_logging(settings())  # on stderr, masked: `--json` stays one document
    change = call(
        lambda c: change_status(c.engine, c.client, c.settings, retailer_id, action, reason=reason, actor=actor),
        database=True,
        temporal="lazy",
    )
    if as_json:
        echo(True, change.__dict__)
        return
    typer.echo(f"retailer {retailer_id}: {change.old_status} -> {change.new_status} (audit #{change.audit_id})")
    if change.notice_workflow_id:
        typer.echo(f"  retailer told ({change.notice_workflow_id}; quiet hours may hold it)")
    else:
        typer.echo("  the retailer was NOT told: Temporal was unreachable (see the log)", err=True)


def _reference(reference: str | None, verb: str) -> str:
    """A money command's reference: required, so running the command again (after a timeout, from
    the shell's history) finds the first row instead of writing a second one."""
    if reference is None:
        raise UsageError(f"--reference is required: the same reference twice {verb} once, so a re-run writes nothing")
    if not REFERENCE.match(reference):
        raise UsageError("--reference must be 3-100 letters, digits or _ . : - (starting with a letter or digit)")
    return reference


@credit_app.command("pause")
def credit_pause(retailer_id: RetailerArg, reason: Reason, actor: Actor, as_json: Json = False) -> None:
    """Pause RETAILER's credit (COD only). An admin pause is never lifted by a payment; pausing a
    retailer the system paused makes the pause this admin's."""
    _admin("pause", retailer_id, reason, actor, as_json)


@credit_app.command("unpause")
def credit_unpause(retailer_id: RetailerArg, reason: Reason, actor: Actor, as_json: Json = False) -> None:
    """Lift RETAILER's pause or block (whoever made it)."""
    _admin("unpause", retailer_id, reason, actor, as_json)


@credit_app.command("block")
def credit_block(retailer_id: RetailerArg, reason: Reason, actor: Actor, as_json: Json = False) -> None:
    """Block RETAILER: no orders, no reminders, never lifted automatically."""
    _admin("block", retailer_id, reason, actor, as_json)


@credit_app.command("limits")
def credit_limits(
    retailer_id: RetailerArg,
    actor: Actor,
    credit_limit: Annotated[str | None, typer.Option("--credit-limit", help="Total credit, >= 0.")] = None,
    max_order_value: Annotated[str | None, typer.Option("--max-order-value", help="Largest credit order, > 0.")] = None,
    max_outstanding_days: Annotated[
        int | None, typer.Option("--max-outstanding-days", help="Days overdue before the system pauses, >= 0.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (stored in the audit log).", callback=free_text(text.Reason))
    ] = None,
    as_json: Json = False,
) -> None:
    """Change RETAILER's credit limit, maximum order value or overdue limit (audited); a system pause
    the new limits clear lifts at once (Temporal needed then)."""
    from services.credit_admin import set_limits

    limits: dict[str, object] = {}
    if credit_limit is not None:
        limits["credit_limit"] = _amount(credit_limit, "--credit-limit", zero=True)
    if max_order_value is not None:
        limits["max_order_value"] = _amount(max_order_value, "--max-order-value")
    if max_outstanding_days is not None:
        if not 0 <= max_outstanding_days <= 3650:
            raise UsageError(f"--max-outstanding-days must be 0 to 3650 (got {max_outstanding_days})")
        limits["max_outstanding_days"] = max_outstanding_days
    if not limits:
        raise UsageError("give at least one of --credit-limit, --max-order-value, --max-outstanding-days")
    if not actor.strip():
        raise UsageError("--actor must not be empty")
    configure_logging(settings())
    change = call(
        lambda c: set_limits(c.engine, c.client, c.settings, retailer_id, limits, actor=actor, reason=reason),
        database=True,
        temporal="lazy",
    )
    if as_json:
        echo(True, change.__dict__)
        return
    for key, value in change.new.items():
        typer.echo(f"retailer {retailer_id}: {key} {change.old[key]} -> {value}")
    typer.echo(f"(audit #{change.audit_id})")
    if change.credit_resumed:
        typer.echo("  credit resumed: the system's pause no longer applies")


@credit_app.command("adjust")
def credit_adjust(
    retailer_id: RetailerArg,
    amount: Annotated[
        str,
        typer.Option(
            "--amount",
            help="+A in the retailer's favour (return, write-off, dispute won); -A a charge.",
            show_default=False,
        ),
    ],
    reason: Reason,
    actor: Actor,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Required: the same reference twice adjusts once (a re-run changes nothing)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Record an adjustment as a ledger row: +A clears the oldest debits (the rest is credit balance) and
    re-checks a system pause at once (Temporal needed then); -A is a debit due today."""
    from services.credit_admin import adjust

    value = _amount(amount, "--amount", signed=True)
    if not reason.strip():
        raise UsageError("--reason must not be empty: say why (return, dispute, write-off, ...)")
    if not actor.strip():
        raise UsageError("--actor must not be empty")
    ref = _reference(reference, "adjusts")
    configure_logging(settings())
    result = call(
        lambda c: adjust(
            c.engine,
            c.client,
            c.settings,
            retailer_id,
            value,
            reason=reason,
            actor=actor,
            reference=ref,
            today=datetime.now(c.settings.tz).date(),
        ),
        database=True,
        temporal="lazy",
    )
    resumed = result.credit_resumed
    if as_json:
        echo(True, result.__dict__)
        return
    m = result.money
    if result.duplicate:
        typer.echo(f"{result.reference}: already recorded ({m(result.amount)}); the ledger is unchanged")
    else:
        sign = "+" if result.amount > 0 else ""
        typer.echo(f"{result.reference}: {sign}{m(result.amount)} for retailer {retailer_id}")
        for a in result.cleared:
            typer.echo(f"  debit {a['debit_id']}: {m(a['allocated'])} -> {a['status']}")
        if result.credit_balance_added:
            typer.echo(f"  credit balance +{m(result.credit_balance_added)}")
    if resumed:
        typer.echo("  credit resumed: the system's pause no longer applies")


_PAYMENT_MODES: dict[str, Literal["CREDIT", "COD"]] = {"CREDIT": "CREDIT", "COD": "COD"}


@credit_app.command("order")
def credit_order(
    retailer_id: RetailerArg,
    amount: Annotated[str, typer.Option("--amount", help="The order's total.", show_default=False)],
    order: Annotated[
        int,
        typer.Option(
            "--order", min=1, help="The order id (orders.id); the same one twice places once.", show_default=False
        ),
    ],
    mode: Annotated[str, typer.Option("--mode", help="CREDIT or COD.", case_sensitive=False)] = "CREDIT",
    as_json: Json = False,
) -> None:
    """Place ORDER for RETAILER: the seed's rules; on CREDIT, its debit (due after the account's terms)."""
    from services.credit import place_order

    value = _amount(amount, "--amount")
    payment_mode = _PAYMENT_MODES.get(mode.upper())
    if payment_mode is None:
        raise UsageError(f"--mode must be CREDIT or COD (got {mode})")
    placed = call(
        lambda c: place_order(
            c.engine, retailer_id, order, value, payment_mode, today=datetime.now(c.settings.tz).date()
        ),
        database=True,
    )
    if as_json:
        echo(True, placed.as_dict())
        return
    what = f"debit {placed.debit_id} due {placed.due_date}" if placed.debit_id else "no debit (cash on delivery)"
    again = " (placed before; nothing changed)" if placed.duplicate else ""
    m = placed.money
    typer.echo(f"order {order}: {placed.payment_mode} {m(placed.amount)} for retailer {retailer_id}: {what}{again}")
    typer.echo(f"  available credit {m(placed.available_credit)}")


@credit_app.command("risk")
def credit_risk(as_json: Json = False) -> None:
    """Receivables by aging bucket, and the retailers within 5 days of crossing their overdue limit."""
    from activities.credit.admin import risk_view

    view = call(lambda c: risk_view(c.engine, datetime.now(c.settings.tz).date()), database=True)
    if as_json:
        echo(True, {"today": view.today, "buckets": view.buckets, "at_risk": view.at_risk})
        return
    typer.echo(f"receivables on {view.today}")
    typer.echo(f"{'days overdue':<14}{'debits':>8}{'retailers':>11}{'outstanding':>20}")
    for b in view.buckets:
        owed = format_money(b["outstanding"], b["currency"])
        typer.echo(f"{b['bucket']:<14}{b['debits']:>8}{b['retailers']:>11}{owed:>20}")
    typer.echo(f"\nat risk (within 5 days of their limit): {len(view.at_risk)}")
    if view.at_risk:
        typer.echo(f"{'retailer':<10}{'days overdue':>14}{'limit':>7}{'days left':>11}{'outstanding':>20}")
        for r in view.at_risk:
            typer.echo(
                f"{r['retailer_id']:<10}{r['days_overdue']:>14}{r['max_outstanding_days']:>7}"
                f"{r['days_left']:>11}{format_money(r['outstanding'], r['currency'], r['locale']):>20}"
            )


@credit_app.command("profile")
def credit_profile(retailer_id: RetailerArg, as_json: Json = False) -> None:
    """RETAILER's credit: status, limits, open debits, recent audit (amounts in its account's currency)."""
    from activities.credit.admin import profile

    p = call(lambda c: profile(c.engine, retailer_id, datetime.now(c.settings.tz).date()), database=True)
    if as_json:
        echo(True, p)
        return
    paused = f" since {p['paused_at']:%Y-%m-%d} by {p['paused_by']}: {p['pause_reason']}" if p["paused_at"] else ""
    typer.echo(f"retailer {p['retailer_id']}: {p['credit_status']}{paused}  ({p['currency']}, {p['locale']})")

    def m(amount: Decimal) -> str:  # in the account's currency, as the retailer's locale writes it
        return format_money(amount, p["currency"], p["locale"])

    typer.echo(
        f"limit {m(p['credit_limit'])}  available {m(p['available_credit'])}  outstanding {m(p['outstanding'])}"
        f"  max overdue {p['max_outstanding_days']} days  max order {m(p['max_order_value'])}"
    )
    if p["credit_balance"]:
        typer.echo(f"credit balance {m(p['credit_balance'])} (paid ahead: clears the next debits)")
    if p["payment_link"]:
        link = p["payment_link"]
        sent = f"sent {link['sent_at']:%Y-%m-%d %H:%M}" if link["sent_at"] else "not sent yet"
        typer.echo(f"last payment link {link['url']} ({m(link['amount'])}, {sent})")
    for sp in p["stripe_payments"]:
        returned = f", {m(sp['refunded_amount'])} given back" if sp["refunded_amount"] else ""
        disputed = f", DISPUTED ({sp['dispute_id']})" if sp["disputed"] else ""
        typer.echo(f"stripe payment {sp['reference']} {m(sp['amount'])}{returned}{disputed}")
    typer.echo(f"\n{'debit':<8}{'due':<12}{'amount':>14}{'paid':>14}{'status':>16}{'overdue':>9}{'reminders':>11}")
    for d in p["open_debits"]:
        typer.echo(
            f"{d['id']:<8}{d['due_date']!s:<12}{m(d['amount']):>14}{m(d['cleared_amount']):>14}"
            f"{d['status']:>16}{d['days_overdue']:>9}{d['reminders']:>11}"
        )
    typer.echo("\nrecent audit:")
    for a in p["recent_audit"]:
        typer.echo(f"  {a['at']:%Y-%m-%d %H:%M}  {a['action']:<22} {a['by']:<12} {a['reason'] or ''}")


@payments_app.command("record")
def payments_record(
    retailer: Annotated[int, typer.Option("--retailer", min=1, help="Retailer id.", show_default=False)],
    amount: Annotated[str, typer.Option("--amount", help="Amount paid, e.g. 1250.50.", show_default=False)],
    actor: Actor,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Required: the bank or receipt reference; the same one twice records once."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Record a payment: allocated to the oldest open debits, then the retailer's guardrails re-checked."""
    from activities.credit.admin import retailer_exists
    from schemas.credit import RecordPayment
    from services.credit import record_payment

    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise UsageError(f"--amount {amount!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise UsageError(f"--amount must be positive (got {amount})")
    if value.as_tuple().exponent < -2:  # type: ignore[operator]
        raise UsageError(f"--amount has more than 2 decimals ({amount})")
    if not actor.strip():
        raise UsageError("--actor must not be empty")
    reference = _reference(reference, "records")
    if not call(lambda c: retailer_exists(c.engine, retailer), database=True):
        raise UsageError(f"no retailer {retailer}")
    s = settings()
    payment = RecordPayment(
        retailer_id=retailer,
        amount=value,
        reference=reference,
        actor=actor,
        business_timezone=s.business_timezone,
        messaging_task_queue=s.messaging_task_queue,
    )

    result = call(lambda c: record_payment(c.client, payment, task_queue=s.task_queue), temporal=True)
    if as_json:
        echo(True, result.model_dump(mode="json"))
        return
    recorded = result.payment

    def m(amount: Decimal) -> str:
        return format_money(amount, recorded.currency)

    if recorded.duplicate:
        typer.echo(f"payment/{retailer}/{payment.reference}: already recorded ({m(recorded.amount)}); nothing changed")
        return
    typer.echo(f"payment/{retailer}/{payment.reference}: {m(recorded.amount)} recorded for retailer {retailer}")
    for a in recorded.allocations:
        typer.echo(f"  debit {a.debit_id}: {m(a.allocated)} -> {a.status}")
    if recorded.unallocated:
        typer.echo(f"  unallocated (credit balance): {m(recorded.unallocated)}")
    if result.guardrails.resumed:
        typer.echo("  credit resumed: the system's pause no longer applies")
        # Answered before the retailer's message (issue #33): quiet hours or the brake may hold it.
        typer.echo(f"  the retailer is told by {result.workflow_id} (after quiet hours or the brake, if they hold it)")
