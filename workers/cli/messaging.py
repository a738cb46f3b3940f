"""`jobctl messaging pause|resume|status`: the emergency brake on every outbound message.

Mounted by the messaging family (workers/families/messaging.py). While paused, every send is held
as `deferred` (reason `paused`) and tried again by the job that asked until resumed; nothing is
lost and nothing is sent twice. A pause without `--reason`, or a resume when not paused, is
refused with one line and exit 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from schemas import text
from workers.cli.runner import UsageError, call, echo, free_text

messaging_app = typer.Typer(
    help="Messaging: the emergency brake (pause, resume, status).", no_args_is_help=True, rich_markup_mode=None
)

Actor = Annotated[
    str, typer.Option("--actor", help="The operator acting.", show_default=False, callback=free_text(text.Actor))
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _line(state) -> str:
    head = f"paused by {state.actor}: {state.reason}" if state.paused else "sending"
    return (
        f"messaging {head}; held by the brake: {state.held_by_brake}, by quiet hours: {state.held_by_quiet_hours},"
        f" in flight: {state.in_flight}"
    )


@messaging_app.command("pause")
def messaging_pause(
    actor: Actor,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why (shown in status).", show_default=False, callback=free_text(text.Reason)),
    ] = None,
    as_json: Json = False,
) -> None:
    """Hold every outbound message until `resume` (they go out then, once each)."""
    from services.messaging import pause

    if not reason or not reason.strip():
        raise UsageError("pause needs --reason: say why messaging stops")
    state = call(lambda c: pause(c.engine, reason=reason, actor=actor), database=True)
    echo(as_json, state.model_dump(mode="json"), _line(state))


@messaging_app.command("resume")
def messaging_resume(
    actor: Actor,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (optional).", callback=free_text(text.Reason))
    ] = None,
    as_json: Json = False,
) -> None:
    """Release the brake: the held messages go out as their jobs try them again."""
    from services.messaging import resume

    state = call(lambda c: resume(c.engine, reason=reason, actor=actor), database=True)
    echo(as_json, state.model_dump(mode="json"), _line(state))


@messaging_app.command("status")
def messaging_status(as_json: Json = False) -> None:
    """The brake's state and the backlog: held by the brake, by quiet hours, in flight."""
    from services.messaging import status

    state = call(lambda c: status(c.engine), database=True)
    echo(as_json, state.model_dump(mode="json"), _line(state))
