"""Nightly insight regeneration: every retailer's stats and friendly message, paged and resumable.

The workflow only moves a cursor: each activity regenerates as many pages as its budget
allows and heartbeats the cursor, so a crashed worker costs at most one page. Long runs
continue-as-new when Temporal suggests it, carrying the cursor.
"""

from __future__ import annotations

from datetime import date, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows._common import scheduled_day
from workflows.messaging import deliver_all, tally

with workflow.unsafe.imports_passed_through():
    from activities.insights import InsightActivities
    from schemas import search_attributes
    from schemas.insights import (
        InsightMessages,
        InsightMessagesPage,
        InsightsChunk,
        InsightsDeliveryRequest,
        InsightsDeliveryResult,
        InsightsProgress,
        InsightsRequest,
        InsightsResult,
        InsightsStatus,
    )
    from schemas.messaging import BatchItemOutcome, SendMessage


@workflow.defn
class InsightsRegenerationWorkflow:
    def __init__(self) -> None:
        self._date: date | None = None
        self._progress = InsightsProgress()

    @workflow.run
    async def run(self, request: InsightsRequest) -> InsightsResult:
        self._date = request.insight_date or await scheduled_day(request.business_timezone)
        self._progress = request.progress or InsightsProgress(started_at=workflow.now())
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("insights")])

        while not self._progress.finished:
            chunk = await workflow.execute_activity_method(
                InsightActivities.regenerate_insights_chunk,
                InsightsChunk(
                    insight_date=self._date,
                    business_timezone=request.business_timezone,
                    after_retailer_id=self._progress.after_retailer_id,
                    page_size=request.page_size,
                    max_pages=request.pages_per_activity,
                    max_seconds=request.seconds_per_activity,
                    throttle_ms=request.throttle_ms,
                ),
                start_to_close_timeout=timedelta(seconds=request.seconds_per_activity) * 3 + timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1), maximum_attempts=30
                ),
                summary=f"regenerate pages after retailer {self._progress.after_retailer_id}",
            )
            self._progress = InsightsProgress(
                after_retailer_id=chunk.after_retailer_id,
                pages_done=self._progress.pages_done + chunk.pages_done,
                retailers_done=self._progress.retailers_done + chunk.retailers_done,
                started_at=self._progress.started_at,
                finished=chunk.finished,
            )
            workflow.set_current_details(
                f"{self._progress.retailers_done} retailers in {self._progress.pages_done} pages"
            )
            if not self._progress.finished and workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(
                    request.model_copy(update={"insight_date": self._date, "progress": self._progress})
                )

        assert self._progress.started_at is not None
        return InsightsResult(
            insight_date=self._date,
            pages_done=self._progress.pages_done,
            retailers_done=self._progress.retailers_done,
            started_at=self._progress.started_at,
            finished_at=workflow.now(),
        )

    @workflow.query
    def status(self) -> InsightsStatus:
        return InsightsStatus(
            insight_date=self._date,
            pages_done=self._progress.pages_done,
            retailers_done=self._progress.retailers_done,
            started_at=self._progress.started_at,
            finished=self._progress.finished,
        )


@workflow.defn
class InsightsDeliveryWorkflow:
    """`insights/weekly-{time}`, hourly: the insight messages due now (opted-in retailers in their local
    morning without this week's message), a page at a time, through the outbox (quiet hours, the daily
    cap, opt-outs, the brake: a held message goes when its hold ends). Each message's key is
    `insight:{retailer}:{ISO week}`, so a second run of the hour, or of the week, sends nothing new."""

    def __init__(self) -> None:
        self._result = InsightsDeliveryResult()

    @workflow.run
    async def run(self, request: InsightsDeliveryRequest) -> InsightsDeliveryResult:
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("insights-weekly")])
        now, after = workflow.now(), 0
        while True:
            page: InsightMessages = await workflow.execute_activity_method(
                InsightActivities.insight_messages,
                InsightMessagesPage(
                    now=now,
                    after_retailer_id=after,
                    page_size=request.page_size,
                    morning_start=request.morning_start,
                    morning_end=request.morning_end,
                ),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1), maximum_attempts=30
                ),
                summary=f"insight messages after retailer {after}",
            )
            self._result.pages += 1
            if page.messages:
                await deliver_all(
                    page.messages,
                    max_in_flight=request.max_in_flight,
                    kind="insight",
                    task_queue=request.messaging_task_queue,
                    on_done=self._count,
                )
            if page.finished:
                return self._result
            after = page.after_retailer_id

    def _count(self, message: SendMessage, outcome: BatchItemOutcome) -> None:
        tally(self._result, self._result.suppressed, outcome)
        workflow.set_current_details(f"{self._result.sent} insight messages sent")

    @workflow.query
    def status(self) -> InsightsDeliveryResult:
        return self._result
