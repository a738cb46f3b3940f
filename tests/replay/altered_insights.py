"""A deliberately altered copy of InsightsRegenerationWorkflow, for the replay test.

Same workflow name, but it asks for the scheduled day and upserts its search attribute in
the opposite order: a change of command order that a running workflow cannot survive
without `workflow.patched`. The replay suite must refuse it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.insights import InsightActivities
    from schemas import search_attributes
    from schemas.insights import InsightsChunk, InsightsRequest, InsightsResult


@workflow.defn(name="InsightsRegenerationWorkflow")
class AlteredInsightsRegenerationWorkflow:
    @workflow.run
    async def run(self, request: InsightsRequest) -> InsightsResult:
        assert request.insight_date is not None
        # Altered: a timer first (a new command before the first activity).
        await workflow.sleep(timedelta(seconds=1))
        workflow.upsert_search_attributes([search_attributes.JOB_NAME.value_set("insights")])
        chunk = await workflow.execute_activity_method(
            InsightActivities.regenerate_insights_chunk,
            InsightsChunk(
                insight_date=request.insight_date,
                business_timezone=request.business_timezone,
                after_retailer_id=0,
                page_size=request.page_size,
                max_pages=request.pages_per_activity,
                max_seconds=request.seconds_per_activity,
            ),
            start_to_close_timeout=timedelta(minutes=5),
        )
        return InsightsResult(
            insight_date=request.insight_date,
            pages_done=chunk.pages_done,
            retailers_done=chunk.retailers_done,
            started_at=workflow.now(),
            finished_at=workflow.now(),
        )
