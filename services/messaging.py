"""The messaging operator's hands: the emergency brake (pause, resume, status); the HELP reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from activities.messaging.brake import BrakeState, brake_state, set_brake
from schemas.errors import Refused

if TYPE_CHECKING:
    from temporalio.client import Client

    from config.settings import Settings


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
        raise BrakeRefused(
            f"messaging is already paused (by {state.actor}: {state.reason})", code="brake_already_paused"
        )
    return await brake_state(engine)


async def resume(engine: AsyncEngine, *, reason: str | None, actor: str) -> BrakeState:
    if not actor.strip():
        raise BrakeRefused("resume needs an --actor")
    if not await set_brake(engine, paused=False, reason=(reason or "").strip() or None, actor=actor.strip()):
        raise BrakeRefused("messaging is not paused: nothing to resume", code="brake_not_paused")
    return await brake_state(engine)


async def status(engine: AsyncEngine) -> BrakeState:
    return await brake_state(engine)


async def reply_help(
    client: Client, settings: Settings, recipient_type: str, recipient_id: str, inbound_sid: str
) -> None:
    """The `help` template, through the outbox under `help:{inbound sid}`: a webhook Twilio
    delivers twice still answers once (the workflow id and the message key are the inbound's)."""
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from schemas.messaging import MessageBatch, SendMessage
    from workflows.messaging import MessageBatchWorkflow, message_priority

    message = SendMessage(
        idempotency_key=f"help:{inbound_sid}",
        recipient_type=recipient_type,  # type: ignore[arg-type]
        recipient_id=recipient_id,
        template="help",
    )
    try:
        await client.start_workflow(
            MessageBatchWorkflow.run,
            MessageBatch(messages=[message], task_queue=settings.messaging_task_queue, kind="help_reply"),
            id=f"help-reply/{inbound_sid}",
            task_queue=settings.task_queue,
            priority=message_priority("help_reply"),  # its workflow task, too, ahead of bulk jobs' on `jobs`
        )
    except WorkflowAlreadyStartedError:
        pass
