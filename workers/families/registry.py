"""What a job family contributes, declared in one place per family.

A family module (`workers/families/churn.py`, ...) builds one `Family`. The worker, `schedules
apply`, the webhook receiver, the CLI, the replay suite and the test workers iterate
`workers.families.FAMILIES`, so adding a family is one new module and one line there.

Everything but the CLI is a function, called only by the process that needs it: `jobctl --help`
imports no workflow, activity or SDK it does not use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.client import Client

    from activities.deps import ActivityDeps
    from config.settings import Settings
    from services import StripeHandler
    from workers.schedules import ScheduleDefinition


def _none(*_: Any) -> Sequence[Any]:
    return ()


@dataclass(frozen=True)
class Family:
    name: str
    cli: Sequence[tuple[str, typer.Typer]] = ()
    """(command group name, Typer app): mounted on `jobctl`."""
    workflows: Callable[[], Sequence[type]] = _none
    """Workflow classes; registered on the `jobs` queue."""
    activities: Callable[[ActivityDeps], Sequence[Callable[..., Any]]] = _none
    """Activities on the `jobs` queue (database and Stripe)."""
    messaging_activities: Callable[[ActivityDeps], Sequence[Callable[..., Any]]] = _none
    """Activities on the `messaging` queue (Twilio, under the queue's rate limit)."""
    schedules: Callable[[], Sequence[ScheduleDefinition]] = _none
    stripe_handlers: Callable[[Client, AsyncEngine, Settings], Mapping[str, StripeHandler]] = field(
        default=lambda *_: {}
    )
    """Stripe event type -> handler, for the webhook receiver (an event type belongs to one family)."""
