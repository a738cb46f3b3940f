"""Payloads of the credit family: reminders, guardrails and payments.

Ids, amounts and dates only: phone numbers, names and message text stay in the database.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from schemas.messaging import SendMessage
from schemas.money import Amount
from schemas.text import Clean

REMINDER_OFFSETS_DAYS = (-3, 0, 1, 3, 7, 14, 21, 30)
"""Days relative to a debit's due date on which it is due a reminder (docs/ARCHITECTURE.md §5)."""

ReminderTone = Literal["before_due", "due_today", "overdue", "firm", "final"]


def reminder_tone(days_past_due: int) -> ReminderTone:
    """The cadence's steps in five tones, by the oldest debit a reminder lists: before due (-3),
    due today (0), overdue (1, 3), firm (7, 14), final (21, 30)."""
    if days_past_due < 0:
        return "before_due"
    if days_past_due == 0:
        return "due_today"
    if days_past_due < 7:
        return "overdue"
    if days_past_due < 21:
        return "firm"
    return "final"


def reminder_template(days_past_due: int) -> str:
    """The catalogue's kind for a reminder (config/templates.toml): `payment_reminder_{tone}`."""
    return f"payment_reminder_{reminder_tone(days_past_due)}"


SkipReason = Literal["blocked", "no_phone", "opted_out"]


def reminder_key(retailer_id: int, day: date) -> str:
    """The idempotency key of a retailer's reminder of `day`: the activity sends under it and the
    workflow matches the sent outcomes back to retailers by it."""
    return f"reminder:{retailer_id}:{day.isoformat()}"


# --- payment reminders ---------------------------------------------------------------------------


class RemindersRequest(BaseModel):
    """Start input. `reminder_date` None: the scheduled day in the business time zone."""

    reminder_date: date | None = None
    business_timezone: str = "UTC"
    page_size: int = Field(default=500, ge=1, le=5_000)
    max_in_flight: int = Field(
        default=75,
        ge=1,
        le=500,
        description=(
            "sends in flight over the day's pages: 75 is three lanes of 25, so the send rate stays the"
            " bottleneck while one lane waits for the workflow's next task"
        ),
    )
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    messaging_task_queue: str = "messaging"
    # Carried across continue-as-new:
    progress: RemindersStatus | None = None
    redo: list[int] = Field(
        default_factory=list,
        max_length=50_000,
        description="retailers whose reminders the run before had not finished when it continued as new: read first",
    )


class RemindersStatus(BaseModel):
    reminder_date: date | None = None
    after_retailer_id: int = 0
    pages: int = 0
    due: int = Field(default=0, description="retailers with at least one debit due a reminder today")
    sent: int = 0
    duplicates: int = Field(default=0, description="already sent earlier under the same key (a re-run)")
    deferred: int = Field(
        default=0, description="held now (quiet hours, the brake): sent, then marked, when the hold ends"
    )
    skipped: dict[str, int] = Field(default_factory=dict, description="by reason: blocked, no_phone, opted_out, ...")
    failed: dict[str, int] = Field(default_factory=dict, description="by error type")
    finished: bool = False


class ReminderPageRequest(BaseModel):
    reminder_date: date
    business_timezone: str = "UTC"
    after_retailer_id: int = 0
    page_size: int = 500
    currency: str = "usd"
    retailer_ids: list[int] | None = Field(
        default=None, description="instead of the page after `after_retailer_id`: these retailers, if still due"
    )


class DueRetailer(BaseModel):
    retailer_id: int
    debit_ids: list[int]
    amount_due: Decimal
    days_past_due: int = 0
    """Of its oldest debit due a reminder today: the reminder's tone (`reminder_tone`)."""
    currency: str | None = None
    """Its credit account's (ISO 4217, lower case as Stripe writes it): the pay link's; None: the run's."""
    payment_link: str | None = None
    """Its stable pay link (`{PUBLIC_BASE_URL}/pay/{token}`) for the total, in a page; None in a mark."""


def reminder_message(retailer: DueRetailer, day: date) -> SendMessage:
    """The retailer's payment reminder of `day`, built where it is sent (`ReminderPage.messages`):
    a page carried each one beside its `due` row, and the two were a third of a reminders day's
    history (about 750 bytes a message: a continue-as-new every 30-45 s at 200 msg/s)."""
    return SendMessage(
        idempotency_key=reminder_key(retailer.retailer_id, day),
        recipient_type="retailer",
        recipient_id=str(retailer.retailer_id),
        template=reminder_template(retailer.days_past_due),
        params={
            "debit_count": len(retailer.debit_ids),
            "amount_due": str(retailer.amount_due),  # formatted at send time, in the retailer's locale and currency
            # Never missing in a page; if it were, the template refuses the send (no reminder without it).
            **({"payment_link": retailer.payment_link} if retailer.payment_link else {}),
        },
    )


class ReminderPage(BaseModel):
    """One page of retailers with due debits: who gets a message (each with its pay link), and who
    is skipped and why."""

    after_retailer_id: int
    last_page: bool
    due: list[DueRetailer]
    skipped: dict[str, int] = Field(default_factory=dict)
    link_failures: dict[str, int] = Field(default_factory=dict)

    def messages(self, day: date) -> list[SendMessage]:
        """One payment reminder per due retailer, in page order."""
        return [reminder_message(r, day) for r in self.due]


class RemindersSent(BaseModel):
    """Mark the reminder done for these retailers' debits (idempotent per debit and day)."""

    reminder_date: date
    business_timezone: str = "UTC"
    due: list[DueRetailer]


# --- guardrails ----------------------------------------------------------------------------------


class GuardrailsRequest(BaseModel):
    """Start input. `check_date` None: the scheduled day in the business time zone. The schedule
    checks everyone; an admin's adjustment re-checks one retailer under its own reference."""

    check_date: date | None = None
    business_timezone: str = "UTC"
    messaging_task_queue: str = "messaging"
    retailer_ids: list[int] | None = None
    reference: str | None = Field(default=None, description="audit reference; None: guardrails:{date}")


class GuardrailsCheck(BaseModel):
    check_date: date
    retailer_ids: list[int] | None = None
    reference: str | None = Field(default=None, description="audit reference; None: guardrails:{date}")


CreditChange = Literal["paused", "resumed"]


class GuardrailChange(BaseModel):
    retailer_id: int
    change: CreditChange
    audit_id: int = Field(description="the audit_log row written with the change (the message's idempotency key)")
    reason: str | None = None
    amount_due: Decimal = Decimal("0")


class GuardrailsResult(BaseModel):
    check_date: date
    paused: list[int] = Field(default_factory=list)
    resumed: list[int] = Field(default_factory=list)
    messages_failed: int = 0


# --- payments ------------------------------------------------------------------------------------


class RecordPayment(BaseModel):
    retailer_id: int = Field(ge=1)
    amount: Decimal = Field(gt=0, max_digits=14, decimal_places=2)
    reference: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{2,99}$", description="unique per retailer: a bank or Stripe id"
    )
    actor: Clean = Field(min_length=1, max_length=100, description="an admin id, or 'stripe' for the webhook")
    business_timezone: str = "UTC"
    messaging_task_queue: str = "messaging"
    stripe_payment_intent_id: str | None = Field(
        default=None,
        pattern=r"^pi_[A-Za-z0-9_]+$",
        description="a Stripe payment's PaymentIntent: its charge's refunds and disputes find the payment by it",
    )


class DebitAllocation(BaseModel):
    debit_id: int
    allocated: Amount
    status: str


class PaymentRecorded(BaseModel):
    retailer_id: int
    reference: str
    amount: Amount
    credit_transaction_id: int
    duplicate: bool = Field(default=False, description="the reference was recorded before: nothing changed")
    allocations: list[DebitAllocation] = Field(default_factory=list)
    unallocated: Amount = Decimal("0")
    currency: str = Field(default="USD", description="ISO 4217: the credit account's currency, every amount's")


class PaymentResult(BaseModel):
    payment: PaymentRecorded
    guardrails: GuardrailsResult
    workflow_id: str | None = Field(
        default=None,
        description="payment/{retailer}/{reference}: the run that tells the retailer (quiet hours may hold it)",
    )


RemindersRequest.model_rebuild()
