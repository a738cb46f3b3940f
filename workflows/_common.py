"""What several workflows share: the database activities' retry policy, the day a schedule meant,
and the last check on a signal's payload.

Imports only temporalio, `schemas` and (passed through) the activity functions it runs.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.business_calendar import business_day
    from schemas.insights import BusinessDay

M = TypeVar("M", bound=BaseModel)

DB_TIMEOUT = timedelta(seconds=30)
"""A database activity's start-to-close timeout: one short transaction."""

SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def db_retry(*non_retryable: str) -> RetryPolicy:
    """The retry policy of a database activity: 1 s doubling to 30 s, for about 20 minutes, except
    for the refusals named here (an unknown row is not there on the next try either). A database
    down for longer fails the activity, and the job says so, rather than retrying forever."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=45,
        non_retryable_error_types=list(non_retryable) or None,
    )


async def scheduled_day(timezone: str) -> date:
    """The day a schedule meant (right for backfills too), else today, in the business time zone."""
    when = workflow.info().typed_search_attributes.get(SCHEDULED_START) or workflow.now()
    return await workflow.execute_local_activity(
        business_day, BusinessDay(instant=when, timezone=timezone), start_to_close_timeout=timedelta(seconds=5)
    )


def accepted(model: type[M], payload: object, *, signal: str, subject: str) -> M | None:
    """The signal's payload if it is a `model`; otherwise None, logged (a bad payload never fails a task).

    The SDK itself logs and drops a signal whose payload does not decode into the handler's type,
    but two shapes reach a handler undecoded: no payload or `null` (None, so handlers default
    their parameter) and a `binary/plain` payload (bytes, whatever the type hint says).
    """
    if isinstance(payload, model):
        return payload
    problem = "no payload" if payload is None else f"a {type(payload).__name__} payload"
    workflow.logger.warning("%s: ignored malformed %s signal (%s)", subject, signal, problem)
    return None
