"""`jobctl churn open|nudge|recovered|cancelled|incentive|show`: an operator's hands on a case.

Mounted by the churn family (workers/families/churn.py). Every command names its tenant with
`--company C` (required): a case id of another company is refused (exit 2), as is an unknown case
or membership, or a case that has ended.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from schemas import ids
from schemas.text import Actor as ActorText
from schemas.text import Reason, ShortText
from workers.cli.runner import Context, UsageError, call, free_text

churn_app = typer.Typer(
    help="Churn cases: open one, nudge by hand, end it, apply an incentive, show it.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

CaseArg = Annotated[int, typer.Argument(min=1, help="Case id (recovery_cases.id).", show_default=False)]
Actor = Annotated[
    str,
    typer.Option(
        "--actor", help="The operator acting (stored hashed).", show_default=False, callback=free_text(ActorText)
    ),
]
_COMPANY = typer.Option(
    "--company",
    help="The company (tenant) the case belongs to; another's case is refused.",
    show_default=False,
    callback=free_text(ShortText),
)
Company = Annotated[str, _COMPANY]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@churn_app.command("open")
def churn_open(
    membership: Annotated[int, typer.Option("--membership", min=1, help="Membership id.", show_default=False)],
    company: Company,
) -> None:
    """Open a case for MEMBERSHIP (or find its open one) and start its workflow."""
    from services.churn import start_case

    case_id = call(
        lambda c: start_case(c.client, c.engine, c.settings, membership, "manual", company_id=company),
        temporal=True,
        database=True,
    )
    typer.echo(f"{ids.churn_case(case_id)}: open")


@churn_app.command("nudge")
def churn_nudge(
    case_id: CaseArg,
    actor: Actor,
    company: Company,
    channel: Annotated[str | None, typer.Option("--channel", help="whatsapp or sms (default: the member's).")] = None,
    note: Annotated[
        str | None,
        typer.Option("--note", help="Why (for your own records: not kept anywhere).", callback=free_text(Reason)),
    ] = None,
) -> None:
    """Signal `manual_nudge`: nudge the member now (the company's cap and quiet hours still apply)."""
    from pydantic import ValidationError

    from schemas.churn import ManualNudge
    from services.churn import manual_nudge

    if channel not in (None, "whatsapp", "sms"):
        raise UsageError(f"--channel must be whatsapp or sms (got {channel!r})")
    try:
        nudge = ManualNudge(actor_id=actor, channel=channel, note=note, company_id=company)  # type: ignore[arg-type]
    except ValidationError as error:
        raise UsageError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())) from None
    call(lambda c: manual_nudge(c.client, c.engine, case_id, nudge), temporal=True, database=True)
    typer.echo(f"{ids.churn_case(case_id)}: manual_nudge sent")


def _end(case_id: int, signal: str, actor: str, company: str) -> None:
    from services.churn import signal_case

    call(
        lambda c: signal_case(c.client, c.engine, case_id, signal, {"actor_id": actor}, company_id=company),
        temporal=True,
        database=True,
    )
    typer.echo(f"{ids.churn_case(case_id)}: {signal} sent")


@churn_app.command("recovered")
def churn_recovered(case_id: CaseArg, actor: Actor, company: Company) -> None:
    """Signal `recovered`: the member is back; the case ends."""
    _end(case_id, "recovered", actor, company)


@churn_app.command("cancelled")
def churn_cancelled(case_id: CaseArg, actor: Actor, company: Company) -> None:
    """Signal `cancelled`: the member left; the case ends."""
    _end(case_id, "cancelled", actor, company)


@churn_app.command("incentive")
def churn_incentive(
    case_id: CaseArg,
    actor: Actor,
    days: Annotated[int, typer.Option("--days", help="Days to extend the subscription by (1-90).", show_default=False)],
    company: Company,
) -> None:
    """Update `apply_incentive`: extend the subscription once; prints the new period end."""
    from temporalio.client import WorkflowUpdateFailedError

    from schemas.churn import ApplyIncentive
    from schemas.errors import failure_reason
    from services.churn import ensure_owned
    from workflows.churn import ChurnCaseWorkflow

    async def apply(c: Context) -> Any:
        await ensure_owned(c.engine, case_id, company)
        handle = c.client.get_workflow_handle(ids.churn_case(case_id))
        request = ApplyIncentive(actor_id=actor, days=days, company_id=company)
        update = ChurnCaseWorkflow.apply_incentive  # decodes UnscopedApplyIncentive, this scoped one's subclass
        return await handle.execute_update(update, request)  # type: ignore[arg-type]  # scoped on purpose, see above

    try:
        period_end = call(apply, temporal=True, database=True)
    except WorkflowUpdateFailedError as error:  # the real reason, not "Activity task failed" (issue #33)
        raise UsageError(failure_reason(error.cause)[0]) from None
    typer.echo(f"{ids.churn_case(case_id)}: incentive applied, next billing {period_end}")


@churn_app.command("show")
def churn_show(case_id: CaseArg, company: Company, as_json: Json = False) -> None:
    """The case's status (running: asked of its workflow; ended: its result)."""
    from schemas.churn import CaseStatus
    from services.churn import ensure_owned
    from workflows.churn import ChurnCaseWorkflow

    async def show(c: Context) -> CaseStatus:
        await ensure_owned(c.engine, case_id, company)
        handle = c.client.get_workflow_handle(ids.churn_case(case_id), result_type=CaseStatus)
        described = await handle.describe()
        if described.status is not None and described.status.name == "RUNNING":
            return await handle.query(ChurnCaseWorkflow.status)
        return await handle.result()

    status = call(show, temporal=True, database=True)
    if as_json:
        typer.echo(json.dumps(status.model_dump(mode="json"), indent=2))
        return
    typer.echo(
        f"{ids.churn_case(case_id)}: {status.status}, {status.attempts} nudges ({status.manual_nudges} manual)"
        + (f", next {status.next_nudge_at:%Y-%m-%d %H:%M} UTC" if status.next_nudge_at else "")
        + (", incentive applied" if status.incentive_applied else "")
    )
    if status.last_refusal:  # a refused signal's only trace beside the worker's log (issue #33)
        typer.echo(f"  last refused signal: {status.last_refusal} at {status.last_refusal_at:%Y-%m-%d %H:%M:%S} UTC")


@churn_app.command("cases")
def churn_cases(
    status: Annotated[str | None, typer.Option("--status", help="OPEN, RECOVERED, CANCELLED or TERMINATED.")] = None,
    membership: Annotated[int | None, typer.Option("--membership", min=1, help="Only this membership's cases.")] = None,
    company: Annotated[str | None, _COMPANY] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="How many (newest first).")] = 50,
    as_json: Json = False,
) -> None:
    """List cases, newest first, by status, member and company."""
    from activities.churn.admin import list_cases

    if status not in (None, "OPEN", "RECOVERED", "CANCELLED", "TERMINATED"):
        raise UsageError(f"--status must be OPEN, RECOVERED, CANCELLED or TERMINATED (got {status!r})")
    rows = call(
        lambda c: list_cases(c.engine, company_id=company, status=status, membership_id=membership, limit=limit),
        database=True,
    )
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    typer.echo(f"{'case':<8}{'company':<16}{'membership':>11}  {'status':<11}{'trigger':<22}{'nudges':>7}  opened")
    for r in rows:
        typer.echo(
            f"{r['case_id']:<8}{r['company_id']:<16}{r['membership_id']:>11}  {r['status']:<11}{r['trigger']:<22}"
            f"{r['attempts']:>7}  {r['opened_at']:%Y-%m-%d %H:%M}"
        )


@churn_app.command("settings")
def churn_settings(
    company: Annotated[str, typer.Argument(help="The company's id (slug).", show_default=False)], as_json: Json = False
) -> None:
    """COMPANY's churn rules: offsets, channels, incentive days, quiet hours, cap, grace, time zone."""
    from activities.churn.admin import company_settings

    found = call(lambda c: company_settings(c.engine, company), database=True)
    if found is None:
        raise UsageError(f"no company {company}")
    if as_json:
        typer.echo(json.dumps({"company_id": company, **found.model_dump()}, indent=2))
        return
    for name, value in found.model_dump().items():
        typer.echo(f"{name:<24}{value}")
