"""The emergency brake: one row the outbox reads in the same statement that claims a message.

Why a table rather than a workflow the senders ask: every send, in every messaging worker,
must see the brake at once and at no cost; the claim's SQL checks `messaging_brake.paused`
beside the opt-outs, so a paused brake holds every outbound message as `deferred` (reason
`paused`) from the next claim on, and the asking workflows' timers try them again until it is
released. Operators change it through `jobctl messaging pause|resume` (services/messaging.py) or
the `messaging-brake` workflow's signals in the Temporal UI (workflows/brake.py); both write this row.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from schemas.messaging import BrakeChange, BrakeView
from schemas.tables import MessagingBrake


class BrakeState(BaseModel):
    paused: bool
    reason: str | None = None
    actor: str | None = None
    changed_at: datetime | None = None
    held_by_brake: int = 0
    """Messages deferred by the brake, waiting to go out once it is released."""
    held_by_quiet_hours: int = 0
    in_flight: int = 0
    """Rows `sending` now (an attempt owns them, or crashed and its lease has not ended)."""


async def set_brake(engine: AsyncEngine, *, paused: bool, reason: str | None, actor: str) -> bool:
    """Pause or release; False if it already was (nothing changed)."""
    async with engine.begin() as conn:
        current = await conn.scalar(select(MessagingBrake.paused).where(MessagingBrake.id == 1).with_for_update())
        if bool(current) == paused:
            return False
        await conn.execute(
            insert(MessagingBrake)
            .values(id=1, paused=paused, reason=reason, actor=actor)
            .on_conflict_do_update(
                index_elements=[MessagingBrake.id],
                set_={"paused": paused, "reason": reason, "actor": actor, "changed_at": func.now()},
            )
        )
    return True


# Each count reads a partial index (`ix_message_log_attention` for the held, `ix_message_log_sending`
# for the in flight), never the outbox: one scan of both statuses could use neither.
_BACKLOG = text(
    """
SELECT held.held_by_brake, held.held_by_quiet_hours,
       (SELECT count(*) FROM message_log WHERE status = 'sending') AS in_flight
FROM (SELECT count(*) FILTER (WHERE reason = 'paused') AS held_by_brake,
             count(*) FILTER (WHERE reason = 'quiet_hours') AS held_by_quiet_hours
      FROM message_log WHERE status = 'deferred') held
"""
)


async def brake_state(engine: AsyncEngine) -> BrakeState:
    async with engine.connect() as conn:
        row = (await conn.execute(select(MessagingBrake.__table__).where(MessagingBrake.id == 1))).first()
        backlog = (await conn.execute(_BACKLOG)).one()
    return BrakeState(
        paused=bool(row and row.paused),
        reason=row.reason if row else None,
        actor=row.actor if row else None,
        changed_at=row.changed_at if row else None,
        held_by_brake=backlog.held_by_brake,
        held_by_quiet_hours=backlog.held_by_quiet_hours,
        in_flight=backlog.in_flight,
    )


class BrakeActivities:
    """The brake's one writer for Temporal: the `messaging-brake` workflow's signals land here,
    in the same row `jobctl messaging pause|resume` writes, so the outbox reads one source."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @activity.defn(name="set_messaging_brake")
    async def set_messaging_brake(self, change: BrakeChange) -> BrakeView:
        changed = await set_brake(self._engine, paused=change.paused, reason=change.reason, actor=change.actor)
        state = await brake_state(self._engine)
        return BrakeView(paused=state.paused, reason=state.reason, actor=state.actor, changed=changed)
