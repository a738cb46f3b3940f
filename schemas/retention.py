"""Payloads of the daily data-retention job (seed 003's event cleanup and privacy maintenance)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

RetentionStep = Literal[
    "webhook_events", "message_payloads", "recovery_actions", "idempotency_keys", "whatsapp_sessions", "done"
]
RETENTION_STEPS: tuple[RetentionStep, ...] = (
    "webhook_events",
    "message_payloads",
    "recovery_actions",
    "idempotency_keys",
    "whatsapp_sessions",
    "done",
)

KEPT_ACTION_METADATA = ("attempt_number", "channel", "template_version", "manual", "days", "held_back")
"""What an anonymised recovery action keeps: what was done, never who or why in their words."""

ANONYMISED_ACTOR = "anonymised"


class RetentionStatus(BaseModel):
    """What the run has done so far (the `status` query and the result)."""

    as_of: datetime | None = None
    step: RetentionStep = "webhook_events"
    webhook_events_deleted: int = 0
    message_payloads_cleared: int = 0
    recovery_actions_anonymised: int = 0
    idempotency_keys_deleted: int = 0
    whatsapp_sessions_deleted: int = 0
    pages: int = 0


class RetentionRequest(BaseModel):
    webhook_days: int = Field(default=30, ge=1, description="processed_webhook_events older than this go")
    message_days: int = Field(default=90, ge=1, description="message rows older than this lose their provider data")
    ended_membership_days: int = Field(
        default=365, ge=1, description="recovery actions of memberships ended longer ago are anonymised"
    )
    idempotency_hours: int = Field(
        default=24, ge=24, description="API Idempotency-Keys older than this go (the API treats them as new)"
    )
    whatsapp_session_hours: int = Field(
        default=24, ge=24, description="WhatsApp sessions (a number's last inbound message) older than this go"
    )
    page_size: int = Field(default=500, ge=1, le=10_000)
    as_of: datetime | None = None
    """The moment the ages count from; None: the run's start (a schedule's runs)."""
    progress: RetentionStatus | None = None
    """Carried across continue-as-new."""


class RetentionPage(BaseModel):
    """One activity's share: at most `limit` rows older than `older_than`."""

    older_than: datetime
    limit: int
