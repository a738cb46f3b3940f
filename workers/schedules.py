"""Schedules as code: one registry, applied idempotently (docs/ARCHITECTURE.md §4).

`apply` creates a missing schedule and updates an existing one in place, keeping its
paused state and note, so an operator who paused a schedule in the UI is not overruled
by the next deploy. The definitions come from the family registry, which imports this module
(never the other way round).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from config.settings import Settings
from schemas import search_attributes

CATCHUP_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class ScheduleDefinition:
    schedule_id: str
    workflow: Any
    make_arg: Callable[[Settings], Any]
    workflow_id: str
    summary: str
    daily_at: tuple[int, int] | None = None
    every: timedelta | None = None
    jitter: timedelta | None = None
    job_name: str = field(default="")

    def spec(self, settings: Settings) -> ScheduleSpec:
        if self.daily_at:
            hour, minute = self.daily_at
            return ScheduleSpec(
                calendars=[ScheduleCalendarSpec(hour=[ScheduleRange(hour)], minute=[ScheduleRange(minute)])],
                time_zone_name=settings.business_timezone,
                jitter=self.jitter,
            )
        assert self.every is not None
        return ScheduleSpec(intervals=[ScheduleIntervalSpec(every=self.every)], jitter=self.jitter)

    def schedule(self, settings: Settings, state: ScheduleState | None = None) -> Schedule:
        return Schedule(
            action=ScheduleActionStartWorkflow(
                self.workflow,
                self.make_arg(settings),
                id=self.workflow_id,
                task_queue=settings.task_queue,
                static_summary=self.summary,
                typed_search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(search_attributes.JOB_NAME, self.job_name or self.schedule_id)]
                ),
            ),
            spec=self.spec(settings),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=CATCHUP_WINDOW),
            state=state or ScheduleState(note="created by jobctl schedules apply"),
        )


async def apply(client: Client, settings: Settings, definitions: Sequence[ScheduleDefinition]) -> list[tuple[str, str]]:
    """Create or update each schedule (the registry's: `families.all_schedules()`); returns
    (id, 'created'|'updated') pairs."""
    outcome = []
    for definition in definitions:
        try:
            await client.create_schedule(definition.schedule_id, definition.schedule(settings))
            outcome.append((definition.schedule_id, "created"))
        except ScheduleAlreadyRunningError:
            handle = client.get_schedule_handle(definition.schedule_id)

            def keep_state(current: ScheduleUpdateInput, d: ScheduleDefinition = definition) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=d.schedule(settings, state=current.description.schedule.state))

            await handle.update(keep_state)
            outcome.append((definition.schedule_id, "updated"))
    return outcome
