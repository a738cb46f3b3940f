"""Credit: the risk view (aging buckets, at-risk retailers), a retailer's profile and open payment
link, pause / unpause / block, limits and adjustments (audited, the key's name as the admin), and
recording payments (oldest debits first). The admin actions are `services.credit_admin`'s, the same
functions `jobctl credit` calls, so both doors behave the same: adjustments and limits re-check the
guardrails, a pause, unpause or block tells the retailer (started, never awaited)."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from activities.credit import admin
from schemas.credit import PaymentResult, RecordPayment
from schemas.money import Amount, AmountIn
from schemas.text import Reason
from services import credit_admin
from services.credit import record_payment
from workers.api.auth import Principal, require
from workers.api.idempotency import HEADER
from workers.api.problems import Problem, responses
from workers.api.routes import Page, PagingDep, RequestBody, StackDep, page, router

api = router("/v1/credit", "credit")
RetailerId = Annotated[int, Path(ge=1, le=2**63 - 1, description="retailers.id")]


class AgingBucket(BaseModel):
    bucket: Literal["current", "1-7", "8-15", "16-30", "31-60", "60+"]
    currency: str = Field(description="ISO 4217: every bucket once per currency owed in, never summed across them")
    debits: int
    retailers: int
    outstanding: Amount


class AtRiskRetailer(BaseModel):
    retailer_id: int
    days_overdue: int
    max_outstanding_days: int
    days_left: int
    outstanding: Amount
    currency: str = Field(description="ISO 4217: the account's")


class AtRiskPage(Page[AtRiskRetailer]):
    """A page of retailers about to cross their overdue limit."""


class RiskView(BaseModel):
    today: date
    buckets: list[AgingBucket]
    at_risk: AtRiskPage = Field(description="active retailers within 5 days of their overdue limit")


class OpenDebit(BaseModel):
    id: int
    due_date: date
    amount: Amount
    cleared_amount: Amount
    status: str
    days_overdue: int
    reminders: int


class AuditEntry(BaseModel):
    at: datetime
    action: str
    by: str | None
    reason: str | None


class PaymentLink(BaseModel):
    url: str = Field(
        description="the stable link the reminders send ({PUBLIC_BASE_URL}/pay/{token});"
        " opening it goes to Stripe's page"
    )
    amount: Amount
    currency: str
    checkout_session_id: str | None = Field(
        description="the Stripe Checkout Session made when it was last opened; None: never opened"
    )
    debit_ids: list[int] = Field(description="the debits it pays")
    sent_at: datetime | None = Field(description="when a reminder last carried it; null: none went out yet")


class StripePayment(BaseModel):
    reference: str = Field(description="the Checkout Session (or PaymentIntent) id the payment was recorded under")
    payment_intent: str
    amount: Amount
    refunded_amount: Amount = Field(description="what refunds and lost disputes gave back of it")
    disputed: bool = Field(description="a dispute is open at Stripe")
    dispute_id: str | None
    recorded_at: datetime


class Profile(BaseModel):
    retailer_id: int
    credit_status: Literal["ACTIVE", "PAUSED", "BLOCKED"]
    paused_at: datetime | None
    pause_reason: str | None
    paused_by: str | None
    credit_limit: Amount | None
    available_credit: Amount | None
    max_order_value: Amount | None
    max_outstanding_days: int | None
    outstanding: Amount
    credit_balance: Amount = Field(description="paid ahead: clears the next debits")
    stripe_payments: list[StripePayment] = Field(
        default_factory=list, description="the latest ten payments through Stripe, refunds and disputes included"
    )
    payment_link: PaymentLink | None
    open_debits: list[OpenDebit]
    recent_audit: list[AuditEntry]


class StatusChange(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "three invoices overdue; called, no answer"}]})

    reason: Reason = Field(description="stored in the audit log")


class StatusChanged(BaseModel):
    retailer_id: int
    old_status: str
    new_status: str
    audit_id: int
    notice_workflow_id: str | None = Field(
        description="the workflow telling the retailer (credit-admin-notice/{audit_id}), started, not awaited:"
        " quiet hours may hold the message; null: Temporal was unreachable and the retailer was not told"
    )


class PaymentIn(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"retailer_id": 42, "amount": "500.00", "reference": "BANK-2026-0042"}]}
    )

    retailer_id: int = Field(ge=1, le=2**63 - 1)
    amount: AmountIn = Field(gt=0, description="positive")
    reference: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{2,99}$",
        description="the bank or receipt reference: the same one twice records once",
    )


class Limits(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"credit_limit": "5000.00", "max_order_value": "1500.00", "reason": "a year of on-time payments"}
            ]
        }
    )

    credit_limit: AmountIn | None = Field(default=None, ge=0, lt=Decimal("1e12"), description="total credit")
    max_order_value: AmountIn | None = Field(default=None, gt=0, lt=Decimal("1e12"), description="largest credit order")
    max_outstanding_days: int | None = Field(
        default=None, ge=0, le=3650, description="days overdue before the system pauses"
    )
    reason: Reason | None = Field(default=None, description="stored in the audit log")

    @model_validator(mode="after")
    def _something(self) -> Limits:
        if self.credit_limit is None and self.max_order_value is None and self.max_outstanding_days is None:
            raise ValueError("give at least one of credit_limit, max_order_value, max_outstanding_days")
        return self


class LimitsChanged(BaseModel):
    retailer_id: int
    old: dict[str, Amount | int | None]
    new: dict[str, Amount | int]
    audit_id: int
    credit_resumed: bool = Field(description="the guardrails, re-checked, lifted a system pause the new limits clear")


class AdjustmentIn(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"amount": "35.90", "reason": "damaged goods returned", "reference": "RMA-2026-117"}]
        }
    )

    amount: AmountIn = Field(
        gt=-Decimal("1e12"),
        lt=Decimal("1e12"),
        description="+A in the retailer's favour (return, write-off, dispute won); -A a charge due today",
    )
    reason: Reason = Field(description="stored on the ledger row and the audit log")
    reference: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{2,99}$",
        description=(
            "the same reference twice adjusts once; without one, the request's Idempotency-Key (with the API key)"
            " makes it, so a retry adjusts once; one of the two is required"
        ),
    )

    @field_validator("amount")
    @classmethod
    def _non_zero(cls, amount: Decimal) -> Decimal:
        if amount == 0:
            raise ValueError("must be non-zero: + in the retailer's favour, - a charge")
        return amount


class Cleared(BaseModel):
    debit_id: int
    allocated: Amount
    status: str


class AdjustmentOut(BaseModel):
    retailer_id: int
    reference: str
    amount: Amount
    transaction_id: int = Field(description="the ledger row (a CREDIT, or a DEBIT for a charge)")
    duplicate: bool = Field(description="True: this reference was recorded before; nothing changed")
    cleared: list[Cleared]
    credit_balance_added: Amount
    credit_resumed: bool = Field(description="the guardrails, re-checked, lifted a system pause this cleared")
    currency: str = Field(description="ISO 4217: the credit account's, every amount's")


def _today(stack: Any) -> date:
    return datetime.now(stack.settings.tz).date()


@api.get("/risk", response_model=RiskView, operation_id="getCreditRisk")
async def risk(stack: StackDep, paging: PagingDep, _: Annotated[Principal, require("credit:read")]) -> RiskView:
    """Receivables by aging bucket, and a page of the retailers about to cross their overdue limit."""
    view = await admin.risk_view(stack.engine, _today(stack))
    window = view.at_risk[paging.offset : paging.offset + paging.limit + 1]
    return RiskView(
        today=view.today,
        buckets=[AgingBucket(**b) for b in view.buckets],
        at_risk=page(AtRiskPage, [AtRiskRetailer(**r) for r in window], paging),
    )


@api.get("/retailers/{retailer_id}", response_model=Profile, responses=responses(404), operation_id="getCreditProfile")
async def profile(retailer_id: RetailerId, stack: StackDep, _: Annotated[Principal, require("credit:read")]) -> Profile:
    """A retailer's credit: status, limits, open debits, recent audit."""
    return Profile(**await admin.profile(stack.engine, retailer_id, _today(stack)))


async def _change(
    stack: Any, retailer_id: int, action: admin.AdminAction, body: StatusChange, caller: Principal
) -> StatusChanged:
    change = await credit_admin.change_status(
        stack.engine, stack.client, stack.settings, retailer_id, action, reason=body.reason, actor=caller.name
    )
    return StatusChanged(**change.__dict__)


@api.post(
    "/retailers/{retailer_id}/pause",
    response_model=StatusChanged,
    responses=responses(404, 409),
    operation_id="pauseCredit",
)
async def pause(
    retailer_id: RetailerId, body: StatusChange, stack: StackDep, caller: Annotated[Principal, require("credit:write")]
) -> StatusChanged:
    """Pause the retailer's credit (COD only); an admin pause is never lifted by a payment."""
    return await _change(stack, retailer_id, "pause", body, caller)


@api.post(
    "/retailers/{retailer_id}/unpause",
    response_model=StatusChanged,
    responses=responses(404, 409),
    operation_id="unpauseCredit",
)
async def unpause(
    retailer_id: RetailerId, body: StatusChange, stack: StackDep, caller: Annotated[Principal, require("credit:write")]
) -> StatusChanged:
    """Lift the retailer's pause or block, whoever made it."""
    return await _change(stack, retailer_id, "unpause", body, caller)


@api.post(
    "/retailers/{retailer_id}/block",
    response_model=StatusChanged,
    responses=responses(404, 409),
    operation_id="blockCredit",
)
async def block(
    retailer_id: RetailerId, body: StatusChange, stack: StackDep, caller: Annotated[Principal, require("credit:write")]
) -> StatusChanged:
    """Block the retailer: no orders, no reminders, never lifted automatically."""
    return await _change(stack, retailer_id, "block", body, caller)


@api.get(
    "/retailers/{retailer_id}/payment-link",
    response_model=PaymentLink,
    responses=responses(404),
    operation_id="getPaymentLink",
)
async def open_payment_link(
    retailer_id: RetailerId, stack: StackDep, _: Annotated[Principal, require("credit:read")]
) -> PaymentLink:
    """The retailer's payment link (the one its reminders send); 404 when none was made yet."""
    return PaymentLink(**await admin.payment_link(stack.engine, retailer_id))


@api.post(
    "/retailers/{retailer_id}/limits",
    response_model=LimitsChanged,
    responses=responses(404),
    operation_id="setCreditLimits",
)
async def limits(
    retailer_id: RetailerId, body: Limits, stack: StackDep, caller: Annotated[Principal, require("credit:write")]
) -> LimitsChanged:
    """Change the credit limit, maximum order value or overdue limit (only the fields given);
    available credit follows; under a system pause the guardrails are re-checked at once."""
    wanted = body.model_dump(exclude={"reason"}, exclude_none=True)
    change = await credit_admin.set_limits(
        stack.engine, stack.client, stack.settings, retailer_id, wanted, actor=caller.name, reason=body.reason
    )
    return LimitsChanged(**change.__dict__)


def adjustment_reference(body: AdjustmentIn, request: Request, caller: Principal) -> str:
    """The body's reference, or one a retry reproduces: the API key's and the Idempotency-Key's.
    A random default would make every retry (after a lost answer) a second adjustment."""
    if body.reference:
        return body.reference
    key = request.headers.get(HEADER)
    if not key:
        raise Problem(
            422,
            "give a reference, or an Idempotency-Key header: either makes a retried adjustment adjust once",
            field="body.reference",
        )
    return f"api-{caller.key_id}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


@api.post(
    "/retailers/{retailer_id}/adjustments",
    response_model=AdjustmentOut,
    responses=responses(404),
    operation_id="adjustCredit",
)
async def adjustments(
    retailer_id: RetailerId,
    body: AdjustmentIn,
    request: Request,
    stack: StackDep,
    caller: Annotated[Principal, require("credit:write")],
) -> AdjustmentOut:
    """A ledger row: +A clears the oldest debits (the rest is credit balance) and re-checks a system
    pause at once, as a payment does; -A is a debit due today."""
    try:
        result = await credit_admin.adjust(
            stack.engine,
            stack.client,
            stack.settings,
            retailer_id,
            body.amount,
            reason=body.reason,
            actor=caller.name,
            reference=adjustment_reference(body, request, caller),
            today=_today(stack),
        )
    except admin.AmountOutOfRange as error:
        raise Problem(422, str(error), field="body.amount", code="amount_out_of_range") from None
    return AdjustmentOut(**result.__dict__)


@api.post("/payments", response_model=PaymentResult, responses=responses(404, 409), operation_id="recordPayment")
async def payments(
    body: PaymentIn, stack: StackDep, caller: Annotated[Principal, require("credit:write")]
) -> PaymentResult:
    """Record a payment (oldest open debits first), then re-check the retailer's guardrails.

    Answers once both are written, not after the retailer's message, which quiet hours or the
    brake may hold until morning: `workflow_id` is the run that sends it."""
    if not await admin.retailer_exists(stack.engine, body.retailer_id):
        raise Problem(404, f"no retailer {body.retailer_id}", code="unknown_retailer")
    payment = RecordPayment(
        retailer_id=body.retailer_id,
        amount=body.amount,
        reference=body.reference,
        actor=caller.name,
        business_timezone=stack.settings.business_timezone,
        messaging_task_queue=stack.settings.messaging_task_queue,
    )
    return await record_payment(stack.client, payment, task_queue=stack.settings.task_queue)
