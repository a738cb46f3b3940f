"""Delivering outbound events: one subscription's events, signed, in order, each until 2xx or given up.

Order (docs/ARCHITECTURE.md §6, "Outbound events"): a subscription's events go one at a time in
`outbound_events.id` order, the head retried with back-off before the next is tried, so a receiver
sees each object's events in the order they happened. Ids are taken as rows are inserted, and a
transaction that commits late can make a lower id visible after a higher one was delivered (only
across objects: one object's changes are serialised by its row lock), so the cursor
(`delivered_through`) is a low-water mark: below it every event is handled, and it never passes an
event written less than `SETTLE` ago; above it, what was handled is in `event_deliveries`.

At least once: a POST answered 2xx whose recording is lost (a crash) is sent again, with the same
`Jobctl-Event-Id`, which receivers de-duplicate on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from sqlalchemy import text
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.events.outbox import event_body
from schemas import ids
from schemas.events import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    DeliverEvents,
    DeliveryOutcome,
    EventDeliveryInput,
    EventDeliverySweep,
    EventDeliverySweepResult,
    signature,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from config.settings import Settings

log = structlog.get_logger(__name__)

SETTLE = "interval '5 minutes'"
"""The cursor never passes an event written less than this ago: a transaction that wrote a lower
id and has not committed yet would be skipped. No jobctl transaction stays open that long."""
BATCH_SECONDS = 30.0
"""One activity delivers for about this long, then hands back (`more`), so the workflow's history
records progress and a redeploy waits for little."""

SUBSCRIPTION = text(
    "SELECT id, url, secret, event_types, company_id, delivered_through, disabled_at"
    " FROM event_subscriptions WHERE id = :s"
)
_EVENT_COLUMNS = "e.id, e.event_id, e.type, e.object_type, e.object_id, e.company_id, e.payload, e.occurred_at"
_MATCHES = (
    "e.type = ANY(CAST(:types AS text[])) AND (CAST(:company AS text) IS NULL OR e.company_id = CAST(:company AS text))"
)
_HANDLED = (
    "EXISTS (SELECT 1 FROM event_deliveries d WHERE d.subscription_id = :s AND d.event_id = e.id"
    " AND d.status <> 'pending')"
)
NEXT_REPLAY = text(
    f"SELECT {_EVENT_COLUMNS}, d.queued_at, true AS replay FROM event_deliveries d"
    " JOIN outbound_events e ON e.id = d.event_id"
    " WHERE d.subscription_id = :s AND d.status = 'pending' AND d.replay ORDER BY e.id LIMIT 1"
)
NEXT_EVENT = text(
    f"SELECT {_EVENT_COLUMNS}, e.occurred_at AS queued_at, false AS replay FROM outbound_events e"
    f" WHERE e.id > :floor AND {_MATCHES} AND NOT {_HANDLED} ORDER BY e.id LIMIT 1"
)
ADVANCE_CURSOR = text(
    f"""
UPDATE event_subscriptions s SET delivered_through = c.target
FROM (SELECT LEAST(
    COALESCE((SELECT min(e.id) - 1 FROM outbound_events e
              WHERE e.id > :floor AND {_MATCHES} AND NOT {_HANDLED}),
             (SELECT max(id) FROM outbound_events)),
    COALESCE((SELECT id FROM outbound_events WHERE occurred_at < clock_timestamp() - {SETTLE}
              ORDER BY occurred_at DESC LIMIT 1), 0)) AS target) c
WHERE s.id = :s AND s.delivered_through < c.target
"""
)
"""Move the low-water mark up to just below the first unhandled matching event (or the newest
event), never past one written less than `SETTLE` ago; written only when it moves."""
RECORD = text(
    """
INSERT INTO event_deliveries AS d
    (subscription_id, event_id, status, attempts, last_status, last_error, queued_at, next_attempt_at, delivered_at)
VALUES (:s, :e, :status, 1, :http, :error, :queued, :next, CASE WHEN :status = 'delivered' THEN now() END)
ON CONFLICT (subscription_id, event_id) DO UPDATE SET
    status = EXCLUDED.status, attempts = d.attempts + 1, last_status = EXCLUDED.last_status,
    last_error = EXCLUDED.last_error, next_attempt_at = EXCLUDED.next_attempt_at,
    delivered_at = EXCLUDED.delivered_at, replay = d.replay AND EXCLUDED.status = 'pending', updated_at = now()
RETURNING d.attempts
"""
)
GIVE_UP = text(
    "UPDATE event_deliveries SET status = 'failed', replay = false, next_attempt_at = NULL, updated_at = now()"
    " WHERE subscription_id = :s AND event_id = :e AND queued_at < now() - make_interval(secs => :window)"
    " RETURNING attempts"
)
DELIVERY_WORKFLOW = "EventDeliveryWorkflow"
"""Started by name: activities never import a workflow (docs/ARCHITECTURE.md §1)."""
ACTIVE_SUBSCRIPTIONS = text("SELECT id FROM event_subscriptions WHERE disabled_at IS NULL ORDER BY id")


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """After the n-th failed attempt: initial, doubling, at most `maximum`."""
    return min(initial * 2 ** min(attempts - 1, 40), maximum)


@dataclass
class EventDeliveryActivities:
    engine: AsyncEngine
    settings: Settings
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.settings.event_http_timeout_seconds)
            self._session = aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "jobctl-events/1"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, url: str, secret: str, event: Any) -> tuple[int | None, str | None]:
        """POST the signed event; (HTTP status or None, error or None). Redirects are not followed."""
        body = event_body(
            event.event_id,
            event.type,
            event.occurred_at,
            event.object_type,
            event.object_id,
            event.company_id,
            event.payload,
        )
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(secret, int(time.time()), body),
            EVENT_ID_HEADER: event.event_id,
            EVENT_TYPE_HEADER: event.type,
        }
        try:
            async with self.session().post(url, data=body, headers=headers, allow_redirects=False) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return response.status, None
                return response.status, f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return None, f"{type(error).__name__}: {str(error)[:200]}"

    @activity.defn(name="events_deliver")
    async def deliver(self, request: DeliverEvents) -> DeliveryOutcome:
        """Deliver the subscription's pending events in order until none is left, the head fails
        (`retry_after_seconds`: its back-off), or `BATCH_SECONDS` pass (`more`)."""
        outcome = DeliveryOutcome()
        started = time.monotonic()
        s = self.settings
        while True:
            async with self.engine.connect() as conn:
                sub = (await conn.execute(SUBSCRIPTION, {"s": request.subscription_id})).first()
                if sub is None or sub.disabled_at is not None:
                    outcome.stopped = True
                    return outcome
                match = {"s": sub.id, "types": list(sub.event_types), "company": sub.company_id}
                event = (await conn.execute(NEXT_REPLAY, {"s": sub.id})).first() or (
                    await conn.execute(NEXT_EVENT, match | {"floor": sub.delivered_through})
                ).first()
                await conn.rollback()
            if event is None:  # idle: the mark passes what this subscription does not take
                async with self.engine.begin() as conn:
                    await conn.execute(ADVANCE_CURSOR, match | {"floor": sub.delivered_through})
                return outcome
            http, error = await self.post(sub.url, sub.secret, event)
            ok = error is None
            async with self.engine.begin() as conn:
                attempts = await conn.scalar(
                    RECORD,
                    {
                        "s": sub.id,
                        "e": event.id,
                        "status": "delivered" if ok else "pending",
                        "http": http,
                        "error": error,
                        "queued": event.queued_at,
                        "next": None,
                    },
                )
                gave_up = False
                if not ok:
                    gave_up = (
                        await conn.scalar(GIVE_UP, {"s": sub.id, "e": event.id, "window": s.event_give_up_hours * 3600})
                    ) is not None
                if ok or gave_up:
                    await conn.execute(ADVANCE_CURSOR, match | {"floor": sub.delivered_through})
            log.info(
                "events.attempt",
                subscription_id=sub.id,
                event_id=event.event_id,
                type=event.type,
                delivered=ok,
                http_status=http,
                attempts=attempts,
                gave_up=gave_up,
            )
            if ok:
                outcome.delivered += 1
            elif gave_up:
                outcome.given_up += 1
            else:
                wait = backoff_seconds(attempts, s.event_retry_initial_seconds, s.event_retry_max_seconds)
                async with self.engine.begin() as conn:
                    await conn.execute(
                        text(
                            "UPDATE event_deliveries SET next_attempt_at = now() + make_interval(secs => :w)"
                            " WHERE subscription_id = :s AND event_id = :e"
                        ),
                        {"w": wait, "s": sub.id, "e": event.id},
                    )
                outcome.retry_after_seconds = wait
                return outcome
            activity.heartbeat(outcome.delivered)
            if time.monotonic() - started > BATCH_SECONDS:
                outcome.more = True
                return outcome


@dataclass
class EventSweepActivities:
    engine: AsyncEngine
    client: Client
    task_queue: str

    @activity.defn(name="events_start_missing_deliveries")
    async def start_missing(self, sweep: EventDeliverySweep) -> EventDeliverySweepResult:
        """Start `event-delivery/{id}` for every active subscription whose run is not running (a
        start that finds it running does nothing): the safety net behind the start at creation."""
        async with self.engine.connect() as conn:
            ids = list((await conn.scalars(ACTIVE_SUBSCRIPTIONS)).all())
        result = EventDeliverySweepResult()
        for subscription_id in ids:
            if await start_delivery(self.client, subscription_id, sweep.poll_seconds, self.task_queue):
                result.started += 1
        return result


async def start_delivery(client: Client, subscription_id: int, poll_seconds: float, task_queue: str) -> bool:
    """Start the subscription's delivery run unless one is running; True if this call started it."""
    try:
        await client.start_workflow(
            DELIVERY_WORKFLOW,
            EventDeliveryInput(subscription_id=subscription_id, poll_seconds=poll_seconds),
            id=ids.event_delivery(subscription_id),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        return False
    except RPCError as error:  # the time-skipping server reports a running workflow as a bare ALREADY_EXISTS
        if error.status == RPCStatusCode.ALREADY_EXISTS:
            return False
        raise
    return True
