"""Payloads of the messaging gateway: what a workflow asks to send, and what happened.

Only ids, template names and parameters travel through Temporal: the phone number and the
rendered text are read and built inside the activity, so histories never show them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from schemas.text import Clean

RecipientType = Literal["retailer", "member", "customer"]
Channel = Literal["whatsapp", "sms"]
MessageKind = Literal[
    "help_reply",
    "manual_nudge",
    "credit_notice",
    "order_notice",
    "churn_nudge",
    "reminder",
    "insight",
    "broadcast",
]
"""What a send is for: the one thing a job says about a message's urgency (its priority: workflows.messaging)."""


class SendMessage(BaseModel):
    idempotency_key: str = Field(
        min_length=1, max_length=200, description="from business ids, e.g. reminder:42:2026-11-23"
    )
    recipient_type: RecipientType
    recipient_id: str = Field(min_length=1, max_length=64)
    template: str
    template_version: int | None = Field(default=None, ge=1, description="None: the newest version")
    params: dict[str, str | int | Decimal] = Field(default_factory=dict)
    channel: Channel | None = Field(default=None, description="None: the recipient's preference")


class SendOutcome(BaseModel):
    status: Literal["sent", "suppressed", "deferred"]
    provider_sid: str | None = None
    channel: Channel | None = None
    reason: str | None = None
    retry_at: datetime | None = Field(default=None, description="when a deferred message may go out")
    duplicate: bool = Field(default=False, description="already sent under this key: nothing new went out")


class MessageBatch(BaseModel):
    """A batch of sends fanned out to the messaging queue with bounded concurrency."""

    messages: list[SendMessage]
    max_in_flight: int = Field(default=100, ge=1, le=2000)
    task_queue: str = Field(default="messaging", description="the messaging workers' queue")
    kind: MessageKind = Field(
        default="broadcast", description="what the batch is for: its sends' priority (workflows.messaging)"
    )
    tenant: str | None = Field(
        default=None, max_length=64, description="the company whose messages these are: their fairness key"
    )


class MessageBatchResult(BaseModel):
    sent: int = 0
    duplicates: int = 0
    suppressed: dict[str, int] = Field(default_factory=dict)
    deferred: int = Field(default=0, description="held now (quiet hours, the brake): sent when the hold ends")
    delivered_after_hold: int = Field(default=0, description="of `sent`, how many waited for a hold first")
    failed: dict[str, int] = Field(default_factory=dict)


class SendBatch(BaseModel):
    """Many sends in one activity (each still exactly-once by its own key, each paced by the
    cluster's rate): for jobs that message many recipients, where one activity per message
    would cost Temporal more than the message costs."""

    messages: list[SendMessage] = Field(max_length=5_000)
    max_in_flight: int = Field(default=50, ge=1, le=500)
    per_second: float | None = Field(
        default=None, gt=0, description="a slower pace for this batch alone; None: the cluster's rate only"
    )


class BatchItemOutcome(BaseModel):
    idempotency_key: str
    status: Literal["sent", "suppressed", "deferred", "failed"]
    duplicate: bool = False
    reason: str | None = Field(default=None, description="why held back, or the permanent error's type")
    retry_at: datetime | None = Field(default=None, description="when a deferred message may go out")


class SendBatchResult(BaseModel):
    outcomes: list[BatchItemOutcome]


class BrakePause(BaseModel):
    """The `pause` signal of `messaging-brake` (as typed in the Temporal UI: {"reason": ..., "actor": ...})."""

    reason: Clean = Field(min_length=1, max_length=500, pattern=r"\S")
    actor: Clean = Field(min_length=1, max_length=100, pattern=r"\S")


class BrakeResume(BaseModel):
    """The `resume` signal of `messaging-brake`."""

    actor: Clean = Field(min_length=1, max_length=100, pattern=r"\S")
    reason: Clean | None = Field(default=None, max_length=500)


class BrakeChange(BaseModel):
    """What the brake activity writes to the `messaging_brake` row."""

    paused: bool
    actor: str
    reason: str | None = None


class BrakeView(BaseModel):
    """The brake as the `messaging-brake` workflow last read it from its table."""

    paused: bool = False
    reason: str | None = None
    actor: str | None = None
    changed: bool | None = None
    """Whether the last signal changed anything (a pause while paused does not)."""
