"""Payloads of the nightly insight regeneration (passed through Temporal as pydantic models)."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field

from schemas.messaging import SendMessage


class InsightsRequest(BaseModel):
    """Start input. `insight_date` None means "the scheduled day in the business time zone"."""

    insight_date: date | None = None
    business_timezone: str = "UTC"
    page_size: int = Field(default=500, ge=1, le=10_000)
    pages_per_activity: int = Field(default=200, ge=1)
    seconds_per_activity: float = Field(default=60.0, gt=0)
    throttle_ms: int = Field(default=0, ge=0, le=60_000, description="pause between pages, to spare the DB")
    heartbeat_timeout_seconds: float = Field(
        default=10.0, gt=0, description="how soon a dead worker's chunk is retried"
    )
    # Carried across continue-as-new:
    progress: InsightsProgress | None = None


class InsightsProgress(BaseModel):
    after_retailer_id: int = 0
    pages_done: int = 0
    retailers_done: int = 0
    started_at: datetime | None = None
    finished: bool = False


class InsightsChunk(BaseModel):
    """One activity's share of the work: pages after a cursor, until a page or time budget runs out."""

    insight_date: date
    business_timezone: str
    after_retailer_id: int
    page_size: int
    max_pages: int
    max_seconds: float
    throttle_ms: int = 0


class InsightsChunkResult(BaseModel):
    after_retailer_id: int
    pages_done: int
    retailers_done: int
    finished: bool


class BusinessDay(BaseModel):
    instant: datetime
    timezone: str


class InsightsStatus(BaseModel):
    insight_date: date | None
    pages_done: int
    retailers_done: int
    started_at: datetime | None
    finished: bool


class InsightsResult(BaseModel):
    insight_date: date
    pages_done: int
    retailers_done: int
    started_at: datetime
    finished_at: datetime


class InsightsDeliveryRequest(BaseModel):
    """`insights-weekly` (hourly): each opted-in retailer's latest insight, once per ISO week of its
    own calendar, in the first run that finds it in its local morning."""

    page_size: int = Field(default=500, ge=1, le=5_000)
    morning_start: int = Field(default=9, ge=0, le=23, description="local hour the morning window opens")
    morning_end: int = Field(default=12, ge=1, le=24, description="local hour it closes (exclusive)")
    max_in_flight: int = Field(default=50, ge=1, le=500)
    messaging_task_queue: str = "messaging"


class InsightMessagesPage(BaseModel):
    """One page of the week's insight messages due at `now` (the run's time, so a retry reads the same)."""

    now: datetime
    after_retailer_id: int = 0
    page_size: int
    morning_start: int
    morning_end: int


class InsightMessages(BaseModel):
    messages: list[SendMessage]
    after_retailer_id: int
    finished: bool


class InsightsDeliveryResult(BaseModel):
    sent: int = 0
    duplicates: int = 0
    suppressed: dict[str, int] = Field(default_factory=dict)
    failed: dict[str, int] = Field(default_factory=dict)
    pages: int = 0


InsightsRequest.model_rebuild()
