"""Outbound events: the catalogue, the signature, and the payloads of their delivery workflows.

A subscriber's workflow carries ids and counts only (its history is visible in the Temporal UI):
never the URL, the secret or an event's payload.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from pydantic import BaseModel, Field

from schemas.tables import OUTBOUND_EVENT_TYPES

EVENT_TYPES: tuple[str, ...] = OUTBOUND_EVENT_TYPES
COMPANY_EVENT_TYPES: tuple[str, ...] = ("churn.case.closed",)
"""The event types whose objects carry a company: all a company-bound subscription may receive."""

SIGNATURE_HEADER = "Jobctl-Signature"
EVENT_ID_HEADER = "Jobctl-Event-Id"
EVENT_TYPE_HEADER = "Jobctl-Event-Type"
SIGNATURE_TOLERANCE_SECONDS = 300
"""A receiver refuses a signature older (or newer) than this: a captured request replayed later fails."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, Stripe's scheme."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: int, tolerance: int = SIGNATURE_TOLERANCE_SECONDS) -> bool:
    """True when `header` signs `body` with `secret` within `tolerance` seconds of `now`."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).rsplit("v1=", 1)[1]
    return any(hmac.compare_digest(expected, given) for given in parts.get("v1", []))


class EventDeliveryInput(BaseModel):
    """`event-delivery/{subscription_id}`: deliver the subscription's events in order, for ever."""

    subscription_id: int = Field(gt=0)
    poll_seconds: float = Field(default=10.0, gt=0, description="how long an idle run waits before looking again")
    delivered: int = Field(default=0, ge=0, description="carried across continue-as-new")


class DeliverEvents(BaseModel):
    subscription_id: int


class DeliveryOutcome(BaseModel):
    """What one `events_deliver` activity did."""

    delivered: int = 0
    given_up: int = 0
    stopped: bool = Field(default=False, description="the subscription is deleted or gone: the run ends")
    more: bool = Field(default=False, description="the activity's time ran out with events left")
    retry_after_seconds: float | None = Field(
        default=None, description="the head event failed: wait this long (its back-off), then try it again"
    )


class EventDeliveryStatus(BaseModel):
    """The `status` query."""

    subscription_id: int
    state: Literal["delivering", "backing_off", "idle", "stopped"] = "delivering"
    delivered: int = 0
    given_up: int = 0


class EventDeliverySweep(BaseModel):
    """`event-delivery-sweep`: start a delivery run for each active subscription that has none."""

    poll_seconds: float = Field(default=10.0, gt=0)


class EventDeliverySweepResult(BaseModel):
    started: int = 0
