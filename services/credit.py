"""Starting credit work from outside a workflow: the CLI, the Stripe webhook, the schedules.

A payment is `payment/{reference}`: recording the same reference again attaches to (or reads) the
run that recorded it, and the database's unique (retailer, CREDIT, reference) key makes a second
recording a no-op even if two runs raced.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import structlog
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.payments.activities import from_minor_units
from schemas import ids
from schemas.credit import GuardrailsRequest, PaymentResult, RecordPayment, RemindersRequest
from config.settings import Settings
from services import StripeHandler
from workflows.credit import RecordPaymentWorkflow

log = structlog.get_logger(__name__)


async def start_payment(client: Client, payment: RecordPayment, *, task_queue: str = "jobs") -> WorkflowHandle[Any, PaymentResult]:
    try:
        return await client.start_workflow(
            RecordPaymentWorkflow.run,
            payment,
            id=ids.payment(payment.reference),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            static_summary=f"Payment {payment.reference} from retailer {payment.retailer_id}",
        )
    except WorkflowAlreadyStartedError:  # recorded already: its run holds the answer
        return client.get_workflow_handle(ids.payment(payment.reference), result_type=PaymentResult)


async def record_payment(client: Client, payment: RecordPayment, *, task_queue: str = "jobs") -> PaymentResult:
    handle = await start_payment(client, payment, task_queue=task_queue)
    return await handle.result()


def reminders_schedule_input(settings: Settings) -> RemindersRequest:
    """`payment-reminders` (10:00) → PaymentRemindersWorkflow.run; the date is the scheduled day."""
    return RemindersRequest(business_timezone=settings.business_timezone, messaging_task_queue=settings.messaging_task_queue)


def guardrails_schedule_input(settings: Settings) -> GuardrailsRequest:
    """`credit-guardrails` (11:00) → CreditGuardrailsWorkflow.run."""
    return GuardrailsRequest(business_timezone=settings.business_timezone, messaging_task_queue=settings.messaging_task_queue)


def stripe_handlers(client: Client, settings: Settings) -> dict[str, StripeHandler]:
    """`payment_intent.succeeded` for a retailer's payment link → RecordPaymentWorkflow."""

    async def payment_succeeded(event: dict[str, Any]) -> None:
        intent = event.get("data", {}).get("object", {})
        metadata = intent.get("metadata") or {}
        retailer = str(metadata.get("retailer_id", ""))
        if not retailer.isdigit():
            log.info("credit.payment_not_for_a_retailer", payment_intent_id=intent.get("id"))
            return
        minor = intent.get("amount_received") or intent.get("amount") or 0
        amount = from_minor_units(int(minor), str(intent.get("currency", "usd")))
        if amount <= Decimal("0"):
            log.warning("credit.payment_without_amount", payment_intent_id=intent.get("id"))
            return
        payment = RecordPayment(
            retailer_id=int(retailer),
            amount=amount,
            reference=str(intent["id"]),
            actor="stripe",
            business_timezone=settings.business_timezone,
            messaging_task_queue=settings.messaging_task_queue,
        )
        handle = await start_payment(client, payment, task_queue=settings.task_queue)
        log.info("credit.payment_started", workflow_id=handle.id, retailer_id=payment.retailer_id)

    return {"payment_intent.succeeded": payment_succeeded}
