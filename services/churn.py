"""Opening and steering churn cases from outside a workflow: the CLI and the Stripe webhook.

Opening is idempotent twice over: the database keeps one OPEN case per membership, and the
case's workflow id (`churn-case/{case_id}`) is started with signal-with-start semantics
(a running case is reused).

Tenant isolation: every call names the company, and a case or membership of another company is
refused (`CaseRefused`) exactly like an unknown one. The Stripe handlers take the company from the
one membership the Stripe object resolves to.

Stripe events arrive late, twice and out of order. A handler applies an event only if it is not
older than the last one applied to the membership (`memberships.stripe_event_at`), and re-reads
the subscription at Stripe before it opens a case: a member Stripe says is paying gets none.
"""

from __future__ import annotations

import weakref
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import structlog
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.churn.cases import (
    CaseRefused,
    OpenCaseCounts,
    StripeMember,
    actor_reference,
    apply_stripe_event,
    case_company,
    company_channels,
    membership_by_stripe,
    open_case,
)
from activities.payments.gateway import StripeGateway
from config.settings import Settings
from schemas import ids, search_attributes
from schemas.churn import ApplyIncentive, CaseStatus, ChurnCaseInput, ManualNudge, NudgeOutcome
from schemas.errors import failure_reason
from schemas.payments import SubscriptionStateRequest
from services import StripeHandler
from workflows.churn import ChurnCaseWorkflow
from workflows.messaging import company_priority, company_weight

log = structlog.get_logger(__name__)

_open_cases: weakref.WeakKeyDictionary[AsyncEngine, OpenCaseCounts] = weakref.WeakKeyDictionary()


def open_cases(engine: AsyncEngine) -> OpenCaseCounts:
    """This process's counts of each company's open cases on `engine` (a minute old at most)."""
    if (counts := _open_cases.get(engine)) is None:
        counts = _open_cases[engine] = OpenCaseCounts(engine)
    return counts


def manage_link(settings: Settings, company_id: str) -> str:
    """The case's fallback link (CHURN_MANAGE_URL, "" when unset). A nudge's link is made as it goes
    out (`activities/messaging/links.py`): the stable `{PUBLIC_BASE_URL}/manage/{token}`, else this URL."""
    if not settings.churn_manage_url:
        return ""
    return settings.churn_manage_url.format(company_id=quote(company_id, safe=""))


async def start_case(
    client: Client,
    engine: AsyncEngine,
    settings: Settings,
    membership_id: int,
    trigger: str,
    *,
    company_id: str,
    signal: str | None = None,
) -> int:
    """Open (or find) the company's membership's case and make sure its workflow runs; returns the case id."""
    case_id, company, _ = await open_case(engine, membership_id, trigger, company_id)
    args = ChurnCaseInput(
        case_id=case_id,
        company_id=company,
        manage_link=manage_link(settings, company),
        messaging_task_queue=settings.messaging_task_queue,
    )
    await client.start_workflow(
        ChurnCaseWorkflow.run,
        args,
        id=ids.churn_case(case_id),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal=signal,
        # Its workflow tasks shared between companies, weighed by its company's size as it opens.
        priority=company_priority(company, company_weight(await open_cases(engine)(company))),
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(search_attributes.COMPANY_ID, company),
                SearchAttributePair(search_attributes.CASE_STATUS, "OPEN"),
            ]
        ),
        static_summary=f"Churn case {case_id} (membership {membership_id}, company {company}, {trigger})",
    )
    return case_id


async def ensure_owned(engine: AsyncEngine, case_id: int, company_id: str) -> None:
    """Refuse a case that is not the company's (said the same way as an unknown one's owner)."""
    if not company_id:
        raise CaseRefused("a company is required")
    owner = await case_company(engine, case_id)
    if owner is None:
        raise CaseRefused(f"no churn case {case_id}", code="unknown_case")
    if owner != company_id:
        raise CaseRefused(f"case {case_id} does not belong to company {company_id}")


async def signal_case(
    client: Client, engine: AsyncEngine, case_id: int, signal: str, payload: Any, *, company_id: str
) -> None:
    """Signal the company's case; the payload carries the company too, so the workflow checks it again."""
    await ensure_owned(engine, case_id, company_id)
    payload = _at_the_door(payload)
    if isinstance(payload, dict):
        payload = {**payload, "company_id": company_id}
    try:
        await client.get_workflow_handle(ids.churn_case(case_id)).signal(signal, payload)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise CaseRefused(f"case {case_id} has no running workflow (it has ended)", code="case_not_open") from None
        raise


async def manual_nudge(client: Client, engine: AsyncEngine, case_id: int, nudge: ManualNudge) -> None:
    """Nudge by hand, on a channel the company allows (the workflow checks again when deciding)."""
    await ensure_owned(engine, case_id, nudge.company_id)
    if nudge.channel is not None and nudge.channel not in (allowed := await company_channels(engine, nudge.company_id)):
        raise CaseRefused(
            f"company {nudge.company_id} does not nudge by {nudge.channel} (allowed: {', '.join(allowed)})"
        )
    await signal_case(client, engine, case_id, "manual_nudge", nudge, company_id=nudge.company_id)


def _at_the_door(payload: Any) -> Any:
    """What a case's workflow may keep in its history of an operator's payload (issue #33): the
    operator's id as its HMAC (`actor_reference`, the very hash `recovery_actions` stores), and
    no free-text note (the workflow never used it, and histories are kept and exported whole)."""
    if isinstance(payload, dict):
        actor = payload.get("actor_id")
        payload = {k: v for k, v in payload.items() if k != "note"}
        if isinstance(actor, str) and actor:
            payload["actor_id"] = actor_reference(actor)
        return payload
    if isinstance(payload, BaseModel) and isinstance(getattr(payload, "actor_id", None), str):
        update: dict[str, Any] = {"actor_id": actor_reference(payload.actor_id)}  # type: ignore[attr-defined]
        if "note" in type(payload).model_fields:
            update["note"] = None
        return payload.model_copy(update=update)
    return payload


def _event_time(event: dict[str, Any]) -> datetime | None:
    created = event.get("created")
    return datetime.fromtimestamp(int(created), UTC) if isinstance(created, int | float) else None


def stripe_handlers(
    client: Client, engine: AsyncEngine, settings: Settings, *, stripe: StripeGateway | None = None
) -> dict[str, StripeHandler]:
    """Stripe's subscription lifecycle → cases: a failed invoice or a newly scheduled cancellation
    opens one; a paid invoice or a resumed subscription recovers it; a deleted subscription
    cancels it. `stripe` re-reads the subscription at Stripe (without it, no case is opened on
    a member in good standing only as far as the event itself tells)."""

    async def member_of(event: dict[str, Any]) -> StripeMember | None:
        """The event's membership, if the event is not older than the last one applied to it."""
        obj = event["data"]["object"]
        subscription = obj.get("subscription") if obj.get("object") == "invoice" else obj.get("id")
        member = await membership_by_stripe(engine, customer=obj.get("customer"), subscription=subscription)
        if member is None:
            log.info("churn.stripe_event_for_no_member", event_id=event.get("id"), object_id=obj.get("id"))
            return None
        created = _event_time(event)
        applied = created is None or await apply_stripe_event(
            engine,
            member.membership_id,
            created,
            event_id=str(event.get("id") or "") or None,
            event_type=str(event.get("type") or "") or None,
        )
        if not applied:
            log.info(
                "churn.stripe_event_out_of_order",
                event_id=event.get("id"),
                type=event.get("type"),
                membership_id=member.membership_id,
            )
            return None
        return member

    async def at_risk(member: StripeMember) -> bool:
        """Stripe's word now, not the event's: an event delivered late must not open a case on a
        member who has paid since (or whose subscription is gone)."""
        if stripe is None:
            return True
        try:
            state = await stripe.subscription_state(SubscriptionStateRequest(membership_id=member.membership_id))
        except ApplicationError as error:
            if error.non_retryable:  # no subscription stored: the event is the only word there is
                return True
            raise  # transient: Stripe retries the webhook
        if state.paying or state.ended:
            log.info("churn.stripe_event_superseded", membership_id=member.membership_id, status=state.status)
            return False
        return True

    async def open_for(member: StripeMember, trigger: str) -> None:
        if not await at_risk(member):
            return
        case_id = await start_case(
            client, engine, settings, member.membership_id, trigger, company_id=member.company_id
        )
        log.info("churn.case_opened", case_id=case_id, membership_id=member.membership_id, trigger=trigger)

    async def end_with(member: StripeMember, signal: str) -> None:
        async with engine.connect() as conn:
            case_id = await conn.scalar(
                text("SELECT id FROM recovery_cases WHERE membership_id = :m AND company_id = :c AND status = 'OPEN'"),
                {"m": member.membership_id, "c": member.company_id},
            )
        if case_id is not None:
            try:
                await signal_case(client, engine, case_id, signal, {"actor_id": None}, company_id=member.company_id)
            except CaseRefused:
                pass  # its workflow has ended already

    async def invoice_failed(event: dict[str, Any]) -> None:
        if (member := await member_of(event)) is not None:
            await open_for(member, "payment_failed")

    async def invoice_paid(event: dict[str, Any]) -> None:
        if (member := await member_of(event)) is not None:
            await end_with(member, "recovered")

    async def subscription_updated(event: dict[str, Any]) -> None:
        obj = event["data"]["object"]
        previous = event["data"].get("previous_attributes") or {}
        if "cancel_at_period_end" not in previous:
            return  # some other field changed (metadata, our own trial extension...): nothing to open or end
        if (member := await member_of(event)) is None:
            return
        if obj.get("cancel_at_period_end"):
            await open_for(member, "cancel_at_period_end")
        else:
            await end_with(member, "recovered")  # the member resumed

    async def subscription_deleted(event: dict[str, Any]) -> None:
        if (member := await member_of(event)) is not None:
            await end_with(member, "cancelled")

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
    client: Client,
    engine: AsyncEngine,
    case_id: int,
    actor_id: str,
    *,
    days: int | None = None,
    company_id: str,
    update_id: str | None = None,
) -> tuple[int, datetime | None]:
    """Update `apply_incentive` with `days`, or the company's `incentive_days`; (days, new period end)."""
    from activities.churn.admin import incentive_days

    owner = await case_company(engine, case_id)
    await ensure_owned(engine, case_id, company_id)
    if days is None:
        days = await incentive_days(engine, owner or "")
        if days == 0:
            raise CaseRefused(
                f"company {owner} offers no incentive (incentive_days is 0): give the days", code="no_incentive"
            )
    request = ApplyIncentive(actor_id=actor_id, days=days, company_id=company_id)
    return days, await _update(client, case_id, ChurnCaseWorkflow.apply_incentive, request, update_id)


async def case_status(client: Client, engine: AsyncEngine, case_id: int, *, company_id: str) -> CaseStatus | None:
    """The case's workflow status (queried while it runs, its result once ended); None: no workflow."""
    await ensure_owned(engine, case_id, company_id)
    handle = client.get_workflow_handle(ids.churn_case(case_id), result_type=CaseStatus)
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
    handle = client.get_workflow_handle(ids.churn_case(case_id))
    try:
        return await handle.execute_update(update, _at_the_door(arg), id=update_id)
    except WorkflowUpdateFailedError as error:
        # The real reason, not the wrapper's "Activity task failed" (issue #33): Stripe's refusal
        # ("member 7 has no Stripe subscription", NoSubscription) or the validator's.
        message, kind = failure_reason(error.cause)
        raise CaseRefused(message, code=None if kind in (None, "ValueError") else kind) from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise CaseRefused(f"case {case_id} has no running workflow (it has ended)", code="case_not_open") from None
        raise
