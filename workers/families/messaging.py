"""Messaging, a shared gateway: the exactly-once outbox and the Twilio sends on the `messaging` queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.cli.messaging import messaging_app
from workers.families.registry import Family, routes_of

if TYPE_CHECKING:
    from activities.deps import ActivityDeps
    from activities.messaging.send import MessagingActivities
    from activities.messaging.senders import Senders
    from activities.messaging.templates import Catalogue
    from config.settings import Settings


def _workflows() -> list[type]:
    from workflows.brake import MessagingBrakeWorkflow
    from workflows.messaging import MessageBatchWorkflow

    return [MessageBatchWorkflow, MessagingBrakeWorkflow]


def _brake_activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    """The `messaging-brake` workflow's writes to the brake row, on the `jobs` queue (database only)."""
    from activities.messaging.brake import BrakeActivities

    return [BrakeActivities(deps.engine).set_messaging_brake]


def sends(deps: ActivityDeps) -> MessagingActivities:
    """Twilio through the real SDK (the emulator when TWILIO_API_BASE is set)."""
    from datetime import timedelta

    from activities.churn.managelinks import manage_secret
    from activities.messaging.links import MessageLinks
    from activities.messaging.outbox import QuietHours
    from activities.messaging.send import MessagingActivities, SendPolicy
    from activities.messaging.twilio_gateway import TwilioGateway, twilio_client
    from config.settings import SettingsError

    settings = deps.settings
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        raise SettingsError("TWILIO_ACCOUNT_SID: required by the messaging worker (with TWILIO_AUTH_TOKEN)")
    catalogue = message_catalogue(settings)
    client = twilio_client(
        settings.twilio_api_base,
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        async_client=True,
        timeout=5.0,
    )
    callback = f"{settings.webhook_base_url.rstrip('/')}/webhooks/twilio/status" if settings.webhook_base_url else None
    gateway = TwilioGateway(client, status_callback=callback)
    deps.resources.push_async_callback(gateway.close)
    return MessagingActivities(
        deps.engine,
        gateway,
        sender_pools(settings),
        SendPolicy(
            daily_cap=settings.message_daily_cap,
            quiet_hours=QuietHours(settings.quiet_hours_start, settings.quiet_hours_end),
            paused_recheck=timedelta(seconds=settings.messaging_paused_recheck_seconds),
            lease=timedelta(seconds=settings.message_lease_seconds),
        ),
        per_second=settings.shared_send_rate,
        catalogue=catalogue,
        links=MessageLinks(
            deps.engine,
            checkout_url_template=settings.order_checkout_url_template,
            manage_url=settings.churn_manage_url,
            public_base_url=settings.public_base_url,
            manage_secret=manage_secret(settings),
        ),
    )


def sender_pools(settings: Settings) -> Senders:
    """Each channel's senders: its pool (TWILIO_*_SENDERS, each number paced at its own rate less
    the headroom) or its one number (TWILIO_*_FROM, on the shared pace at MESSAGES_PER_SECOND)."""
    from activities.messaging.senders import Sender, Senders
    from config.settings import SEND_RATE_HEADROOM, parse_sender_pool

    def pool(channel: str, spec: str | None, single: str) -> str | tuple[Sender, ...]:
        if not spec:
            return single
        prefix = "whatsapp:" if channel == "whatsapp" else ""
        return tuple(Sender(f"{prefix}{number}", rate * SEND_RATE_HEADROOM) for number, rate in parse_sender_pool(spec))

    return Senders(
        whatsapp=pool("whatsapp", settings.twilio_whatsapp_senders, settings.twilio_whatsapp_from),
        sms=pool("sms", settings.twilio_sms_senders, settings.twilio_sms_from),
        sticky=settings.sender_sticky,
    )


def message_catalogue(settings: Settings) -> Catalogue:
    """The catalogue with this deployment's Content SIDs; SettingsError (one line naming them) when
    WhatsApp templates lack one and they are required (real Twilio, or TWILIO_REQUIRE_CONTENT_SIDS):
    an out-of-session message would otherwise fail at send time, long after the deploy."""
    from activities.messaging.templates import CatalogueError, load_catalogue
    from config.settings import SettingsError

    try:
        catalogue = load_catalogue(settings.twilio_content_sids_file)
    except (CatalogueError, OSError) as exc:
        raise SettingsError(f"TWILIO_CONTENT_SIDS_FILE: {exc}") from None
    if settings.message_locales:
        try:
            catalogue = catalogue.in_locales(settings.message_locales.split(","))
        except CatalogueError as exc:
            raise SettingsError(f"MESSAGE_LOCALES: {exc}") from None
    if settings.content_sids_required and (missing := catalogue.missing_content_sids()):
        raise SettingsError(
            f"TWILIO_CONTENT_SIDS_FILE: no WhatsApp Content SID for {', '.join(missing)} (docs/OPERATIONS.md)"
        )
    return catalogue


def _requires(settings: Settings) -> dict[str, list[str]]:
    """The sends need Twilio's credentials and, where required, every WhatsApp Content SID."""
    from config.settings import SettingsError

    unset = [name.upper() for name in ("twilio_account_sid", "twilio_auth_token") if not getattr(settings, name)]
    if unset:
        return {"messaging": [f"{' and '.join(unset)} not set"]}
    try:
        message_catalogue(settings)
    except SettingsError as exc:
        return {"messaging": [str(exc)]}
    return {}


def _messaging_activities(deps: ActivityDeps) -> list[Callable[..., Any]]:
    activities = sends(deps)
    return [activities.send_message, activities.send_messages]


FAMILY = Family(
    name="messaging",
    cli=[("messaging", messaging_app)],
    workflows=_workflows,
    activities=_brake_activities,
    messaging_activities=_messaging_activities,
    requires=_requires,
    routes=routes_of("messaging"),
    scopes={
        "messaging:read": "the messaging brake's state and backlog (keys bound to no company)",
        "messaging:write": "pause or resume all outbound messaging (keys bound to no company)",
    },
    settings=(
        "twilio_account_sid",
        "twilio_auth_token",
        "twilio_whatsapp_from",
        "twilio_sms_from",
        "twilio_api_base",
        "twilio_content_sids_file",
        "twilio_require_content_sids",
        "message_locales",
        "messages_per_second",
        "twilio_sms_senders",
        "twilio_whatsapp_senders",
        "sender_sticky",
        "messaging_paused_recheck_seconds",
        "message_lease_seconds",
        "message_daily_cap",
        "quiet_hours_start",
        "quiet_hours_end",
        "order_checkout_url_template",
        "churn_manage_url",
    ),
)
