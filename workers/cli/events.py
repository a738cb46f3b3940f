"""`jobctl events list|replay` and `jobctl events subscriptions create|list|delete`: outbound events,
for operators. Bad input or an action that cannot apply: one clear line, exit 2."""

from __future__ import annotations

from typing import Annotated

import typer

from schemas.events import EVENT_TYPES
from schemas.text import ShortText
from workers.cli.runner import UsageError, call, configure_logging, echo, free_text, settings

events_app = typer.Typer(
    help="Outbound events: list them, replay one to a subscriber, manage subscriptions.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
subscriptions_app = typer.Typer(
    help="Subscriptions: the URLs events are POSTed to, signed.", no_args_is_help=True, rich_markup_mode=None
)
events_app.add_typer(subscriptions_app, name="subscriptions")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
SubscriptionArg = Annotated[int, typer.Argument(min=1, help="The subscription's id.", show_default=False)]


def _types(value: str) -> list[str]:
    from services.events import check_event_types

    try:
        return check_event_types(value.split(","))
    except ValueError as error:
        raise UsageError(str(error)) from None


@subscriptions_app.command("create")
def subscriptions_create(
    url: Annotated[str, typer.Option("--url", help="http(s) URL the events are POSTed to.", show_default=False)],
    types: Annotated[
        str,
        typer.Option("--types", help=f"Comma-separated event types: {', '.join(EVENT_TYPES)}.", show_default=False),
    ],
    description: Annotated[
        str | None, typer.Option("--description", help="What it is for.", callback=free_text(ShortText))
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Subscribe URL to the event TYPES; prints the signing secret, once."""
    from services.events import check_url, create_subscription

    configure_logging(settings())  # on stderr, masked: `--json` stays one document

    try:
        url = check_url(url)
    except ValueError as error:
        raise UsageError(f"--url: {error}") from None
    event_types = _types(types)
    created = call(
        lambda c: create_subscription(
            c.engine,
            c.client,
            url,
            event_types,
            created_by="cli",
            description=description,
            poll_seconds=c.settings.event_poll_seconds,
            task_queue=c.settings.task_queue,
        ),
        database=True,
        temporal="lazy",
    )
    echo(
        as_json,
        created.model_dump(mode="json"),
        f"subscription {created.id}: {created.url} ({', '.join(created.event_types)})\n"
        f"secret (shown once, keep it): {created.secret}",
    )


@subscriptions_app.command("list")
def subscriptions_list(as_json: JsonOpt = False) -> None:
    """Active subscriptions with their pending and failed deliveries (never the secrets)."""
    from services.events import list_subscriptions

    subs = call(lambda c: list_subscriptions(c.engine), database=True)
    if as_json:
        echo(True, [s.model_dump(mode="json") for s in subs])
        return
    typer.echo(f"{'id':<6}{'pending':>8}{'failed':>8}  url  types")
    for s in subs:
        typer.echo(f"{s.id:<6}{s.pending or 0:>8}{s.failed or 0:>8}  {s.url}  {','.join(s.event_types)}")


@subscriptions_app.command("delete")
def subscriptions_delete(subscription_id: SubscriptionArg, as_json: JsonOpt = False) -> None:
    """Stop delivering to SUBSCRIPTION (its run ends)."""
    from services.events import delete_subscription

    configure_logging(settings())  # on stderr, masked: `--json` stays one document

    sub = call(lambda c: delete_subscription(c.engine, c.client, subscription_id), database=True, temporal="lazy")
    echo(as_json, sub.model_dump(mode="json"), f"subscription {sub.id} deleted: nothing more goes to {sub.url}")


@events_app.command("list")
def events_list(
    type_: Annotated[str | None, typer.Option("--type", help="One event type.")] = None,
    object_type: Annotated[str | None, typer.Option("--object-type", help="retailer, payment, order, ...")] = None,
    object_id: Annotated[str | None, typer.Option("--object-id", help="The object's id.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="How many (newest first).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Outbound events, newest first."""
    from services.events import list_events

    if type_ is not None and type_ not in EVENT_TYPES:
        raise UsageError(f"--type must be one of {', '.join(EVENT_TYPES)} (got {type_!r})")
    rows = call(
        lambda c: list_events(c.engine, type=type_, object_type=object_type, object_id=object_id, limit=limit),
        database=True,
    )
    if as_json:
        echo(True, [r.model_dump(mode="json") for r in rows])
        return
    for r in rows:
        typer.echo(f"{r.occurred_at:%Y-%m-%d %H:%M:%S}  {r.event_id}  {r.type:<26}{r.object_type}/{r.object_id}")


@events_app.command("replay")
def events_replay(
    event_id: Annotated[str, typer.Argument(help="The event's id (evt_...).", show_default=False)],
    subscription: Annotated[
        int, typer.Option("--subscription", min=1, help="The subscription to deliver it to.", show_default=False)
    ],
    as_json: JsonOpt = False,
) -> None:
    """Deliver EVENT_ID to a subscription again (the same id: a receiver that has it ignores it)."""
    import re

    from services.events import replay_event

    configure_logging(settings())  # on stderr, masked: `--json` stays one document

    if not re.fullmatch(r"evt_[0-9a-f]{32}", event_id):
        raise UsageError(f"EVENT_ID must be evt_ and 32 hex digits (got {event_id!r})")
    queued = call(lambda c: replay_event(c.engine, c.client, event_id, subscription), database=True, temporal="lazy")
    echo(as_json, queued, f"{event_id}: queued for subscription {subscription}")
