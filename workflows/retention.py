"""Daily data retention: old webhook ids go, old messages lose their provider data, actions of
long-ended memberships are anonymised, expired API idempotency keys and closed WhatsApp sessions
go. Page by page, each step until a short page; long runs continue-as-new carrying the counts.
The cut-offs are taken once, from the run's start.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from workflows._common import db_retry

with workflow.unsafe.imports_passed_through():
    from activities.retention import RetentionActivities
    from schemas.retention import RETENTION_STEPS, RetentionPage, RetentionRequest, RetentionStatus

DB_TIMEOUT = timedelta(minutes=2)  # a page of deletes may take longer than one row's statement
DB_RETRY = db_retry()


@workflow.defn
class DataRetentionWorkflow:
    def __init__(self) -> None:
        self._status = RetentionStatus()

    @workflow.run
    async def run(self, request: RetentionRequest) -> RetentionStatus:
        status = self._status = request.progress or RetentionStatus(as_of=request.as_of or workflow.now())
        assert status.as_of is not None
        steps = {
            "webhook_events": (
                RetentionActivities.delete_webhook_events,
                timedelta(days=request.webhook_days),
                "webhook_events_deleted",
            ),
            "message_payloads": (
                RetentionActivities.clear_message_payloads,
                timedelta(days=request.message_days),
                "message_payloads_cleared",
            ),
            "recovery_actions": (
                RetentionActivities.anonymise_recovery_actions,
                timedelta(days=request.ended_membership_days),
                "recovery_actions_anonymised",
            ),
            "idempotency_keys": (
                RetentionActivities.delete_idempotency_keys,
                timedelta(hours=request.idempotency_hours),
                "idempotency_keys_deleted",
            ),
            "whatsapp_sessions": (
                RetentionActivities.delete_whatsapp_sessions,
                timedelta(hours=request.whatsapp_session_hours),
                "whatsapp_sessions_deleted",
            ),
        }
        while status.step != "done":
            run_page, age, counter = steps[status.step]
            page = RetentionPage(older_than=status.as_of - age, limit=request.page_size)
            changed = await workflow.execute_activity_method(
                run_page, page, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY
            )
            setattr(status, counter, getattr(status, counter) + changed)
            status.pages += 1
            if changed < request.page_size:
                status.step = RETENTION_STEPS[RETENTION_STEPS.index(status.step) + 1]
            if status.step != "done" and workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(request.model_copy(update={"progress": status}))
        return status

    @workflow.query
    def status(self) -> RetentionStatus:
        return self._status
