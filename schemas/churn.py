"""Payloads of the churn saver. Ids and settings only: no names, phone numbers or message text."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from schemas.contact import TimeZone
from schemas.messaging import Channel
from schemas.text import Clean

CaseState = Literal["OPEN", "RECOVERED", "CANCELLED", "TERMINATED"]


class ChurnCaseInput(BaseModel):
    case_id: int = Field(ge=1)
    company_id: str
    manage_link: str = Field(description="where the member updates payment details (no personal data)")
    messaging_task_queue: str = "messaging"
    # Carried across continue-as-new:
    carried: CaseProgress | None = None


class CaseProgress(BaseModel):
    next_offset: int = 0
    attempts: int = 0
    manual_nudges: int = 0
    sent_at: list[datetime] = Field(default_factory=list, description="recent nudges, for the daily cap")
    opened_at: datetime | None = Field(default=None, description="when the case's clock started")


class CaseContext(BaseModel):
    """What the workflow needs from the case's row and its company's settings."""

    case_id: int
    company_id: str
    membership_id: int
    status: CaseState
    opened_at: datetime
    offsets_days: list[int]
    grace_period_days: int
    incentive_applied: bool
    attempts: int
    trigger: str | None = Field(
        default=None, description="what opened the case (payment_failed, cancel_at_period_end, manual); None: unknown"
    )


class NudgeRequest(BaseModel):
    case_id: int
    company_id: str
    attempt: int = Field(description="the nudge's number in this case (system and manual together)")
    manual: bool = False
    channel: Channel | None = None
    actor_id: str | None = None


class LoadCase(BaseModel):
    """What the case's workflow asks of the database first (scoped to the company)."""

    case_id: int
    company_id: str


class DecideNudge(BaseModel):
    """Ask whether a nudge may go out at `at`, given the nudges sent before it (the daily cap)."""

    case_id: int
    company_id: str
    at: datetime
    channel: Channel | None = None
    sent_before: list[datetime] = []


class NudgeDecision(BaseModel):
    """Whether the company's rules let a nudge go out now; if not, why and when it may."""

    allowed: bool
    channel: Channel
    held_back: Literal["quiet_hours", "daily_cap", "channel_not_allowed"] | None = None
    retry_at: datetime | None = None
    open_cases: int | None = Field(
        default=None, description="the company's open cases (up to a minute old): its sends' fairness weight"
    )


class CaseAction(BaseModel):
    """One `recovery_actions` row (and the case's counters/status, in the same transaction)."""

    case_id: int
    company_id: str
    type: str
    idempotency_key: str
    actor_id: str | None = Field(default=None, description="hashed before it is stored")
    metadata: dict[str, Any] = Field(default_factory=dict)
    nudge_sent: bool = False
    close_as: CaseState | None = None
    incentive_applied: bool = False


class ManualNudge(BaseModel):
    actor_id: Clean = Field(min_length=1, max_length=100)
    channel: Channel | None = None
    note: Clean | None = Field(default=None, max_length=500)
    company_id: str = Field(min_length=1, description="the case's company: another's is refused")


class CaseEnding(BaseModel):
    actor_id: Clean | None = Field(default=None, max_length=100)
    company_id: str = Field(min_length=1, description="the case's company: another's is refused")


class ApplyIncentive(BaseModel):
    actor_id: Clean = Field(min_length=1, max_length=100)
    days: int
    company_id: str = Field(min_length=1, description="the case's company: another's is refused")


# What the case's workflow decodes: the same shapes with the company optional, because histories
# recorded before it became required must still replay. The workflow refuses one without it.


class UnscopedManualNudge(ManualNudge):
    company_id: str | None = None  # type: ignore[assignment]


class UnscopedCaseEnding(CaseEnding):
    company_id: str | None = None  # type: ignore[assignment]


class UnscopedApplyIncentive(ApplyIncentive):
    company_id: str | None = None  # type: ignore[assignment]


class NudgeOutcome(BaseModel):
    """The answer of update `nudge_now`: what became of a manual nudge."""

    outcome: Literal["sent", "deferred", "capped", "suppressed"] = Field(
        description="sent now; deferred until `at` (it goes out then); capped: the daily cap refused it;"
        " suppressed: not sent"
    )
    channel: Channel | None = None
    reason: str | None = Field(default=None, description="quiet_hours, daily_cap, or why the send was suppressed")
    at: datetime | None = Field(
        default=None, description="deferred: when it goes out; capped: when nudges are allowed again"
    )


class CaseStatus(BaseModel):
    case_id: int
    company_id: str
    status: CaseState
    attempts: int
    manual_nudges: int
    next_nudge_at: datetime | None = None
    incentive_applied: bool = False
    last_hold_back: str | None = None
    last_refusal: str | None = Field(
        default=None,
        description="the last signal the case refused, and why (no payload, no company, another company):"
        " a refused signal is otherwise only a line in the worker's log",
    )
    last_refusal_at: datetime | None = None


Offsets = Annotated[
    list[Annotated[int, Field(ge=0, le=90)]], Field(max_length=10, description="days after opening, each 0-90")
]
Days90 = Annotated[int, Field(ge=0, le=90)]
Hour = Annotated[int, Field(ge=0, le=23)]
NudgeCap = Annotated[int, Field(ge=0, le=2**31 - 1, description="nudges per member per local day")]
Channels = Annotated[list[Channel], Field(min_length=1, max_length=2, description="allowed, in order of preference")]
"""The ranges of a company's churn rules, as the `companies` table's CHECKs: `CompanySettings`
and the directory's `CompanyIn` (`schemas/directory.py`) both declare their fields with these."""


def distinct_channels(channels: list[str]) -> list[str]:
    if len(set(channels)) != len(channels):
        raise ValueError("channels must not repeat")
    return channels


class CompanySettings(BaseModel):
    """A company's churn rules, with the same limits as the `companies` table's CHECKs."""

    reminder_offsets_days: Offsets
    channels: Channels
    incentive_days: Days90 = Field(description="days an incentive extends the subscription by (0: none)")
    quiet_hours_start: Hour = Field(description="local hour nudges stop")
    quiet_hours_end: Hour = Field(description="local hour nudges resume")
    daily_nudge_cap: NudgeCap
    grace_period_days: Days90
    timezone: TimeZone = Field(description="IANA time zone of the company's members by default")

    _distinct = field_validator("channels")(distinct_channels)


ChurnCaseInput.model_rebuild()
