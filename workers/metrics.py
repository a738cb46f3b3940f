"""Job durations on the worker's Prometheus endpoint, for every workflow type at once.

A workflow interceptor rather than code in each workflow: every job family gets a
`job_duration` histogram (labels `workflow_type`, `outcome`) without repeating itself.
The SDK's workflow metric meter records nothing while a history is replayed, so a cache
eviction or a worker restart does not count a run twice.

`declare_counters` starts the business counters the alert rules read at 0 when a worker starts,
so each series exists before its first event (a rate over a missing series is no rate at all).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.client import Client
from temporalio.exceptions import CancelledError
from temporalio.runtime import Runtime
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)


class JobMetricsInterceptor(Interceptor):
    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _RecordJobDuration


class _RecordJobDuration(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        # Only outcomes the server will see are recorded: an eviction from the worker's cache
        # unwinds the coroutine with a BaseException that is not the run ending.
        try:
            result = await self.next.execute_workflow(input)
        except workflow.ContinueAsNewError:
            _record("continued_as_new")
            raise
        except CancelledError:
            _record("cancelled")
            raise
        except Exception:
            _record("failed")
            raise
        _record("completed")
        return result


def _record(outcome: str) -> None:
    info = workflow.info()
    elapsed: timedelta = workflow.now() - info.start_time
    workflow.metric_meter().create_histogram_timedelta(
        "job_duration", "Wall time of a workflow run, start to close", unit="ms"
    ).record(max(elapsed, timedelta(0)), {"workflow_type": info.workflow_type, "outcome": outcome})


COUNTERS: dict[str, tuple[str, list[dict[str, str]]]] = {
    "provider_requests_total": (
        "HTTP calls to a provider (twilio, stripe) by outcome",
        [
            {"provider": provider, "outcome": outcome}
            for provider in ("twilio", "stripe")
            for outcome in ("ok", "client_error", "rate_limited", "server_error", "network")
        ],
    ),
    "reminders_sent_total": ("Payment reminders sent (one per retailer and day)", [{}]),
    "nudges_sent_total": ("Churn nudges sent, by manual or system", [{"manual": "true"}, {"manual": "false"}]),
}
"""Counters the rules and the dashboard read (deploy/), with the label sets started at 0."""


def declare_counters(client: Client) -> None:
    """Add 0 to each of `COUNTERS`' series on the client's runtime (its Prometheus endpoint)."""
    runtime = client.service_client.config.runtime or Runtime.default()
    for name, (description, label_sets) in COUNTERS.items():
        counter = runtime.metric_meter.create_counter(name, description)
        for labels in label_sets:
            counter.add(0, labels)
