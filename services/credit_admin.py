"""One function per admin action on a retailer's credit: pause, unpause, block, limits, adjust.

Every door (`jobctl credit ...`, `/v1/credit/...`, a console later) calls these and only these, so
the same action behaves the same whichever door it came through (issue #32, point 4):
- an adjustment in the retailer's favour and a change of limits re-check the guardrails at once
  when a system pause stands (`services.credit.recheck_guardrails`, under a reference the action's
  own reference or audit row gives, so a retry re-checks once): the pause lifts as a payment lifts it;
- a pause, unpause or block tells the retailer through the outbox (quiet hours, opt-outs and the
  brake apply as to every message). The notice is started, never awaited: a message held until
  08:00 keeps no caller waiting. Its workflow id and message key come from the change's audit row,
  so one change is one message however often its start is repeated.

The change commits before the notice starts. Should Temporal be unreachable then, the change
stands, the notice is logged as not started and the answer says so (`notice_workflow_id` None):
a retried request would find the change made (409) and could not tell the retailer again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.credit import admin
from activities.credit.admin import Adjustment, AdminAction, AdminChange, CreditRefused, LimitsChange
from config.settings import Settings
from schemas import ids
from schemas.messaging import MessageBatch, SendMessage
from services.credit import recheck_guardrails
from workflows.messaging import MessageBatchWorkflow, message_priority

log = structlog.get_logger(__name__)

NOTICE_TEMPLATES: dict[AdminAction, str] = {
    "pause": "credit_paused_by_admin",
    "unpause": "credit_unpaused",
    "block": "credit_blocked",
}


@dataclass
class StatusChanged(AdminChange):
    notice_workflow_id: str | None = None
    """The workflow telling the retailer (`credit-admin-notice/{audit_id}`); None: not started."""


@dataclass
class LimitsChanged(LimitsChange):
    credit_resumed: bool = False
    """The re-check lifted a system pause the new limits no longer justify."""


@dataclass
class Adjusted(Adjustment):
    credit_resumed: bool = False
    """The re-check lifted a system pause this adjustment cleared."""


def _who(reason: str, actor: str) -> tuple[str, str]:
    if not reason.strip():
        raise CreditRefused("say why: the reason is stored in the audit log")
    if not actor.strip():
        raise CreditRefused("name the admin acting: it is stored in the audit log")
    return reason.strip(), actor.strip()


async def change_status(
    engine: AsyncEngine,
    client: Client,
    settings: Settings,
    retailer_id: int,
    action: AdminAction,
    *,
    reason: str,
    actor: str,
) -> StatusChanged:
    """Pause, unpause or block (audited), then start the retailer's notice without waiting for it."""
    reason, actor = _who(reason, actor)
    change = await admin.change_status(engine, retailer_id, action, reason=reason, actor=actor)
    notice = await tell_retailer(client, settings, change, action)
    return StatusChanged(**change.__dict__, notice_workflow_id=notice)


async def pause(
    engine: AsyncEngine, client: Client, settings: Settings, retailer_id: int, *, reason: str, actor: str
) -> StatusChanged:
    """COD only; never lifted by the guardrails; a system pause becomes this admin's."""
    return await change_status(engine, client, settings, retailer_id, "pause", reason=reason, actor=actor)


async def unpause(
    engine: AsyncEngine, client: Client, settings: Settings, retailer_id: int, *, reason: str, actor: str
) -> StatusChanged:
    """Lift any pause or block, whoever made it."""
    return await change_status(engine, client, settings, retailer_id, "unpause", reason=reason, actor=actor)


async def block(
    engine: AsyncEngine, client: Client, settings: Settings, retailer_id: int, *, reason: str, actor: str
) -> StatusChanged:
    """No orders at all, no reminders; never lifted by itself."""
    return await change_status(engine, client, settings, retailer_id, "block", reason=reason, actor=actor)


async def tell_retailer(client: Client, settings: Settings, change: AdminChange, action: AdminAction) -> str | None:
    """Start the notice of `change` (one message under `{template}:{audit_id}`); its workflow id,
    or None when Temporal could not be reached (logged: the change stands, nobody was told)."""
    template = NOTICE_TEMPLATES[action]
    workflow_id = ids.credit_admin_notice(change.audit_id)
    message = SendMessage(
        idempotency_key=f"{template}:{change.audit_id}",
        recipient_type="retailer",
        recipient_id=str(change.retailer_id),
        template=template,
    )
    try:
        await client.start_workflow(
            MessageBatchWorkflow.run,
            MessageBatch(messages=[message], task_queue=settings.messaging_task_queue, kind="credit_notice"),
            id=workflow_id,
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            priority=message_priority("credit_notice"),  # its workflow task, too, ahead of bulk jobs' on `jobs`
            static_summary=f"Tell retailer {change.retailer_id}: {template} (audit #{change.audit_id})",
        )
    except WorkflowAlreadyStartedError:
        pass  # started (and perhaps finished) before under this audit row: told once
    except (RPCError, RuntimeError) as error:  # RuntimeError: a lazy client's failed connect
        log.warning(
            "credit.admin_notice_not_started",
            retailer_id=change.retailer_id,
            audit_id=change.audit_id,
            template=template,
            error=type(error).__name__,
        )
        return None
    log.info("credit.admin_notice_started", retailer_id=change.retailer_id, workflow_id=workflow_id)
    return workflow_id


async def set_limits(
    engine: AsyncEngine,
    client: Client,
    settings: Settings,
    retailer_id: int,
    limits: dict[str, Any],
    *,
    actor: str,
    reason: str | None = None,
) -> LimitsChanged:
    """Change any of the limits (audited; available credit follows); under a system pause, re-check
    the guardrails at once under `limits:{audit_id}`, so raising a limit lifts an over-limit pause."""
    if not actor.strip():
        raise CreditRefused("name the admin acting: it is stored in the audit log")
    reason = reason.strip() if reason and reason.strip() else None
    change = await admin.set_limits(engine, retailer_id, limits, actor=actor.strip(), reason=reason)
    resumed = False
    if change.system_paused:
        check = await recheck_guardrails(client, settings, retailer_id, reference=f"limits:{change.audit_id}")
        resumed = retailer_id in check.resumed
    return LimitsChanged(**change.__dict__, credit_resumed=resumed)


async def adjust(
    engine: AsyncEngine,
    client: Client,
    settings: Settings,
    retailer_id: int,
    amount: Decimal,
    *,
    reason: str,
    actor: str,
    reference: str,
    today: date,
) -> Adjusted:
    """A ledger row (+A in the retailer's favour, -A a charge due today); in the retailer's favour
    and under a system pause, the guardrails re-checked at once under the adjustment's reference,
    so a repeat (a duplicate) re-checks under the same one and changes nothing twice."""
    reason, actor = _who(reason, actor)
    result = await admin.adjust(
        engine, retailer_id, amount, reason=reason, actor=actor, reference=reference, today=today
    )
    resumed = False
    if result.system_paused:
        check = await recheck_guardrails(client, settings, retailer_id, reference=result.reference)
        resumed = retailer_id in check.resumed
    return Adjusted(**result.__dict__, credit_resumed=resumed)
