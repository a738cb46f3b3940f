"""`make bench-scale`'s arithmetic: Temporal Cloud's billable actions read from a history, and the
cost of a day from each family's cost per unit."""

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import (
    ActivityTaskStartedEventAttributes,
    HistoryEvent,
    MarkerRecordedEventAttributes,
    WorkflowExecutionStartedEventAttributes,
)

from benchmarks.actions import (
    DAYS_A_MONTH,
    PRICE_PER_MILLION_ACTIONS,
    PRICE_PER_VCPU_HOUR,
    PerUnit,
    billable_actions,
    cost_of_a_day,
    monthly_usd,
)
from benchmarks.scale import map_count_short

E = EventType


def event(kind: EventType.ValueType, **attributes: object) -> HistoryEvent:
    return HistoryEvent(event_type=kind, **attributes)  # type: ignore[arg-type]


def started(**fields: object) -> HistoryEvent:
    return event(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(**fields),  # type: ignore[arg-type]
    )


def local_activity(task: int) -> HistoryEvent:
    return event(
        E.EVENT_TYPE_MARKER_RECORDED,
        marker_recorded_event_attributes=MarkerRecordedEventAttributes(
            marker_name="core_local_activity", workflow_task_completed_event_id=task
        ),
    )


def test_a_clients_start_its_activities_timers_and_upserts_are_billed_and_workflow_tasks_are_not() -> None:
    history = [
        started(),
        event(E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED),
        event(E.EVENT_TYPE_WORKFLOW_TASK_STARTED),
        event(E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
        event(E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED),
        event(
            E.EVENT_TYPE_ACTIVITY_TASK_STARTED,
            activity_task_started_event_attributes=ActivityTaskStartedEventAttributes(attempt=1),
        ),
        event(E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED),
        event(E.EVENT_TYPE_TIMER_STARTED),
        event(E.EVENT_TYPE_TIMER_FIRED),
        event(E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES),
        event(E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED),
        event(E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED),
        event(E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED),
        event(E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED),
    ]
    # start, activity, timer, upsert, signal, update
    assert billable_actions(history) == 6


def test_an_activitys_retries_are_billed_from_the_attempt_its_started_event_records() -> None:
    history = [
        event(E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED),
        event(
            E.EVENT_TYPE_ACTIVITY_TASK_STARTED,
            activity_task_started_event_attributes=ActivityTaskStartedEventAttributes(attempt=4),
        ),
    ]
    assert billable_actions(history) == 4


def test_local_activities_recorded_by_one_workflow_task_are_one_action() -> None:
    assert billable_actions([local_activity(3), local_activity(3), local_activity(7)]) == 2


def test_a_run_started_by_continue_as_new_or_as_a_child_is_billed_where_it_was_asked_for() -> None:
    parent = [started(), event(E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)]
    child = [started(parent_workflow_execution=WorkflowExecution(workflow_id="parent"))]
    first_run = [started(), event(E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW)]
    next_run = [started(continued_execution_run_id="run-1")]
    # The parent's start, then the child's: its intent recorded and the server's attempt.
    assert billable_actions(parent) + billable_actions(child) == 3
    assert billable_actions(first_run) + billable_actions(next_run) == 2


def test_a_day_costs_each_familys_units_times_its_cost_per_unit() -> None:
    per_unit = {
        "reminders": PerUnit({"workers": 2.0, "postgresql": 1.0, "temporal server": 0.5}, actions=0.01),
        "orders": PerUnit({"workers": 4.0, "temporal server": 3.0}, actions=6.0),
    }
    day = cost_of_a_day(per_unit, {"reminders": 100_000, "orders": 50_000, "churn": 10_000})
    assert day.actions == pytest.approx(100_000 * 0.01 + 50_000 * 6.0)
    assert day.cpu_s == pytest.approx({"workers": 400.0, "postgresql": 100.0, "temporal server": 200.0})
    assert day.by_family["orders"] == pytest.approx((300_000.0, 350.0))
    actions_usd, compute_usd = monthly_usd(day)
    assert actions_usd == pytest.approx(301_000 * DAYS_A_MONTH / 1e6 * PRICE_PER_MILLION_ACTIONS)
    # Temporal Cloud's server CPU is what the actions pay for: only jobctl's own CPU is compute.
    assert compute_usd == pytest.approx(500.0 * DAYS_A_MONTH / 3600 * PRICE_PER_VCPU_HOUR)


def test_a_scale_run_that_would_exhaust_the_dev_servers_memory_mappings_is_refused_up_front() -> None:
    why = map_count_short(["churn"], [1000, 100_000], 65_530)
    assert why is not None and "vm.max_map_count is 65,530" in why and "100,000 open workflows" in why
    assert map_count_short(["churn"], [1000, 10_000], 65_530) is None  # 10k fits the default
    assert map_count_short(["reminders", "insights"], [100_000], 65_530) is None  # leave nothing open
    assert map_count_short(["orders"], [100_000], 1_048_576) is None
    assert map_count_short(["orders"], [100_000], None) is None  # not Linux: nothing to read
