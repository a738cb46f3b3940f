"""`send_message`: exactly-once WhatsApp/SMS through the outbox.

At-least-once activities become exactly-once sends: the key's row is claimed and marked
`sending` (with the channel, the sender and a lease) before Twilio is called, the sid is stored
after. An attempt that finds another's live lease fails retryable without sending; one that
finds `sending` with the lease over asks Twilio what it already accepted before it sends again.
Permanent provider errors are recorded on the row and raised as non-retryable; everything else is
retried by Temporal.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError
from twilio.base.exceptions import TwilioRestException

from activities.database import autocommit, driver_connection
from activities.errors import permanent
from activities.messaging import outbox
from activities.messaging.links import LINK_FIELDS, MessageLinks
from activities.messaging.outbox import QuietHours, Recipient
from activities.messaging.senders import Sender, Senders, recipient_key
from activities.messaging.templates import Catalogue, Template, UnknownTemplate, Variant, load_catalogue
from activities.messaging.twilio_gateway import Accepted, TwilioGateway
from schemas.messaging import BatchItemOutcome, Channel, SendBatch, SendBatchResult, SendMessage, SendOutcome

log = structlog.get_logger(__name__)

INVALID_RECIPIENT = {21211, 21612, 21614, 21408}
INVALID_SENDER = {21212, 21606}
OPTED_OUT = 21610
OUTSIDE_SESSION = 63016
WHATSAPP_REFUSED = {OUTSIDE_SESSION, 63003, 63024, 63032}
"""WhatsApp cannot take this message where SMS may: outside the session (63016), no WhatsApp
account at the number (63003), an invalid WhatsApp recipient (63024), a recipient Meta holds out of
business messages (63032). The message falls back to SMS once, under the same key."""
BUSY = {21611, 30001, 63018, 20429}


@dataclass(frozen=True)
class SendPolicy:
    daily_cap: int = 10
    quiet_hours: QuietHours = QuietHours()
    lease: timedelta = timedelta(seconds=20)
    """How long an attempt owns a `sending` row: beyond the Twilio timeout (5 s) twice (WhatsApp,
    then its SMS fallback), with room. A send that waits for its pace slot holds it that much longer
    (the lease starts with the slot). It is also what a killed worker's messages wait before another
    attempt resolves them at Twilio: 30 s before, 20 s now."""
    call_allowance: timedelta = timedelta(seconds=10)
    """What an attempt keeps for its Twilio calls after its pace wait: a slot further away than the
    attempt's start-to-close timeout less this is not taken, and the send is retried when it frees."""
    paused_recheck: timedelta = timedelta(minutes=1)
    """While the brake is on, when a held message is tried again."""


@dataclass
class _Attempt:
    """Where this attempt's next Twilio call goes (a fallback moves it; a pace slot may pick the sender)."""

    key: str
    who: str  # the recipient's type and id: a sticky sender's key
    channel: Channel
    sender: Sender


def _address(channel: str, phone: str) -> str:
    return f"whatsapp:{phone}" if channel == "whatsapp" else phone


def _now() -> datetime:
    """The later of this worker's clock and the time Temporal scheduled this attempt.

    In production they agree (the schedule is a little earlier); under a time-skipping test
    server, the schedule carries the skipped-to time, so quiet hours end when a workflow's
    durable timer says they do.
    """
    wall = datetime.now(UTC)
    try:
        scheduled = activity.info().current_attempt_scheduled_time
    except RuntimeError:  # not in an activity
        return wall
    return max(wall, scheduled) if scheduled.tzinfo else wall


def _whatsapp_phones(messages: Sequence[SendMessage], recipients: Mapping[tuple[str, str], Recipient]) -> list[str]:
    """The numbers of a batch's recipients whose message may go by WhatsApp (their sessions matter)."""
    phones = []
    for message in messages:
        recipient = recipients.get((message.recipient_type, message.recipient_id))
        if recipient is not None and recipient.phone and (message.channel or recipient.preferred_channel) == "whatsapp":
            phones.append(recipient.phone)
    return phones


def _count(template: str, outcome: str) -> None:
    """messages_sent_total{template, outcome} on the worker's Prometheus endpoint."""
    activity.metric_meter().create_counter(
        "messages_sent_total", "Messages by template and outcome (sent, duplicate, suppressed, deferred, failed)"
    ).add(1, {"template": template, "outcome": outcome})


def _soonest_retry(transient: list[BaseException]) -> timedelta | None:
    """When every message left says when it can go (a killed attempt's lease ends, a pace slot
    frees), the batch is retried when the first can: with the retry policy's backoff instead, a
    batch behind a killed pod's leases waited 16, then 32 s more after they had ended, holding one
    of a reminders day's two lanes (the scale-out drill's throughput after a kill: 0.70 of before).
    None when one of them cannot say (a network error): the policy's backoff."""
    delays = [e.next_retry_delay for e in transient if isinstance(e, ApplicationError) and e.next_retry_delay]
    return min(delays) if delays and len(delays) == len(transient) else None


INTERACTIVE_PRIORITY = 2
"""Task priority 1-2 (workflows.messaging.MESSAGE_PRIORITY: HELP replies, manual nudges, credit and
order notices): someone is waiting for the message, so its pace slot is not queued behind bulk's."""


def _interactive() -> bool:
    """This send's activity task was scheduled at an interactive priority."""
    try:
        level = activity.info().priority.priority_key
    except RuntimeError:  # not in an activity (tests calling the method directly)
        return False
    return level is not None and level <= INTERACTIVE_PRIORITY


IN_FLIGHT_ELSEWHERE = "SendInProgress"
"""A message under another attempt's live lease. A single send fails retryable and Temporal retries
it when the lease ends; in a batch it is a `deferred` outcome (reason `in_flight`, `retry_at` the
lease's end): a batch that waited for it held one of a reminders day's lanes for up to a lease, 20 s
(the scale-out drill)."""

BEAT_EVERY = 1.0
"""Seconds between a batch's heartbeats while its messages go out (its timeout is 15 s)."""


class _Pace:
    """Spaces starts `1/per_second` apart (a batch's, or every send's in one process)."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next = 0.0

    async def wait(self, after: float = 0.0) -> None:
        """The next free slot, no sooner than `after` seconds from now."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now + after, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


def _attempt_deadline() -> float:
    """When this activity attempt times out, on the event loop's clock (infinity: no timeout)."""
    timeout = activity.info().start_to_close_timeout
    return asyncio.get_running_loop().time() + timeout.total_seconds() if timeout else math.inf


def _resumed(details: Sequence[Any]) -> list[BatchItemOutcome]:
    """The outcomes an earlier attempt of this batch heartbeated before it failed."""
    if not details:
        return []
    return SendBatchResult.model_validate(details[0]).outcomes


class _Body:
    """A message's text, rendered once from its complete `params` (links included)."""

    def __init__(self, variant: Variant, params: dict[str, str]) -> None:
        self.variant, self.params = variant, params
        try:
            self._text = variant.render(params)
        except ValueError as exc:
            raise permanent("InvalidTemplateParams", str(exc)) from None

    async def text(self) -> str:
        return self._text


@dataclass(frozen=True)
class _Ready:
    template: Template
    body: _Body
    local: datetime  # now, in the recipient's time zone
    claim: outbox.Claim


class _Claims:
    """First-seen claims of the sends in flight in this process, written together (issue #38 point 3).

    A claim that arrives while none is being written goes at once; those that arrive meanwhile wait
    for it and then go as one statement (`outbox.claim_new_many`). Under load a statement carries
    many claims; alone, a send waits for nobody. Two claims of one key, or of one recipient (whose
    daily cap counts the other), never share a statement: the second waits for the next, so each
    sees the rows before it as a statement of its own would have."""

    MAX = 100

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: list[tuple[outbox.Claim, asyncio.Future[outbox.NewClaim | None]]] = []
        self._writer: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference

    async def claim(self, claim: outbox.Claim) -> outbox.NewClaim | None:
        done: asyncio.Future[outbox.NewClaim | None] = asyncio.get_running_loop().create_future()
        self._queue.append((claim, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await done

    async def _write(self) -> None:
        try:
            while self._queue:
                group: list[tuple[outbox.Claim, asyncio.Future[outbox.NewClaim | None]]] = []
                later: list[tuple[outbox.Claim, asyncio.Future[outbox.NewClaim | None]]] = []
                keys: set[str] = set()
                recipients: set[tuple[str, str]] = set()
                for item in self._queue:
                    hold = item[0].hold
                    who = (hold.recipient.type, hold.recipient.id)
                    if len(group) >= self.MAX or hold.key in keys or who in recipients or item[1].done():
                        if not item[1].done():  # a cancelled send's claim is dropped
                            later.append(item)
                        continue
                    group.append(item)
                    keys.add(hold.key)
                    recipients.add(who)
                self._queue = later
                if not group:
                    continue
                try:
                    async with driver_connection(self._engine) as conn:
                        results = await outbox.claim_new_many(conn, [claim for claim, _ in group])
                except Exception as error:  # noqa: BLE001 - each send fails with it, as its own statement would
                    for _, done in group:
                        if not done.done():
                            done.set_exception(error)
                else:
                    for (_, done), result in zip(group, results, strict=True):
                        if not done.done():
                            done.set_result(result)
        finally:
            self._writer = None


class _SentMarks:
    """A batch's `sent` marks, written `FLUSH_AT` at a time (or `FLUSH_AFTER` seconds after the
    first waiting) in one statement each, instead of one statement per message.

    Until its mark is written a sent message's row stays `sending` under the attempt's lease, as it
    was between the Twilio call and its own UPDATE before: a crash in between leaves it to the next
    attempt, which waits out the lease and finds the message at Twilio (`_find_ours`), so it is not
    sent twice. Marks that could not be written come back from `close`: the batch does not report
    those messages, and its retry resolves them the same way."""

    FLUSH_AT = 50
    FLUSH_AFTER = 0.2

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._waiting: list[tuple[str, str, str, datetime]] = []
        self._writes: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._unwritten: list[str] = []

    def add(self, key: str, sid: str, channel: str, sent_at: datetime) -> None:
        self._waiting.append((key, sid, channel, sent_at))
        if len(self._waiting) >= self.FLUSH_AT:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_AFTER, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows, self._waiting = self._waiting, []
        if rows:
            write = asyncio.create_task(self._write(rows))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)

    async def _write(self, rows: list[tuple[str, str, str, datetime]]) -> None:
        try:
            async with driver_connection(self._engine) as conn:
                await outbox.set_sent_many(conn, rows)
        except Exception as error:  # noqa: BLE001 - the batch's retry resolves these rows at Twilio
            log.warning("messages.sent_marks_unwritten", count=len(rows), error_type=type(error).__name__)
            self._unwritten.extend(key for key, *_ in rows)

    async def close(self) -> list[str]:
        """Write what is waiting; the keys whose marks could not be written."""
        self._flush()
        while self._writes:
            await asyncio.gather(*self._writes)
        return self._unwritten


class MessagingActivities:
    def __init__(
        self,
        engine: AsyncEngine,
        gateway: TwilioGateway,
        senders: Senders,
        policy: SendPolicy = SendPolicy(),
        per_second: float | None = None,
        catalogue: Catalogue | None = None,
        links: MessageLinks | None = None,
    ) -> None:
        # The message kinds' texts and Content SIDs (config/templates.toml and the deployment's SIDs).
        self._catalogue = catalogue or load_catalogue()
        # The rate the senders outside a pool share, for the whole cluster, in messages: each send
        # reserves its slot in `messaging_pace` (outbox.reserve_slot) just before it calls Twilio.
        # None: unlimited. A pool's numbers each have their own (activities/messaging/senders.py).
        self._per_second = per_second
        self._engine = engine
        # Single statements need no transaction: without one, each is one round trip instead of
        # BEGIN, the statement and COMMIT (the common send is three statements).
        self._statements = autocommit(engine)
        self._gateway = gateway
        self._senders = senders
        self._claims = _Claims(self._statements)
        self._paces_ready: set[str] = set()  # pool numbers whose `messaging_pace` row this process made sure of
        self._policy = policy
        self._links = links  # None: links only as the workflow passed them (tests without Stripe)

    @activity.defn(name="send_messages")
    async def send_messages(self, batch: SendBatch) -> SendBatchResult:
        """Send a batch, `max_in_flight` at a time: one activity (one Temporal action) for many messages.

        Each message is still its own exactly-once send under its own key, and reserves its own
        slot of the cluster's rate (`messaging_pace`), so the limit holds in messages whatever a
        batch carries. A permanent failure is that message's outcome; a transient one fails the
        activity once the rest went out, after heartbeating the outcomes so far: Temporal's retry
        resumes from them and sends only what is left, and no message is counted twice.
        """
        decided = {o.idempotency_key: o for o in _resumed(activity.info().heartbeat_details)}
        deadline = _attempt_deadline()
        slots = asyncio.Semaphore(batch.max_in_flight)
        pace = _Pace(batch.per_second) if batch.per_second else None
        transient: list[BaseException] = []
        loop, last_beat = asyncio.get_running_loop(), -math.inf

        def beat() -> None:
            """A message done is a sign of life, given at most every BEAT_EVERY: the SDK sends
            the server one per 0.8 x the heartbeat timeout anyway, and a call per message cost
            the batch a task and a conversion each (issue #38 point 3)."""
            nonlocal last_beat
            if loop.time() - last_beat >= BEAT_EVERY:
                last_beat = loop.time()
                activity.heartbeat()

        async def one(message: SendMessage) -> None:
            async with slots:
                if pace is not None:
                    await pace.wait()
                try:
                    outcome = await self._send_one(message, deadline, recipients, marks, sessions)
                except ApplicationError as error:
                    if error.type == IN_FLIGHT_ELSEWHERE and error.next_retry_delay:
                        # Another attempt's lease (a killed pod's, a run that continued as new): the
                        # workflow holds it on a timer until the lease ends, so the batch frees its lane.
                        decided[message.idempotency_key] = BatchItemOutcome(
                            idempotency_key=message.idempotency_key,
                            status="deferred",
                            reason="in_flight",
                            retry_at=datetime.now(UTC) + error.next_retry_delay,
                        )
                        return
                    if not error.non_retryable:
                        transient.append(error)
                        return
                    decided[message.idempotency_key] = BatchItemOutcome(
                        idempotency_key=message.idempotency_key, status="failed", reason=error.type
                    )
                except Exception as error:  # noqa: BLE001 - network and DB errors: retry the batch
                    transient.append(error)
                    return
                else:
                    decided[message.idempotency_key] = BatchItemOutcome(
                        idempotency_key=message.idempotency_key,
                        status=outcome.status,
                        duplicate=outcome.duplicate,
                        reason=outcome.reason,
                        retry_at=outcome.retry_at,
                    )
                beat()

        unique = {m.idempotency_key: m for m in batch.messages}  # a key twice in a batch is sent once
        todo = [m for key, m in unique.items() if key not in decided]
        # The batch's recipients in one read, not one per message (issue #38 point 3), and the
        # WhatsApp sessions of those who may get WhatsApp in one more: no Twilio call per send.
        async with driver_connection(self._statements) as conn:
            recipients = await outbox.load_recipients(conn, [(m.recipient_type, m.recipient_id) for m in todo])
            sessions = await outbox.load_sessions(conn, _whatsapp_phones(todo, recipients), _now())
        marks = _SentMarks(self._statements)
        try:
            await asyncio.gather(*(one(m) for m in todo))
        finally:
            for key in await marks.close():  # sent, but not recorded: the retry finds them at Twilio
                decided.pop(key, None)
                transient.append(RuntimeError(f"the sent mark of {key} was not written"))
        if transient:
            log.warning(
                "messages.batch_incomplete",
                failed=len(transient),
                batch=len(batch.messages),
                errors=dict(Counter(getattr(e, "type", None) or type(e).__name__ for e in transient)),
            )
            activity.heartbeat(SendBatchResult(outcomes=list(decided.values())))  # where the retry resumes
            raise ApplicationError(
                f"{len(transient)} of {len(batch.messages)} messages hit transient errors; retrying the rest",
                type="BatchIncomplete",
                next_retry_delay=_soonest_retry(transient),
            )
        outcomes, seen = [], set()
        for message in batch.messages:
            outcome, key = decided[message.idempotency_key], message.idempotency_key
            if key in seen and outcome.status == "sent":
                outcome = outcome.model_copy(update={"duplicate": True})
            seen.add(key)
            outcomes.append(outcome)
        return SendBatchResult(outcomes=outcomes)

    @activity.defn(name="send_message")
    async def send_message(self, request: SendMessage) -> SendOutcome:
        return await self._send_one(request, _attempt_deadline())

    async def _send_one(
        self,
        request: SendMessage,
        deadline: float,
        recipients: Mapping[tuple[str, str], Recipient] | None = None,
        marks: _SentMarks | None = None,
        sessions: Mapping[tuple[str, str], datetime] | None = None,
    ) -> SendOutcome:
        """One message, exactly once under its key; `deadline` (event-loop time) ends this attempt.
        A batch passes its `recipients`, read at once (`outbox.load_recipients`), its `marks`,
        which write the sent rows together, and its recipients' open WhatsApp `sessions`
        (`outbox.load_sessions`); None: each is one statement here."""
        try:
            template = self._catalogue.get(request.template, request.template_version)
        except UnknownTemplate as exc:
            raise permanent("UnknownTemplate", str(exc)) from None
        if recipients is None:
            # A single send's first two statements (who, then the claim) share one pooled connection.
            async with driver_connection(self._statements) as conn:
                recipient = await outbox.load_recipient(conn, request.recipient_type, request.recipient_id)
                ready = await self._ready(request, template, recipient)
                new = await outbox.claim_new(conn, ready.claim)
        else:  # a batch's: its recipients were read at once, and claims go together (`_Claims`)
            ready = await self._ready(request, template, recipients.get((request.recipient_type, request.recipient_id)))
            new = await self._claims.claim(ready.claim)
        hold, local, template, body = ready.claim.hold, ready.local, ready.template, ready.body
        recipient, channel = hold.recipient, hold.channel

        try:
            decided = await self._claim(request, hold, local, template, body, new)
            outcome = decided or await self._send(
                request, recipient, channel, template, body, deadline, marks, sessions
            )
        except ApplicationError as error:
            _count(template.name, "failed" if error.non_retryable else "retrying")
            raise
        _count(template.name, "duplicate" if outcome.duplicate else outcome.status)
        return outcome

    async def _ready(self, request: SendMessage, template: Template, recipient: Recipient | None) -> _Ready:
        """What the claim needs: the text, and the rules' inputs for this recipient now."""
        if recipient is None:
            raise permanent("UnknownRecipient", f"no {request.recipient_type} {request.recipient_id}")
        channel = request.channel or recipient.preferred_channel
        params = {**{k: str(v) for k, v in request.params.items()}, "first_name": recipient.first_name}
        template, body = await self._body(request, template, params, recipient)
        now = _now()
        local = now.astimezone(ZoneInfo(recipient.timezone))
        hold = outbox.Hold(
            request.idempotency_key,
            recipient,
            channel,
            self._policy.daily_cap,
            self._policy.quiet_hours.holds(local),
            now,
        )
        claim = outbox.Claim(
            hold,
            request.template,
            template.version,
            sender=self._senders.of(channel, recipient_key(recipient.type, recipient.id)).address,
            lease=self._policy.lease,
        )
        return _Ready(template, body, local, claim)

    async def _body(
        self, request: SendMessage, template: Template, params: dict[str, str], recipient: Recipient
    ) -> tuple[Template, _Body]:
        """The template and the text to send, in the recipient's locale (its amounts in its
        currency). Links (`activities/messaging/links.py`) are made at send time; a template whose
        link cannot be had falls back to the newest version without it, when the caller asked for
        the newest (`order_followup` without ORDER_CHECKOUT_URL_TEMPLATE)."""
        while True:
            wanted = set(template.fields) & LINK_FIELDS
            links = await self._links.prepare(request, wanted, params) if wanted and self._links else None
            if not wanted or links is not None or request.template_version is not None or template.version == 1:
                break
            if self._links is None and wanted <= set(params):
                break
            try:
                template = self._catalogue.get(request.template, template.version - 1)
            except UnknownTemplate:
                break
        ready = {**params, **(links.ready if links else {})}
        if missing := [f for f in template.fields if f not in ready]:
            raise permanent(
                "InvalidTemplateParams", f"template {template.name} v{template.version} needs {', '.join(missing)}"
            )
        ready = template.localise(ready, recipient.currency, recipient.locale)
        variant = template.variant(recipient.locale)
        return template, _Body(variant, ready)

    async def _claim(
        self,
        request: SendMessage,
        hold: outbox.Hold,
        local: datetime,
        template: Template,
        body: _Body,
        new: outbox.NewClaim | None,
    ) -> SendOutcome | None:
        """Decide from the first-seen claim (`new`) or, for a key seen before, lock its row: already
        done, held back, being sent by another attempt, or ours."""
        key, recipient, channel, now = request.idempotency_key, hold.recipient, hold.channel, hold.now
        sender = self._senders.of(channel, recipient_key(recipient.type, recipient.id)).address
        if new is not None:  # a first-seen key: the common case, decided by the claim
            if new.status == "sending":
                return None
            held = self._hold(new.reason or new.status, channel, local)
            log.info("message.held_back", idempotency_key=key, status=held.status, reason=held.reason)
            return held
        async with self._engine.begin() as conn:
            row = await outbox.claim(conn, request, channel, template.version)
            if row.status in ("sent", "delivered", "undelivered"):
                return SendOutcome(status="sent", provider_sid=row.provider_sid, channel=row.channel, duplicate=True)
            if row.status == "failed":
                raise permanent(row.reason or "ProviderRejected", f"message {key} failed earlier", code=row.error_code)
            if row.status == "suppressed":
                return SendOutcome(status="suppressed", channel=row.channel, reason=row.reason)
            if row.status == "sending":
                if row.lease_left is not None and row.lease_left > 0:
                    # Another attempt may be waiting for Twilio right now: neither send nor look up.
                    log.info("message.lease_held", idempotency_key=key, seconds_left=round(row.lease_left, 1))
                    raise ApplicationError(
                        f"message {key} is being sent by another attempt",
                        type=IN_FLIGHT_ELSEWHERE,
                        next_retry_delay=timedelta(seconds=float(row.lease_left) + 1),
                    )
                if recipient.phone:
                    sid = await self._find_ours(conn, row, recipient.phone, await body.text())
                    if sid:
                        await outbox.set_status(conn, key, "sent", provider_sid=sid, sent_at=now, lease_until=None)
                        log.info("message.resolved_after_crash", idempotency_key=key, provider_sid=sid)
                        return SendOutcome(status="sent", provider_sid=sid, channel=row.channel, duplicate=True)
            reason = await outbox.hold_reason(conn, hold)
            if reason is not None:
                held = self._hold(reason, channel, local)
                await outbox.set_status(conn, key, held.status, reason=held.reason, lease_until=None)
                log.info("message.held_back", idempotency_key=key, status=held.status, reason=held.reason)
                return held
            await outbox.take_lease(
                conn,
                key,
                channel=channel,
                sender=sender,
                content_sid=None,
                lease=self._policy.lease,
                attempts=row.attempts + 1,
                reason=None,
            )
        return None

    async def _find_ours(self, conn: AsyncConnection, row: Any, phone: str, body: str) -> str | None:
        """The message the attempt that lost its lease got Twilio to accept, if any.

        Looked up where that attempt sent it (the channel and sender recorded before the call),
        created since it claimed the row, with our text; a template send (no text at Twilio)
        only matches a message no other key recorded as its own.
        """
        sender = row.sender or self._senders.default(row.channel)
        since = (row.lease_started_at or row.updated_at) - timedelta(seconds=1)
        candidates = await self._gateway.sent_since(to=_address(row.channel, phone), from_=sender, since=since)
        mine = [c for c in candidates if c.body == body or (row.content_sid and not c.body)]
        others = await outbox.owned_sids(conn, [c.sid for c in mine])
        mine = [c for c in mine if c.sid not in others]
        return mine[-1].sid if mine else None  # newest first: the oldest is the first send

    def _hold(self, reason: str, channel: Channel, local: datetime) -> SendOutcome:
        """Quiet hours and the brake defer the message (same key, later); every other reason suppresses it."""
        if reason == "quiet_hours":
            retry_at = self._policy.quiet_hours.next_allowed(local).astimezone(UTC)
            return SendOutcome(status="deferred", channel=channel, reason=reason, retry_at=retry_at)
        if reason == "paused":
            retry_at = local.astimezone(UTC) + self._policy.paused_recheck
            return SendOutcome(status="deferred", channel=channel, reason=reason, retry_at=retry_at)
        return SendOutcome(status="suppressed", channel=channel, reason=reason)

    async def _send(
        self,
        request: SendMessage,
        recipient: Recipient,
        channel: Channel,
        template: Template,
        body: _Body,
        deadline: float,
        marks: _SentMarks | None = None,
        sessions: Mapping[tuple[str, str], datetime] | None = None,
    ) -> SendOutcome:
        key = request.idempotency_key
        assert recipient.phone
        who = recipient_key(recipient.type, recipient.id)
        attempt = _Attempt(key, who, channel, self._senders.of(channel, who))
        try:
            text = await body.text()
        except Exception as error:
            async with self._engine.begin() as conn:  # never reached Twilio: free the row for the retry
                if isinstance(error, ApplicationError) and error.non_retryable:
                    await outbox.set_status(conn, key, "failed", reason=error.type, lease_until=None)
                else:
                    await outbox.set_status(conn, key, "queued", reason="link_unavailable", lease_until=None)
            raise
        await self._wait_for_slot(attempt, deadline)
        try:
            accepted = await self._deliver(
                attempt, recipient.phone, body.variant, body.params, text, deadline, sessions
            )
        except TwilioRestException as exc:
            await self._record_failure(request, recipient, attempt.channel, exc)  # always raises
            raise AssertionError("unreachable") from exc
        if marks is not None:
            marks.add(key, accepted.sid, attempt.channel, _now())
        else:
            async with driver_connection(self._statements) as conn:
                await outbox.set_sent(conn, key, accepted.sid, attempt.channel, _now())
        log.info(
            "message.sent",
            idempotency_key=key,
            provider_sid=accepted.sid,
            channel=attempt.channel,
            template=template.name,
        )
        return SendOutcome(status="sent", provider_sid=accepted.sid, channel=attempt.channel)

    async def _wait_for_slot(self, attempt: _Attempt, deadline: float) -> None:
        """Reserve this message's pace slot and sleep until it starts, holding the lease throughout.

        The lease was taken when the row was claimed, before the slot was known: under a backlog
        the wait outlived it, so a retry could send while this attempt still would, and a wait past
        the attempt's timeout failed every attempt, each leaving a reserved slot unused (issue #33).
        Now the lease is extended by the wait, and a slot the attempt could not live to use is not
        taken: the row is released and Temporal retries the send when the slot would have started.

        A sender pool (not sticky) reserves the soonest slot of any of its numbers, and the number
        whose slot it is becomes the attempt's sender, recorded on the row before the call.
        """
        key = attempt.key
        paces = {
            s.pace: rate
            for s in self._senders.candidates(attempt.channel, attempt.sender)
            if (rate := s.per_second or self._per_second)
        }
        if not paces:
            return
        by_pace = {s.pace: s for s in self._senders.candidates(attempt.channel, attempt.sender)}
        max_wait = deadline - asyncio.get_running_loop().time() - self._policy.call_allowance.total_seconds()
        async with driver_connection(self._statements) as conn:
            if len(paces) == 1 and _interactive():
                ((pace, rate),) = paces.items()
                reserved, wait = True, await outbox.reserve_interactive_slot(conn, rate, name=pace)
            elif len(paces) == 1:
                ((pace, rate),) = paces.items()
                reserved, wait = await outbox.reserve_slot_within(conn, rate, max_wait, name=pace)
            else:
                if not paces.keys() <= self._paces_ready:
                    await outbox.ensure_paces(conn, list(paces))
                    self._paces_ready |= paces.keys()
                reserved, pace, wait = await outbox.reserve_pool_slot_within(conn, paces, max_wait)
            chosen = by_pace.get(pace, attempt.sender)
            if not reserved:
                await outbox.release(conn, key)
            elif wait or chosen != attempt.sender:
                await outbox.extend_lease(conn, key, wait + self._policy.lease.total_seconds(), chosen.address)
            attempt.sender = chosen
        if not reserved:
            log.info("message.paced", idempotency_key=key, seconds_to_slot=round(wait, 1))
            raise ApplicationError(
                f"no send slot for {key} within this attempt; the next is in {wait:.1f} s",
                type="SendBacklog",
                next_retry_delay=timedelta(seconds=max(wait, 0.1)),
            )
        beat = activity.info().heartbeat_timeout
        step = beat.total_seconds() / 3 if beat else wait
        while wait > 0:  # a batch's lanes may wait long: its heartbeat timeout must not end it meanwhile
            slept = min(step, wait)
            await asyncio.sleep(slept)
            wait -= step
            # Not after a short wait: at the limit every send waits a fraction of a second, and a
            # heartbeat each was a call into the SDK per message (6 % of a paced messaging worker's
            # CPU, profiled); the batch beats as its messages go out (`BEAT_EVERY`).
            if beat and slept >= BEAT_EVERY:
                activity.heartbeat()

    async def _deliver(
        self,
        attempt: _Attempt,
        phone: str,
        variant: Variant,
        params: dict,
        body: str,
        deadline: float,
        sessions: Mapping[tuple[str, str], datetime] | None = None,
    ) -> Accepted:
        """WhatsApp when preferred, SMS if WhatsApp refuses (`WHATSAPP_REFUSED`), once.

        On WhatsApp, a kind with an approved template (a Content SID) is sent as that template with
        its `content_variables` unless the recipient wrote to this sender in the last 24 hours (our
        own record, `whatsapp_sessions`, written by the inbound webhook: a batch's read at once,
        else one primary-key read here; no Twilio call), when the freeform text goes; a kind
        without one goes freeform (the HELP reply: always in session; in dev, the emulator without
        templates). A session we do not know of costs a template send, which is always allowed; a
        freeform message Twilio refuses out of session (63016) falls back to SMS below.
        Each move records its channel, sender and Content SID (and renews the lease) before the
        call, so a crash after it is looked up where the message went. The SMS fallback takes a
        slot of its own sender's pace (the recipient's SMS number, or the SMS pool's soonest).
        """
        if attempt.channel == "whatsapp":
            to = _address("whatsapp", phone)
            try:
                if variant.content_sid and not await self._session_open(phone, attempt.sender.address, sessions):
                    await self._move(attempt, "whatsapp", content_sid=variant.content_sid)
                    return await self._gateway.send(
                        to=to,
                        from_=attempt.sender.address,
                        content_sid=variant.content_sid,
                        content_variables=json.dumps(variant.content_variables(params)),
                    )
                return await self._gateway.send(to=to, from_=attempt.sender.address, body=body)
            except TwilioRestException as exc:
                if exc.code not in WHATSAPP_REFUSED:
                    raise
                log.info("message.whatsapp_refused", idempotency_key=attempt.key, error_code=exc.code)
            await self._move(attempt, "sms")
            await self._wait_for_slot(attempt, deadline)
        return await self._gateway.send(to=phone, from_=attempt.sender.address, body=body)

    async def _session_open(self, phone: str, sender: str, sessions: Mapping[tuple[str, str], datetime] | None) -> bool:
        """Has `phone` written to our `sender` within WhatsApp's window (`outbox.session_open`)?"""
        if sessions is not None:  # a batch's, read at its start
            return outbox.session_open(sessions.get((phone, sender)), _now())
        async with driver_connection(self._statements) as conn:
            return outbox.session_open(await outbox.load_session(conn, phone, sender), _now())

    async def _move(self, attempt: _Attempt, channel: Channel, *, content_sid: str | None = None) -> None:
        if channel != attempt.channel:  # the SMS fallback: the recipient's SMS number (a template stays on its sender)
            attempt.channel, attempt.sender = channel, self._senders.of(channel, attempt.who)
        async with self._statements.connect() as conn:
            await outbox.take_lease(
                conn,
                attempt.key,
                channel=channel,
                sender=attempt.sender.address,
                content_sid=content_sid,
                lease=self._policy.lease,
            )

    async def _record_failure(
        self, request: SendMessage, recipient: Recipient, channel: str, exc: TwilioRestException
    ) -> NoReturn:
        """Permanent errors are recorded and made non-retryable; a refusal frees the row for a retry.

        `channel` is the one the refused call went to: an opt-out (21610) on the SMS fallback is
        an SMS opt-out. The raised errors carry the code, never Twilio's text: it quotes the phone
        number, and failures are stored in the workflow's history.
        """
        key, code = request.idempotency_key, exc.code
        if code in INVALID_RECIPIENT or code in INVALID_SENDER or code == OPTED_OUT:
            error_type = (
                "InvalidRecipient"
                if code in INVALID_RECIPIENT
                else "InvalidSender"
                if code in INVALID_SENDER
                else "RecipientOptedOut"
            )
            if code == OPTED_OUT:
                await outbox.record_opt_out(self._engine, recipient, channel, reason="twilio 21610")
            async with self._engine.begin() as conn:
                await outbox.set_status(conn, key, "failed", error_code=code, reason=error_type, lease_until=None)
            log.warning("message.failed", idempotency_key=key, error_code=code, error_type=error_type)
            raise permanent(error_type, f"Twilio refused {key} with error {code}", code=code) from None
        if exc.status is not None and exc.status >= 500:
            # Ambiguous: keep `sending` so the retry looks the message up first. Twilio answered, so
            # this attempt is no longer in flight: its lease ends now.
            async with self._engine.begin() as conn:
                await outbox.set_status(conn, key, "sending", lease_until=func.now())
            raise ApplicationError(f"Twilio answered {exc.status} for {key}", type="ProviderUnavailable") from None
        async with self._engine.begin() as conn:
            await outbox.set_status(conn, key, "queued", error_code=code, reason="retrying", lease_until=None)
        if code in BUSY or exc.status == 429:
            log.info("message.throttled", idempotency_key=key, error_code=code)
            raise ApplicationError(f"Twilio busy ({code})", type="ProviderBusy") from None
        log.warning("message.rejected", idempotency_key=key, error_code=code, status=exc.status)
        async with self._engine.begin() as conn:
            await outbox.set_status(conn, key, "failed", error_code=code, reason="ProviderRejected")
        raise permanent("ProviderRejected", f"Twilio rejected {key} with error {code}", code=code) from None
