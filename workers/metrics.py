"""Job durations on the worker's Prometheus endpoint, for every workflow type at once.

A workflow interceptor rather than code in each workflow: every job family gets a
`job_duration` histogram (labels `workflow_type`, `outcome`) without repeating itself.
The SDK's workflow metric meter records nothing while a history is replayed, so a cache
eviction or a worker restart does not count a run twice.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import CancelledError
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
