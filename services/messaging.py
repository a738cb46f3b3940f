"""The messaging operator's hands: the emergency brake (pause, resume, status)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from activities.messaging.brake import BrakeState, brake_state, set_brake
from schemas.errors import Refused


class BrakeRefused(Refused):
    pass


async def pause(engine: AsyncEngine, *, reason: str, actor: str) -> BrakeState:
    """Hold every outbound message from now on; they go out, same keys, once resumed."""
    if not reason.strip():
        raise BrakeRefused("pause needs a --reason")
    if not actor.strip():
        raise BrakeRefused("pause needs an --actor")
    if not await set_brake(engine, paused=True, reason=reason.strip(), actor=actor.strip()):
        state = await brake_state(engine)
        raise BrakeRefused(f"messaging is already paused (by {state.actor}: {state.reason})")
    return await brake_state(engine)


async def resume(engine: AsyncEngine, *, reason: str | None, actor: str) -> BrakeState:
    if not actor.strip():
        raise BrakeRefused("resume needs an --actor")
    if not await set_brake(engine, paused=False, reason=(reason or "").strip() or None, actor=actor.strip()):
        raise BrakeRefused("messaging is not paused: nothing to resume")
    return await brake_state(engine)


async def status(engine: AsyncEngine) -> BrakeState:
    return await brake_state(engine)
