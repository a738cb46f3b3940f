"""Starting credit work from outside a workflow: the CLI, the Stripe webhook, the schedules.

A payment is `payment/{retailer}/{reference}`: references are unique per retailer (a bank
reference, a Checkout Session id), so recording the same one again for the same retailer attaches
to (or reads) the run that recorded it, and another retailer's payment with the same reference is
its own. The database's unique (retailer, CREDIT, reference) key makes a second recording a no-op
even if two runs raced.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import date
from decimal import Decimal
from typing import Any, Literal

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.credit import orders as credit_orders
from activities.credit.orders import OrderPlaced
from activities.payments.gateway import StripeGateway
from config.settings import Settings
from schemas import ids
from schemas.credit import GuardrailsRequest, GuardrailsResult, PaymentResult, RecordPayment, RemindersRequest
from schemas.errors import Refused
from schemas.money import format_money
from services import StripeHandler
from services.stripe_money import stripe_money_handlers
from workflows.credit import CreditGuardrailsWorkflow, RecordPaymentWorkflow

log = structlog.get_logger(__name__)


class PaymentConflict(Refused):
    """A payment reference recorded before with another amount: a reused or mistyped reference,
    which must reach the caller (the new amount would otherwise be recorded nowhere)."""


async def start_payment(
    client: Client, payment: RecordPayment, *, task_queue: str = "jobs"
) -> WorkflowHandle[Any, PaymentResult]:
    """The payment's run, started now or (recorded already) the earlier one, without waiting."""
    try:
        return await client.start_workflow(
            RecordPaymentWorkflow.run,
            payment,
            id=ids.payment(payment.retailer_id, payment.reference),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            static_summary=f"Payment {payment.reference} from retailer {payment.retailer_id}",
        )
    except WorkflowAlreadyStartedError:  # recorded already: its run holds the answer
        workflow_id = ids.payment(payment.retailer_id, payment.reference)
        return client.get_workflow_handle(workflow_id, result_type=PaymentResult)


async def record_payment(client: Client, payment: RecordPayment, *, task_queue: str = "jobs") -> PaymentResult:
    """Record the payment once per (retailer, reference). The same reference again answers the
    first recording with `duplicate: true`; with another amount it is refused (`PaymentConflict`,
    HTTP 409), naming both amounts, and nothing is written.

    Answers once the payment is written and the guardrails applied (the run's `applied` update),
    not once the retailer was told: quiet hours hold `credit_resumed` until morning, and a caller
    with a 30 s timeout retried a payment already recorded (issue #33). The run tells them alone."""
    workflow_id = ids.payment(payment.retailer_id, payment.reference)
    update_id = f"record-{uuid.uuid4().hex}"
    start = WithStartWorkflowOperation(
        RecordPaymentWorkflow.run,
        payment,
        id=workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        memo={"recorded_for": update_id},  # the update that came with the start: not a duplicate
        static_summary=f"Payment {payment.reference} from retailer {payment.retailer_id}",
    )
    try:
        result = await client.execute_update_with_start_workflow(
            RecordPaymentWorkflow.applied, start_workflow_operation=start, id=update_id
        )
    except (WorkflowAlreadyStartedError, RPCError) as error:  # its run has ended: the first recording's result
        # Some servers (the time-skipping one) report the refusal as a bare ALREADY_EXISTS status.
        if isinstance(error, RPCError) and error.status != RPCStatusCode.ALREADY_EXISTS:
            raise
        with contextlib.suppress(WorkflowAlreadyStartedError, RPCError):
            await start.workflow_handle()  # the start's own copy of the refusal, read so it is not logged
        result = await client.get_workflow_handle(workflow_id, result_type=PaymentResult).result()
        result.payment = result.payment.model_copy(update={"duplicate": True})
    if result.payment.amount != payment.amount:
        recorded = result.payment
        raise PaymentConflict(
            f"payment reference {payment.reference!r} of retailer {payment.retailer_id} was recorded for"
            f" {format_money(recorded.amount, recorded.currency)}, not"
            f" {format_money(payment.amount, recorded.currency)}: use a new reference for a new payment"
        )
    result.workflow_id = workflow_id
    return result


async def place_order(
    engine: AsyncEngine,
    retailer_id: int,
    order_id: int,
    amount: Decimal,
    payment_mode: Literal["CREDIT", "COD"],
    *,
    today: date,
    actor: str = "system",
) -> OrderPlaced:
    """Place an order under the seed's rules (`PlacementRefused` says why not); a CREDIT order's
    debit is written and its credit reserved in one transaction, once per order."""
    return await credit_orders.place_order(
        engine, retailer_id, order_id, amount, payment_mode, today=today, actor=actor
    )


async def recheck_guardrails(
    client: Client, settings: Settings, retailer_id: int, *, reference: str
) -> GuardrailsResult:
    """One retailer's guardrails now, as a payment's are: after an admin's adjustment in its favour
    or change of limits, a system pause whose conditions cleared lifts and `credit_resumed` goes out
    (audited under `reference`). The same reference again joins the run or re-reads its changes;
    nothing twice. Answers once the changes are written (the `applied` update), not once the message
    went out: quiet hours hold it until morning, and no admin's request waits for that."""
    start = WithStartWorkflowOperation(
        CreditGuardrailsWorkflow.run,
        _recheck_request(settings, retailer_id, reference),
        **_recheck_options(settings, retailer_id, reference),
    )
    return await client.execute_update_with_start_workflow(
        CreditGuardrailsWorkflow.applied, start_workflow_operation=start
    )


async def start_guardrails_recheck(
    client: Client, settings: Settings, retailer_id: int, *, reference: str
) -> WorkflowHandle[Any, GuardrailsResult]:
    """`recheck_guardrails` without waiting for it: the webhook answers Stripe at once, the check
    runs durably; after a refund, a retailer back past its limits is paused again."""
    return await client.start_workflow(
        CreditGuardrailsWorkflow.run,
        _recheck_request(settings, retailer_id, reference),
        **_recheck_options(settings, retailer_id, reference),
    )


def _recheck_request(settings: Settings, retailer_id: int, reference: str) -> GuardrailsRequest:
    return GuardrailsRequest(
        business_timezone=settings.business_timezone,
        messaging_task_queue=settings.messaging_task_queue,
        retailer_ids=[retailer_id],
        reference=reference,
    )


def _recheck_options(settings: Settings, retailer_id: int, reference: str) -> dict[str, Any]:
    return {
        "id": ids.guardrails_recheck(retailer_id, reference),
        "task_queue": settings.task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "static_summary": f"Guardrails for retailer {retailer_id} after {reference}",
    }


def reminders_schedule_input(settings: Settings) -> RemindersRequest:
    """`payment-reminders` (10:00) → PaymentRemindersWorkflow.run; the date is the scheduled day."""
    return RemindersRequest(
        business_timezone=settings.business_timezone,
        messaging_task_queue=settings.messaging_task_queue,
        currency=settings.credit_currency,
    )


def guardrails_schedule_input(settings: Settings) -> GuardrailsRequest:
    """`credit-guardrails` (11:00) → CreditGuardrailsWorkflow.run."""
    return GuardrailsRequest(
        business_timezone=settings.business_timezone, messaging_task_queue=settings.messaging_task_queue
    )


def stripe_handlers(
    client: Client,
    settings: Settings,
    *,
    stripe: StripeGateway | None = None,
    engine: AsyncEngine | None = None,
) -> dict[str, StripeHandler]:
    """Every Stripe event that moves a retailer's money (`services/stripe_money.py`): a paid
    Checkout Session or pay-link PaymentIntent → RecordPaymentWorkflow; refunds and disputes →
    the ledger, then the retailer's guardrails again. Each re-reads its object at Stripe first."""

    async def start(payment: RecordPayment) -> str:
        return (await start_payment(client, payment, task_queue=settings.task_queue)).id

    async def recheck(retailer_id: int, reference: str) -> str:
        return (await start_guardrails_recheck(client, settings, retailer_id, reference=reference)).id

    return stripe_money_handlers(settings, stripe=stripe, engine=engine, start_payment=start, start_recheck=recheck)
