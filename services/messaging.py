"""The messaging operator's hands: the emergency brake (pause, resume, status); the HELP reply;
the held and failed messages the console shows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import text
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


# --- what the console's Messaging and jobs page reads --------------------------------------------

TWILIO_ERRORS: dict[int, str] = {
    21211: "Invalid 'To' phone number",
    21408: "Sending to this region is not enabled on the account",
    21610: "The recipient replied STOP (unsubscribed): not messaged again on this channel",
    21612: "The 'To' number cannot be reached from this 'From' number",
    21614: "The 'To' number is not a mobile number",
    30001: "Queue overflow: Twilio could not send fast enough",
    30002: "Account suspended",
    30003: "Unreachable destination handset (off, or out of coverage)",
    30004: "Message blocked (by the recipient or their carrier)",
    30005: "Unknown destination handset (the number does not exist)",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered by the carrier (spam filtering)",
    30008: "Unknown error from the carrier",
    30034: "Sender not registered for US A2P 10DLC",
    63003: "WhatsApp could not find the 'To' address",
    63016: "Outside WhatsApp's 24-hour session: only an approved template can be sent",
    63024: "Invalid WhatsApp recipient",
}
"""What Twilio's error codes mean (Twilio's error dictionary, the ones jobctl meets)."""

_HELD = text(
    "SELECT coalesce(reason, 'unknown') AS reason, count(*) AS messages, min(updated_at) AS oldest"
    " FROM message_log WHERE status = 'deferred' GROUP BY 1 ORDER BY 2 DESC"
)
_FAILED = text(
    "SELECT error_code, count(*) AS messages, max(updated_at) AS latest FROM message_log"
    " WHERE status IN ('failed', 'undelivered') AND updated_at > now() - interval '24 hours'"
    " GROUP BY 1 ORDER BY 2 DESC"
)


async def held_and_failed(engine: AsyncEngine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Messages held (deferred) by reason with the oldest's time, and failed or undelivered in the
    last 24 hours by Twilio error code with its meaning: both read the partial index
    `ix_message_log_attention` (only deferred, failed and undelivered rows), never the outbox."""
    async with engine.connect() as conn:
        held = [dict(r._mapping) for r in await conn.execute(_HELD)]
        failed = [
            {**r._mapping, "meaning": TWILIO_ERRORS.get(r.error_code) if r.error_code is not None else None}
            for r in await conn.execute(_FAILED)
        ]
    return held, failed
