"""The business calendar every scheduled family shares: which calendar day an instant falls on.

A schedule fires at an instant; the job it starts works for a day of the business's (or a
recipient's) time zone. Workflows ask this activity (through `workflows._common.scheduled_day`)
because zoneinfo reads files, which a workflow must not.
"""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from temporalio import activity

from schemas.insights import BusinessDay


@activity.defn(name="business_day")
async def business_day(request: BusinessDay) -> date:
    """The calendar day of an instant in a time zone (run as a local activity)."""
    return request.instant.astimezone(ZoneInfo(request.timezone)).date()
