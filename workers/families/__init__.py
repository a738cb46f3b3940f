"""The family registry: every job family and shared gateway jobctl runs (see `registry.Family`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from workers.families import (
    churn,
    credit,
    directory,
    events,
    imports,
    insights,
    loyalty,
    messaging,
    orders,
    payments,
    retention,
)
from workers.families.registry import Family

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from config.settings import Settings
    from services import StripeHandler
    from workers.schedules import ScheduleDefinition

FAMILIES: tuple[Family, ...] = (
    insights.FAMILY,
    orders.FAMILY,
    credit.FAMILY,
    churn.FAMILY,
    loyalty.FAMILY,
    messaging.FAMILY,
    payments.FAMILY,
    retention.FAMILY,
    directory.FAMILY,
    events.FAMILY,
    imports.FAMILY,
)


def by_name(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(name)


def all_workflows() -> list[type]:
    return [wf for family in FAMILIES for wf in family.workflows()]


def job_activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    """Every family's `jobs` activities, and the business calendar they share (`scheduled_day`)."""
    from activities.business_calendar import business_day

    return [business_day, *(a for family in FAMILIES for a in family.activities(deps))]


def messaging_activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    return [a for family in FAMILIES for a in family.messaging_activities(deps)]


def missing_settings(settings: Settings, queues: Sequence[str]) -> dict[str, list[str]]:
    """Per queue of `queues` (`jobs`, `messaging`), what stops its activities being registered
    whole (each family's `requires`, as `problem (family)`); a queue lacking nothing is left out."""
    missing: dict[str, list[str]] = {queue: [] for queue in queues}
    for family in FAMILIES:
        for queue, problems in family.requires(settings).items():
            if queue in missing:
                missing[queue].extend(f"{problem} ({family.name})" for problem in problems)
    return {queue: problems for queue, problems in missing.items() if problems}


def all_schedules() -> list[ScheduleDefinition]:
    return [s for family in FAMILIES for s in family.schedules()]


def schedule(schedule_id: str) -> ScheduleDefinition:
    known = all_schedules()
    for definition in known:
        if definition.schedule_id == schedule_id:
            return definition
    raise KeyError(f"unknown schedule {schedule_id!r} (known: {', '.join(d.schedule_id for d in known)})")


def api_scopes() -> dict[str, str]:
    """Every API key scope (each family declares its own): scope -> what it allows."""
    scopes: dict[str, str] = {}
    for family in FAMILIES:
        for scope, allows in family.scopes.items():
            if scope in scopes:
                raise ValueError(f"two families declare the API scope {scope}")
            scopes[scope] = allows
    return scopes


def stripe_handlers(deps: ActivityDeps) -> dict[str, StripeHandler]:
    handlers: dict[str, StripeHandler] = {}
    for family in FAMILIES:
        family_handlers: Mapping[str, StripeHandler] = family.stripe_handlers(deps)
        for event_type, handler in family_handlers.items():
            if event_type in handlers:
                raise ValueError(f"two families handle Stripe event {event_type}")
            handlers[event_type] = handler
    return handlers


__all__: Sequence[str] = (
    "FAMILIES",
    "Family",
    "all_schedules",
    "all_workflows",
    "api_scopes",
    "by_name",
    "job_activities",
    "messaging_activities",
    "missing_settings",
    "schedule",
    "stripe_handlers",
)
