"""Temporal Cloud's billable actions, counted from workflow histories, and the cost of a day.

Temporal Cloud bills per action (https://docs.temporal.io/cloud/actions, and the list under
https://docs.temporal.io/cloud/pricing). What a history shows, and how it is counted here (one
action each unless said):

- a workflow started by a client (or signal-with-start): its `WorkflowExecutionStarted`. A run
  started by continue-as-new or as a child is counted where it was asked for (below), not twice;
- continue-as-new: `WorkflowExecutionContinuedAsNew`;
- a child workflow started: `StartChildWorkflowExecutionInitiated`, two actions (the parent's
  intent, recorded, and the server's attempt to start the child);
- a timer started: `TimerStarted` (the SDK's implicit timers, `wait_condition(timeout=...)`, too);
- an activity started or retried: `ActivityTaskScheduled`, plus `attempt - 1` retries read from
  its `ActivityTaskStarted` (the server writes the last attempt's started event only);
- local activities: every local activity recorded by one workflow task counts as one action
  (their `core_local_activity` markers, grouped by the workflow task that recorded them);
- a search-attribute upsert: `UpsertWorkflowSearchAttributes` (attributes given at start are free);
- a signal received: `WorkflowExecutionSignaled` (from a client or another workflow);
- an update accepted: `WorkflowExecutionUpdateAccepted` (a rejected update is billed too but leaves
  no event).

Billed but not in any history, so not counted here: queries (each one the worker answers),
heartbeats that reach the server, a schedule's own two actions each time it fires (the
workflow it starts is the third, counted), rejected updates, export and Nexus. jobctl's
benchmarks send no queries in their measured phases except the reminders day's deadline path;
a day started by its schedule adds two actions a day.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

LOCAL_ACTIVITY_MARKER = "core_local_activity"  # the marker sdk-core records for a local activity

ONE_EACH = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
}


def billable_actions(events: Iterable[HistoryEvent]) -> int:
    """Temporal Cloud actions one run's history shows (see the module's docstring)."""
    actions = 0
    local_tasks: set[int] = set()
    for event in events:
        kind = event.event_type
        if kind in ONE_EACH:
            actions += 1
        elif kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            actions += 2
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = event.workflow_execution_started_event_attributes
            continued = bool(started.continued_execution_run_id)
            child = started.HasField("parent_workflow_execution")
            actions += 0 if continued or child else 1
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            actions += max(0, event.activity_task_started_event_attributes.attempt - 1)
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == LOCAL_ACTIVITY_MARKER:
                local_tasks.add(marker.workflow_task_completed_event_id)
    return actions + len(local_tasks)


# Point 5's business: what a day brings each family, and why that many units.
DAY_UNITS: dict[str, tuple[float, str]] = {
    "reminders": (100_000, "100,000 retailers, each reminded once (an upper bound: one debit step due every day)"),
    "insights": (100_000, "100,000 retailers, the nightly regeneration"),
    "orders": (50_000, "50,000 orders, each a pending-order clock from start to expiry"),
    "churn": (10_000, "10,000 members, each one churn case opened"),
    "loyalty": (50_000, "50,000 orders, each one points application at checkout"),
    "imports": (0, "none: an import is a one-off onboarding, not a daily job"),
}


@dataclass(frozen=True)
class PerUnit:
    """One family's cost per unit of work, from its largest scale run."""

    cpu_ms: Mapping[str, float]  # milliseconds of CPU per unit, by component
    actions: float  # billable Temporal actions per unit


@dataclass(frozen=True)
class DayCost:
    actions: float
    cpu_s: dict[str, float]  # CPU seconds per day, by component
    by_family: dict[str, tuple[float, float]]  # family -> (actions, CPU seconds) per day

    @property
    def cpu_total_s(self) -> float:
        return sum(self.cpu_s.values())


def cost_of_a_day(per_unit: Mapping[str, PerUnit], units: Mapping[str, float]) -> DayCost:
    """Actions and CPU seconds a day brings: each family's per-unit figures times its units a day."""
    cpu_s: dict[str, float] = {}
    by_family: dict[str, tuple[float, float]] = {}
    actions = 0.0
    for family, cost in per_unit.items():
        n = units.get(family, 0.0)
        family_cpu = 0.0
        for component, ms in cost.cpu_ms.items():
            seconds = ms * n / 1000
            cpu_s[component] = cpu_s.get(component, 0.0) + seconds
            family_cpu += seconds
        actions += cost.actions * n
        by_family[family] = (cost.actions * n, family_cpu)
    return DayCost(actions, cpu_s, by_family)


# The prices docs/BENCHMARKS.md's monthly estimate assumes (see its "Cost of a day" section).
PRICE_PER_MILLION_ACTIONS = 50.0  # USD, pay-as-you-go, the first 5M a month (docs.temporal.io/cloud/pricing)
PRICE_PER_VCPU_HOUR = 0.0504  # USD, AWS m7i.large on demand in us-east-1 ($0.1008/h, 2 vCPUs)
DAYS_A_MONTH = 30
# Not jobctl's compute on Temporal Cloud: the server is what the actions pay for, and the Twilio
# emulator and Stripe sandbox stand in for Twilio's and Stripe's own machines.
NOT_OURS = frozenset({"temporal server", "served (`serve`)"})


def compute_cpu_s(day: DayCost) -> float:
    """CPU seconds a day jobctl runs on its own machines (workers, API, PostgreSQL)."""
    return sum(s for component, s in day.cpu_s.items() if component not in NOT_OURS)


def monthly_usd(day: DayCost) -> tuple[float, float]:
    """(Temporal Cloud actions, compute) in USD a month:
    actions/day x 30 / 1e6 x price per million, own CPU-s/day x 30 / 3600 x price per vCPU-hour."""
    actions = day.actions * DAYS_A_MONTH / 1e6 * PRICE_PER_MILLION_ACTIONS
    compute = compute_cpu_s(day) * DAYS_A_MONTH / 3600 * PRICE_PER_VCPU_HOUR
    return actions, compute
