"""Insight regeneration's decisions in seconds: it pages until done, and a continued run keeps the cursor."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from schemas.insights import BusinessDay, InsightsChunk, InsightsChunkResult, InsightsRequest, InsightsResult
from tests.workflows.harness import family_worker, task_failures

BUSINESS_DAY = date(2026, 11, 23)


@dataclass
class FakeInsights:
    chunks: list[InsightsChunkResult]
    asked: list[InsightsChunk] = field(default_factory=list)
    days_asked: list[BusinessDay] = field(default_factory=list)

    @activity.defn(name="business_day")
    async def business_day(self, request: BusinessDay) -> date:
        self.days_asked.append(request)
        return BUSINESS_DAY

    @activity.defn(name="regenerate_insights_chunk")
    async def regenerate_insights_chunk(self, chunk: InsightsChunk) -> InsightsChunkResult:
        self.asked.append(chunk)
        return self.chunks.pop(0)

    def activities(self) -> list:
        return [self.business_day, self.regenerate_insights_chunk]


def two_chunks() -> list[InsightsChunkResult]:
    return [
        InsightsChunkResult(after_retailer_id=120, pages_done=3, retailers_done=120, finished=False),
        InsightsChunkResult(after_retailer_id=150, pages_done=1, retailers_done=30, finished=True),
    ]


async def regenerate(env: WorkflowEnvironment, task_queue: str, request: InsightsRequest):
    handle = await env.client.start_workflow(
        "InsightsRegenerationWorkflow",
        request,
        id=f"insights/{uuid.uuid4().hex}",
        task_queue=task_queue,
        result_type=InsightsResult,
    )
    return handle, await handle.result()


async def test_regeneration_pages_from_the_cursor_until_a_chunk_says_done(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    fake = FakeInsights(chunks=two_chunks())
    request = InsightsRequest(
        business_timezone="Africa/Lagos", page_size=40, pages_per_activity=3, seconds_per_activity=5
    )
    async with family_worker(time_skipping_env, task_queue, "insights", fake.activities()):
        handle, result = await regenerate(time_skipping_env, task_queue, request)

    assert [d.timezone for d in fake.days_asked] == ["Africa/Lagos"]
    assert [(c.insight_date, c.after_retailer_id) for c in fake.asked] == [(BUSINESS_DAY, 0), (BUSINESS_DAY, 120)]
    assert {(c.page_size, c.max_pages, c.max_seconds, c.business_timezone) for c in fake.asked} == {
        (40, 3, 5, "Africa/Lagos")
    }
    assert (result.insight_date, result.pages_done, result.retailers_done) == (BUSINESS_DAY, 4, 150)
    assert result.started_at <= result.finished_at
    assert await task_failures(handle) == 0


async def test_a_long_run_continues_as_new_with_its_cursor_date_and_totals(
    time_skipping_env: WorkflowEnvironment, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporal suggests continue-as-new once a history grows long; here it suggests it at once."""
    monkeypatch.setattr(workflow.Info, "is_continue_as_new_suggested", lambda self: True)
    fake = FakeInsights(chunks=two_chunks())
    async with family_worker(time_skipping_env, task_queue, "insights", fake.activities()):
        handle, result = await regenerate(time_skipping_env, task_queue, InsightsRequest())

    first_run = time_skipping_env.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    last_event = (await first_run.fetch_history()).events[-1]
    assert last_event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert [c.after_retailer_id for c in fake.asked] == [0, 120]  # the second run resumed at the cursor
    assert len(fake.days_asked) == 1  # and kept the day: a run past midnight still regenerates the same one
    assert (result.insight_date, result.pages_done, result.retailers_done) == (BUSINESS_DAY, 4, 150)
    first, second = await first_run.describe(), await time_skipping_env.client.get_workflow_handle(handle.id).describe()
    assert second.run_id != first.run_id
    assert first.start_time <= result.started_at < second.start_time  # the job's start, carried over
