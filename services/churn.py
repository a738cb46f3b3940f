"""Opening and steering churn cases from outside a workflow: the CLI and the Stripe webhook.

Opening is idempotent twice over: the database keeps one OPEN case per membership, and the
case's workflow id (`churn-case/{case_id}`) is started with signal-with-start semantics
(a running case is reused).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.churn.cases import CaseRefused, case_company, membership_by_stripe, open_case
from schemas import ids
from schemas import search_attributes
from schemas.churn import ApplyIncentive, CaseStatus, ChurnCaseInput, ManualNudge, NudgeOutcome
from config.settings import Settings
from services import StripeHandler
from workflows.churn import ChurnCaseWorkflow

log = structlog.get_logger(__name__)


def manage_link(settings: Settings) -> str:
    return f"{(settings.pay_page_base_url or 'https://billing.example.com').rstrip('/')}/membership"


async def start_case(
    client: Client, engine: AsyncEngine, settings: Settings, membership_id: int, trigger: str,
    *, company_id: str | None = None, signal: str | None = None,
) -> int:
    """Open (or find) the membership's case and make sure its workflow runs; returns the case id."""
    case_id, company, _ = await open_case(engine, membership_id, trigger, company_id)
    args = ChurnCaseInput(
        case_id=case_id, company_id=company, manage_link=manage_link(settings),
        messaging_task_queue=settings.messaging_task_queue,
    )
    await client.start_workflow(
        ChurnCaseWorkflow.run,
        args,
        id=ids.churn_case(case_id),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal=signal,
        search_attributes=TypedSearchAttributes([
            SearchAttributePair(search_attributes.COMPANY_ID, company),
            SearchAttributePair(search_attributes.CASE_STATUS, "OPEN"),
        ]),
        static_summary=f"Churn case {case_id} (membership {membership_id}, company {company}, {trigger})",
    )
    return case_id


async def ensure_owned(engine: AsyncEngine, case_id: int, company_id: str | None) -> None:
    owner = await case_company(engine, case_id)
    if owner is None:
        raise CaseRefused(f"no churn case {case_id}")
    if company_id is not None and owner != company_id:
        raise CaseRefused(f"case {case_id} does not belong to company {company_id}")


async def signal_case(client: Client, engine: AsyncEngine, case_id: int, signal: str, payload: Any, *, company_id: str | None = None) -> None:
    await ensure_owned(engine, case_id, company_id)
    try:
        await client.get_workflow_handle(ids.churn_case(case_id)).signal(signal, payload)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise CaseRefused(f"case {case_id} has no running workflow (it has ended)") from None
        raise


async def manual_nudge(client: Client, engine: AsyncEngine, case_id: int, nudge: ManualNudge) -> None:
    await signal_case(client, engine, case_id, "manual_nudge", nudge, company_id=nudge.company_id)


def stripe_handlers(client: Client, engine: AsyncEngine, settings: Settings) -> dict[str, StripeHandler]:
    """Stripe's subscription lifecycle → cases: a failed invoice or a scheduled cancellation opens
    one; a paid invoice or a resumed subscription recovers it; a deleted subscription cancels it."""

    async def member_of(obj: dict[str, Any]) -> int | None:
        subscription = obj.get("subscription") if obj.get("object") == "invoice" else obj.get("id")
        membership = await membership_by_stripe(engine, customer=obj.get("customer"), subscription=subscription)
        if membership is None:
            log.info("churn.stripe_event_for_no_member", object_id=obj.get("id"))
        return membership

    async def open_for(event: dict[str, Any], trigger: str) -> None:
        obj = event["data"]["object"]
        if (membership := await member_of(obj)) is not None:
            case_id = await start_case(client, engine, settings, membership, trigger)
            log.info("churn.case_opened", case_id=case_id, membership_id=membership, trigger=trigger)

    async def end_with(event: dict[str, Any], signal: str) -> None:
        obj = event["data"]["object"]
        if (membership := await member_of(obj)) is None:
            return
        from sqlalchemy import text

        async with engine.connect() as conn:
            case_id = await conn.scalar(
                text("SELECT id FROM recovery_cases WHERE membership_id = :m AND status = 'OPEN'"), {"m": membership}
            )
        if case_id is not None:
            try:
                await signal_case(client, engine, case_id, signal, {"actor_id": None})
            except CaseRefused:
                pass  # its workflow has ended already

    async def invoice_failed(event: dict[str, Any]) -> None:
        await open_for(event, "payment_failed")

    async def invoice_paid(event: dict[str, Any]) -> None:
        await end_with(event, "recovered")

    async def subscription_updated(event: dict[str, Any]) -> None:
        obj = event["data"]["object"]
        if obj.get("cancel_at_period_end"):
            await open_for(event, "cancel_at_period_end")
        elif (event["data"].get("previous_attributes") or {}).get("cancel_at_period_end"):
            await end_with(event, "recovered")  # the member resumed

    async def subscription_deleted(event: dict[str, Any]) -> None:
        await end_with(event, "cancelled")

    return {
        "invoice.payment_failed": invoice_failed,
        "invoice.paid": invoice_paid,
        "invoice.payment_succeeded": invoice_paid,
        "customer.subscription.updated": subscription_updated,
        "customer.subscription.deleted": subscription_deleted,
    }


# --- operator actions that answer (the HTTP API and `jobctl churn`) -------------------------------


async def nudge_now(
    client: Client, engine: AsyncEngine, case_id: int, nudge: ManualNudge, *, update_id: str | None = None
) -> NudgeOutcome:
    """Update `nudge_now`: sent, deferred until a time (and why), or capped. The same `update_id`
    twice (an HTTP Idempotency-Key) is one nudge: Temporal de-duplicates updates by id."""
    await ensure_owned(engine, case_id, nudge.company_id)
    return await _update(client, case_id, ChurnCaseWorkflow.nudge_now, nudge, update_id)


async def apply_incentive(
    client: Client, engine: AsyncEngine, case_id: int, actor_id: str, *, days: int | None = None,
    company_id: str | None = None, update_id: str | None = None,
) -> tuple[int, datetime | None]:
    """Update `apply_incentive` with `days`, or the company's `incentive_days`; (days, new period end)."""
    from activities.churn.admin import incentive_days

    owner = await case_company(engine, case_id)
    await ensure_owned(engine, case_id, company_id)
    if days is None:
        days = await incentive_days(engine, owner or "")
        if days == 0:
            raise CaseRefused(f"company {owner} offers no incentive (incentive_days is 0): give the days")
    request = ApplyIncentive(actor_id=actor_id, days=days, company_id=company_id)
    return days, await _update(client, case_id, ChurnCaseWorkflow.apply_incentive, request, update_id)


async def case_status(client: Client, engine: AsyncEngine, case_id: int, *, company_id: str | None = None) -> CaseStatus | None:
    """The case's workflow status (queried while it runs, its result once ended); None: no workflow."""
    await ensure_owned(engine, case_id, company_id)
    handle = client.get_workflow_handle(workflow_id(case_id), result_type=CaseStatus)
    try:
        described = await handle.describe()
        if described.status == WorkflowExecutionStatus.RUNNING:
            return await handle.query(ChurnCaseWorkflow.status)
        if described.status == WorkflowExecutionStatus.COMPLETED:
            return await handle.result(follow_runs=False)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return None


async def _update(client: Client, case_id: int, update: Any, arg: Any, update_id: str | None) -> Any:
    handle = client.get_workflow_handle(workflow_id(case_id))
    try:
        return await handle.execute_update(update, arg, id=update_id)
    except WorkflowUpdateFailedError as error:
        raise CaseRefused(str(getattr(error.cause, "message", None) or error.cause)) from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise CaseRefused(f"case {case_id} has no running workflow (it has ended)") from None
        raise
