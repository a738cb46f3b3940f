"""Schedules as code: one registry, applied idempotently (docs/ARCHITECTURE.md §4).

`apply` creates a missing schedule and updates an existing one in place, keeping its
paused state and note, so an operator who paused a schedule in the UI is not overruled
by the next deploy. The definitions come from the family registry, which imports this module
(never the other way round).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import Payload
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
from temporalio.converter import DataConverter

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
    (id, 'created'|'updated'|'unchanged') pairs. A schedule already as defined is not written."""
    outcome = []
    for definition in definitions:
        try:
            await client.create_schedule(definition.schedule_id, definition.schedule(settings))
            outcome.append((definition.schedule_id, "created"))
        except ScheduleAlreadyRunningError:
            handle = client.get_schedule_handle(definition.schedule_id)
            changed = False

            async def keep_state(
                current: ScheduleUpdateInput, d: ScheduleDefinition = definition
            ) -> ScheduleUpdate | None:
                nonlocal changed
                wanted = d.schedule(settings, state=current.description.schedule.state)
                if await same_schedule(client, current.description.schedule, wanted):
                    return None  # nothing written: a re-run of apply (or bootstrap) changes nothing
                changed = True
                return ScheduleUpdate(schedule=wanted)

            await handle.update(keep_state)
            outcome.append((definition.schedule_id, "updated" if changed else "unchanged"))
    return outcome


async def same_schedule(client: Client, current: Schedule, wanted: Schedule) -> bool:
    """Whether the server's schedule is already `wanted` (the state aside: `apply` keeps it).

    The server's copy has the action's input and summary as payloads (encrypted with the codec on)
    and its calendar ranges as tuples: both are brought to the same form before comparing. With the
    codec on, the input must also be encrypted under the current key."""
    have, want = current.action, wanted.action
    if not (isinstance(have, ScheduleActionStartWorkflow) and isinstance(want, ScheduleActionStartWorkflow)):
        return False
    if _plain(current.spec) != _plain(wanted.spec) or current.policy != wanted.policy:
        return False
    converter = client.data_converter
    have_args = list(have.args)
    if not all(isinstance(arg, Payload) for arg in have_args):
        return False
    want_args = converter.payload_converter.to_payloads(want.args)
    if converter.payload_codec:
        # Encrypted as now (the current key, or encryption at all): a rotation or a key just turned on
        # rewrites the schedule, so no schedule keeps needing a key that is to be dropped.
        stored = [dict(p.metadata) for p in have_args]
        if stored != [dict(p.metadata) for p in await converter.payload_codec.encode(want_args)]:
            return False
    try:
        if converter.payload_codec:
            have_args = list(await converter.payload_codec.decode(have_args))
        summary = await _text(converter, have.static_summary)
        details = await _text(converter, have.static_details)
    except Exception:  # noqa: BLE001 - what the converter cannot read is not what we want: rewrite it
        return False
    same_fields = all(
        getattr(have, name) == getattr(want, name)
        for name in (
            "workflow",
            "id",
            "task_queue",
            "execution_timeout",
            "run_timeout",
            "task_timeout",
            "retry_policy",
            "memo",
            "typed_search_attributes",
            "priority",
        )
    )
    return (
        same_fields
        and [(dict(p.metadata), p.data) for p in have_args] == [(dict(p.metadata), p.data) for p in want_args]
        and (summary or None) == (want.static_summary or None)
        and (details or None) == (want.static_details or None)
    )


async def _text(converter: DataConverter, value: Payload | str | None) -> str | None:
    """A summary or details as the server returns it (a payload, maybe encrypted, maybe empty) as text."""
    if not isinstance(value, Payload):
        return value
    if not value.ByteSize():
        return None
    if converter.payload_codec:
        value = (await converter.payload_codec.decode([value]))[0]
    return converter.payload_converter.from_payload(value, str)


def _plain(value: Any) -> Any:
    """A dataclass as nested tuples (lists and tuples alike), for comparing the server's copy."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return tuple((f.name, _plain(getattr(value, f.name))) for f in dataclasses.fields(value))
    if isinstance(value, list | tuple) or type(value).__name__.startswith("Repeated"):  # protobuf's lists too
        return tuple(_plain(v) for v in value)
    return value
