"""Outbound events from the outside: subscriptions, the events list and replays, for the CLI and the API.

A subscription's secret is made here and answered once, at creation; it is stored to sign (an HMAC
key must be readable) and never listed. Creating a subscription starts its delivery run
(`event-delivery/{id}`); Temporal unreachable then leaves it to the `event-delivery-sweep` schedule.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import structlog
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.service import RPCError

from activities.events.delivery import start_delivery
from schemas import ids
from schemas.errors import Refused
from schemas.events import COMPANY_EVENT_TYPES, EVENT_TYPES

log = structlog.get_logger(__name__)

MAX_URL_LENGTH = 2048


class EventsRefused(Refused):
    """Bad input or an action that cannot apply; `field` names the input at fault, if one is."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownSubscription(EventsRefused):
    pass


class UnknownEvent(EventsRefused):
    pass


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host, no credentials, no fragment; ValueError saying why."""
    url = url.strip()
    if not url or len(url) > MAX_URL_LENGTH:
        raise ValueError(f"the URL must be 1 to {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("the URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port refuses a malformed one
    except ValueError as error:
        raise ValueError(f"the URL is malformed ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise ValueError("the URL must not carry credentials (the signature authenticates us)")
    if parts.fragment:
        raise ValueError("the URL must not have a #fragment")
    return url


def check_event_types(types: list[str], company_id: str | None = None) -> list[str]:
    """Known, distinct event types (at least one); a company-bound subscription only its company's."""
    cleaned = sorted({t.strip() for t in types if t.strip()})
    if not cleaned:
        raise ValueError(f"name at least one event type; known: {', '.join(EVENT_TYPES)}")
    unknown = [t for t in cleaned if t not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
    if company_id is not None and (other := [t for t in cleaned if t not in COMPANY_EVENT_TYPES]):
        raise ValueError(
            f"event type(s) {', '.join(other)} carry no company: a key bound to company {company_id} may"
            f" subscribe to {', '.join(COMPANY_EVENT_TYPES)} only"
        )
    return cleaned


class Subscription(BaseModel):
    id: int
    url: str
    event_types: list[str]
    description: str | None
    company_id: str | None
    created_by: str
    created_at: datetime
    disabled_at: datetime | None
    delivered_through: int
    pending: int | None = None
    failed: int | None = None


class CreatedSubscription(Subscription):
    secret: str
    """Shown once: sign-checking key of the receiver (`Jobctl-Signature`)."""
    workflow_id: str | None
    """`event-delivery/{id}`, or None when Temporal was unreachable (the sweep starts it)."""


class Event(BaseModel):
    id: int
    event_id: str
    type: str
    object_type: str
    object_id: str
    company_id: str | None
    payload: dict[str, Any]
    occurred_at: datetime


_SUB_COLUMNS = "id, url, event_types, description, company_id, created_by, created_at, disabled_at, delivered_through"


async def create_subscription(
    engine: AsyncEngine,
    client: Client | None,
    url: str,
    event_types: list[str],
    *,
    created_by: str,
    description: str | None = None,
    company_id: str | None = None,
    poll_seconds: float = 10.0,
    task_queue: str = "jobs",
) -> CreatedSubscription:
    """Store the subscription (its cursor at the newest event: it gets what happens from now on)
    and start its delivery run. `EventsRefused` naming the field for bad input; nothing stored then."""
    try:
        url = check_url(url)
    except ValueError as error:
        raise EventsRefused(str(error), field="url") from None
    try:
        types = check_event_types(event_types, company_id)
    except ValueError as error:
        raise EventsRefused(str(error), field="event_types") from None
    secret = "whsec_" + secrets.token_hex(32)
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "INSERT INTO event_subscriptions"
                    " (url, event_types, secret, description, company_id, created_by, delivered_through)"
                    " VALUES (:url, :types, :secret, :description, :company, :by,"
                    "         (SELECT COALESCE(max(id), 0) FROM outbound_events))"
                    f" RETURNING {_SUB_COLUMNS}"
                ),
                {
                    "url": url,
                    "types": types,
                    "secret": secret,
                    "description": description,
                    "company": company_id,
                    "by": created_by,
                },
            )
        ).one()
    workflow_id: str | None = ids.event_delivery(row.id)
    if client is not None:
        try:
            await start_delivery(client, row.id, poll_seconds, task_queue)
        except (RPCError, RuntimeError) as error:  # RuntimeError: a lazy client's failed connect
            log.warning("events.delivery_not_started", subscription_id=row.id, error=str(error))
            workflow_id = None
    else:
        workflow_id = None
    return CreatedSubscription(**row._asdict(), secret=secret, workflow_id=workflow_id)


async def list_subscriptions(engine: AsyncEngine, *, company_id: str | None = None) -> list[Subscription]:
    """Active subscriptions (a bound key's: its company's), with their pending and failed counts."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    f"SELECT {', '.join('s.' + c for c in _SUB_COLUMNS.split(', '))},"
                    " (SELECT count(*) FROM event_deliveries d WHERE d.subscription_id = s.id"
                    "  AND d.status = 'pending') AS pending,"
                    " (SELECT count(*) FROM event_deliveries d WHERE d.subscription_id = s.id"
                    "  AND d.status = 'failed') AS failed"
                    " FROM event_subscriptions s WHERE s.disabled_at IS NULL"
                    " AND (CAST(:company AS text) IS NULL OR s.company_id = CAST(:company AS text)) ORDER BY s.id"
                ),
                {"company": company_id},
            )
        ).all()
    return [Subscription(**r._asdict()) for r in rows]


async def delete_subscription(
    engine: AsyncEngine, client: Client | None, subscription_id: int, *, company_id: str | None = None
) -> Subscription:
    """Disable it: nothing more is delivered, its run ends at its next round (woken now)."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "UPDATE event_subscriptions SET disabled_at = COALESCE(disabled_at, now())"
                    " WHERE id = :s AND disabled_at IS NULL"
                    " AND (CAST(:company AS text) IS NULL OR company_id = CAST(:company AS text))"
                    f" RETURNING {_SUB_COLUMNS}"
                ),
                {"s": subscription_id, "company": company_id},
            )
        ).first()
    if row is None:
        raise UnknownSubscription(f"no active subscription {subscription_id}", field="subscription_id")
    await _wake(client, subscription_id)
    return Subscription(**row._asdict())


async def list_events(
    engine: AsyncEngine,
    *,
    type: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    company_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Event]:
    """Events, newest first, filtered by type and object (a bound key: its company's)."""
    if type is not None and type not in EVENT_TYPES:
        raise EventsRefused(f"unknown event type {type}; known: {', '.join(EVENT_TYPES)}", field="type")
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, event_id, type, object_type, object_id, company_id, payload, occurred_at"
                    " FROM outbound_events WHERE (CAST(:type AS text) IS NULL OR type = CAST(:type AS text))"
                    " AND (CAST(:otype AS text) IS NULL OR object_type = CAST(:otype AS text))"
                    " AND (CAST(:oid AS text) IS NULL OR object_id = CAST(:oid AS text))"
                    " AND (CAST(:company AS text) IS NULL OR company_id = CAST(:company AS text))"
                    " ORDER BY id DESC LIMIT :limit OFFSET :offset"
                ),
                {
                    "type": type,
                    "otype": object_type,
                    "oid": object_id,
                    "company": company_id,
                    "limit": limit,
                    "offset": offset,
                },
            )
        ).all()
    return [Event(**r._asdict()) for r in rows]


async def replay_event(
    engine: AsyncEngine, client: Client | None, event_id: str, subscription_id: int, *, company_id: str | None = None
) -> dict[str, Any]:
    """Deliver the event to the subscription again (after its failure, or for a receiver that lost
    it), before the subscription's next new event; the same `Jobctl-Event-Id`."""
    async with engine.begin() as conn:
        event = (
            await conn.execute(
                text(
                    "SELECT id, type, company_id FROM outbound_events WHERE event_id = :e"
                    " AND (CAST(:company AS text) IS NULL OR company_id = CAST(:company AS text))"
                ),
                {"e": event_id, "company": company_id},
            )
        ).first()
        if event is None:
            raise UnknownEvent(f"no event {event_id}", field="event_id")
        sub = (
            await conn.execute(
                text(
                    "SELECT id, event_types, company_id, delivered_through FROM event_subscriptions"
                    " WHERE id = :s AND disabled_at IS NULL"
                    " AND (CAST(:company AS text) IS NULL OR company_id = CAST(:company AS text))"
                ),
                {"s": subscription_id, "company": company_id},
            )
        ).first()
        if sub is None:
            raise UnknownSubscription(f"no active subscription {subscription_id}", field="subscription_id")
        if event.type not in sub.event_types or (sub.company_id is not None and sub.company_id != event.company_id):
            raise EventsRefused(
                f"subscription {subscription_id} does not receive {event.type} events of this object",
                field="subscription_id",
            )
        handled = await conn.scalar(
            text("SELECT status <> 'pending' FROM event_deliveries WHERE subscription_id = :s AND event_id = :e"),
            {"s": subscription_id, "e": event.id},
        )
        if not handled and event.id > sub.delivered_through:  # sent now, it would pass the events before it
            raise EventsRefused(
                f"{event_id} has not had its turn at subscription {subscription_id} yet: it is delivered in order,"
                " after the events before it",
                field="event_id",
            )
        await conn.execute(
            text(
                "INSERT INTO event_deliveries (subscription_id, event_id, status, replay, queued_at)"
                " VALUES (:s, :e, 'pending', true, now())"
                " ON CONFLICT (subscription_id, event_id) DO UPDATE SET status = 'pending', replay = true,"
                " queued_at = now(), next_attempt_at = NULL, updated_at = now()"
            ),
            {"s": subscription_id, "e": event.id},
        )
    await _wake(client, subscription_id)
    return {"event_id": event_id, "subscription_id": subscription_id, "status": "pending"}


async def _wake(client: Client | None, subscription_id: int) -> None:
    """Signal the run to look now; it finds the change at its next poll anyway."""
    if client is None:
        return
    try:
        await client.get_workflow_handle(ids.event_delivery(subscription_id)).signal("wake")
    except (RPCError, RuntimeError) as error:  # RuntimeError: a lazy client's failed connect
        log.info("events.wake_skipped", subscription_id=subscription_id, error=str(error))
