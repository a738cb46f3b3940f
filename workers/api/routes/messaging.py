"""Messaging: the emergency brake that holds every outbound message (status, pause, resume).

The brake is one switch for every company's messages, so only a key bound to no company may
read or move it; the key's name is the operator recorded on the brake."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from activities.messaging.brake import BrakeState
from schemas.text import Reason
from services import messaging as service
from workers.api.auth import Principal, require
from workers.api.problems import Problem, responses
from workers.api.routes import RequestBody, StackDep, router

api = router("/v1/messaging", "messaging")


class Pause(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reason": "a template went out wrong; holding until it is fixed"}]}
    )

    reason: Reason = Field(description="why, shown with the brake's state")


class Resume(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "template fixed"}]})

    reason: Reason | None = Field(default=None, description="optional note")


def _unbound(caller: Principal) -> None:
    if caller.company_id is not None:
        raise Problem(
            403, f"key {caller.name} is confined to company {caller.company_id}; the brake is every company's"
        )


@api.get("/brake", response_model=BrakeState, operation_id="getMessagingBrake")
async def brake(stack: StackDep, caller: Annotated[Principal, require("messaging:read")]) -> BrakeState:
    """Whether messaging is paused, by whom and why, and the messages it holds."""
    _unbound(caller)
    return await service.status(stack.engine)


@api.post("/brake/pause", response_model=BrakeState, responses=responses(409), operation_id="pauseMessaging")
async def pause(body: Pause, stack: StackDep, caller: Annotated[Principal, require("messaging:write")]) -> BrakeState:
    """Hold every outbound message from the next send on; they go out, once each, after a resume."""
    _unbound(caller)
    return await service.pause(stack.engine, reason=body.reason, actor=caller.name)


@api.post("/brake/resume", response_model=BrakeState, responses=responses(409), operation_id="resumeMessaging")
async def resume(
    stack: StackDep, caller: Annotated[Principal, require("messaging:write")], body: Resume | None = None
) -> BrakeState:
    """Release the brake: the held messages go out as their workflows next try them."""
    _unbound(caller)
    return await service.resume(stack.engine, reason=(body.reason if body else None), actor=caller.name)
