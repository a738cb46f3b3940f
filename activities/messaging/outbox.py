"""The outbox in PostgreSQL: one `message_log` row per idempotency key, recipients and opt-outs.

The row is claimed under a row lock and marked `sending` (committed) before Twilio is
called, with the channel and sender of the call and a lease; the sid is stored after. While
the lease lasts, the row belongs to that attempt: another attempt of the key (a timed-out one
still running, a re-run the same day) does not send. A row still `sending` after its lease
means "maybe sent": the next attempt looks the message up at Twilio, on the recorded channel
and sender, before sending again. The lease is longer than the Twilio timeout, so no attempt
whose lease ran out can still be waiting for Twilio to record its message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from sqlalchemy import Row, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from activities.database import psycopg_sql
from schemas.messaging import Channel, SendMessage
from schemas.tables import MessageLog, RecipientOptOut, RecipientOptOutEvent

LIVE_STATUSES = ("sending", "sent", "delivered")


@dataclass(frozen=True)
class Recipient:
    type: str
    id: str
    first_name: str
    phone: str | None
    preferred_channel: Channel  # the table's CHECK constraint holds it to the two
    timezone: str
    locale: str = "en"
    """BCP 47: which text of the catalogue, and how amounts are written (a retailer's `locale`)."""
    currency: str = "USD"
    """ISO 4217: the currency of the amounts in the message (a retailer's credit account's)."""


@dataclass(frozen=True)
class QuietHours:
    start: int = 21
    end: int = 8

    def holds(self, local: datetime) -> bool:
        if self.start > self.end:  # spans midnight, e.g. 21:00-08:00
            return local.hour >= self.start or local.hour < self.end
        return self.start <= local.hour < self.end

    def next_allowed(self, local: datetime) -> datetime:
        """The first moment at or after `local` outside quiet hours."""
        if not self.holds(local):
            return local
        candidate = datetime.combine(local.date(), time(self.end), tzinfo=local.tzinfo)
        return candidate if candidate > local else candidate + timedelta(days=1)


def _first_name(name: str | None) -> str:
    return (name or "there").split()[0]


# The send path's statements run on psycopg's connection (`driver_connection`): SQLAlchemy's
# execution and result objects cost more CPU per send than the statements themselves.
_RECIPIENT_SQL = {
    "retailer": "SELECT r.name, r.phone, r.preferred_channel, r.timezone, r.locale, a.currency"
    " FROM retailers r LEFT JOIN credit_accounts a ON a.retailer_id = r.id WHERE r.id = %(rid)s",
    "member": "SELECT m.name, m.phone, m.preferred_channel, COALESCE(m.timezone, c.timezone), 'en', 'USD'"
    " FROM memberships m JOIN companies c ON c.id = m.company_id WHERE m.id = %(rid)s",
    "customer": "SELECT name, phone, 'whatsapp', 'UTC', 'en', 'USD' FROM customers WHERE id = %(rid)s",
}


# A batch's recipients of one type in one statement (`load_recipients`): the same columns after the id.
RECIPIENTS_SQL = {
    # The currency by the account's key, one row each: joined, the planner hashed every account
    # for a batch of a hundred, a statement that grew with the business (docs/BENCHMARKS.md).
    "retailer": "SELECT r.id, r.name, r.phone, r.preferred_channel, r.timezone, r.locale,"
    " (SELECT a.currency FROM credit_accounts a WHERE a.retailer_id = r.id)"
    " FROM retailers r WHERE r.id = ANY(%(rids)s)",
    "member": "SELECT m.id, m.name, m.phone, m.preferred_channel, COALESCE(m.timezone, c.timezone), 'en', 'USD'"
    " FROM memberships m JOIN companies c ON c.id = m.company_id WHERE m.id = ANY(%(rids)s)",
    "customer": "SELECT id, name, phone, 'whatsapp', 'UTC', 'en', 'USD' FROM customers WHERE id = ANY(%(rids)s)",
}


async def load_recipient(conn: psycopg.AsyncConnection, recipient_type: str, recipient_id: str) -> Recipient | None:
    """Only here does a phone number leave the database, and only into the activity.

    `conn` is psycopg's connection (`activities.database.driver_connection`)."""
    if not recipient_id.isdigit():
        return None
    statement = _RECIPIENT_SQL.get(recipient_type, _RECIPIENT_SQL["customer"])
    row = await (await conn.execute(statement, {"rid": int(recipient_id)}, prepare=True)).fetchone()
    return None if row is None else _recipient(recipient_type, recipient_id, row)


async def load_recipients(
    conn: psycopg.AsyncConnection, wanted: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Recipient]:
    """`load_recipient` for a batch's (type, id) pairs: one statement per recipient type instead
    of one per message. A pair missing from the result has no such recipient."""
    by_kind: dict[str, dict[int, list[tuple[str, str]]]] = {}
    for pair in set(wanted):
        recipient_type, recipient_id = pair
        if recipient_id.isdigit():  # as `load_recipient`: an unknown type reads customers
            kind = recipient_type if recipient_type in RECIPIENTS_SQL else "customer"
            by_kind.setdefault(kind, {}).setdefault(int(recipient_id), []).append(pair)
    found: dict[tuple[str, str], Recipient] = {}
    for kind, ids in by_kind.items():
        cursor = await conn.execute(RECIPIENTS_SQL[kind], {"rids": list(ids)}, prepare=True)
        for rid, *row in await cursor.fetchall():
            for recipient_type, recipient_id in ids[rid]:
                found[(recipient_type, recipient_id)] = _recipient(recipient_type, recipient_id, row)
    return found


def _recipient(recipient_type: str, recipient_id: str, row: Sequence[Any]) -> Recipient:
    name, phone, channel, tz, locale, currency = row
    return Recipient(
        recipient_type,
        recipient_id,
        _first_name(name),
        phone,
        channel or "whatsapp",
        tz or "UTC",
        locale or "en",
        currency or "USD",
    )


# Why a message is held back, or NULL to send: no phone, opted out, the emergency brake, daily cap
# (messages that went, or may have gone, out since the recipient's local midnight), quiet hours;
# checked in that order. `paused` and `quiet_hours` defer (the message goes out later under the
# same key); the others suppress.
DEFERRING = ("paused", "quiet_hours")
_HOLD_REASON = """
    CASE
        WHEN CAST(:no_phone AS boolean) THEN 'no_phone'
        WHEN EXISTS (
            SELECT 1 FROM recipient_opt_outs o
            WHERE o.recipient_type = :recipient_type AND o.recipient_id = :recipient_id AND o.channel = :channel
        ) THEN 'opted_out'
        WHEN EXISTS (SELECT 1 FROM messaging_brake b WHERE b.paused) THEN 'paused'
        WHEN (
            SELECT count(*) FROM message_log m
            WHERE m.recipient_type = :recipient_type AND m.recipient_id = :recipient_id
              AND m.created_at >= :since AND m.status IN ('sending', 'sent', 'delivered') AND m.idempotency_key <> :key
        ) >= :daily_cap THEN 'daily_cap'
        WHEN CAST(:quiet_hours AS boolean) THEN 'quiet_hours'
    END
"""
_SELECT_HOLD_REASON = text(f"SELECT {_HOLD_REASON} AS reason")
# A new key, decided and written in one statement: held back or `sending`, which commits before
# Twilio is called. An existing key returns no row and takes `claim`, which knows retries and crashes.
_CLAIM_NEW = psycopg_sql(
    f"""
WITH decided AS (SELECT {_HOLD_REASON} AS reason)
INSERT INTO message_log (idempotency_key, recipient_type, recipient_id, channel, template, template_version,
                         status, reason, attempts, sender, lease_started_at, lease_until)
SELECT :key, :recipient_type, :recipient_id, :channel, :template, :template_version,
       CASE WHEN reason IS NULL THEN 'sending' WHEN reason IN ('paused', 'quiet_hours') THEN 'deferred'
            ELSE 'suppressed' END,
       reason, CASE WHEN reason IS NULL THEN 1 ELSE 0 END,
       CASE WHEN reason IS NULL THEN :sender END,
       CASE WHEN reason IS NULL THEN now() END,
       CASE WHEN reason IS NULL THEN now() + make_interval(secs => :lease_seconds) END
FROM decided
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING status, reason
"""
)


@dataclass(frozen=True)
class Hold:
    """What the rules say about sending `key` to `recipient` on `channel` now."""

    key: str
    recipient: Recipient
    channel: Channel
    daily_cap: int
    quiet_hours: bool
    now: datetime

    def params(self) -> dict[str, object]:
        tz = ZoneInfo(self.recipient.timezone)
        return {
            "key": self.key,
            "recipient_type": self.recipient.type,
            "recipient_id": self.recipient.id,
            "channel": self.channel,
            "no_phone": not self.recipient.phone,
            "daily_cap": self.daily_cap,
            "since": datetime.combine(self.now.astimezone(tz).date(), time(0), tz),
            "quiet_hours": self.quiet_hours,
        }


@dataclass(frozen=True)
class NewClaim:
    status: str  # sending, suppressed or deferred
    reason: str | None


@dataclass(frozen=True)
class Claim:
    """A first-seen key's row, to be written with the rules' decision (`claim_new`)."""

    hold: Hold
    template: str
    template_version: int
    sender: str  # where a `sending` row's call goes
    lease: timedelta

    def params(self) -> dict[str, object]:
        return {
            **self.hold.params(),
            "template": self.template,
            "template_version": self.template_version,
            "sender": self.sender,
            "lease_seconds": self.lease.total_seconds(),
        }


async def claim_new(conn: psycopg.AsyncConnection, claim: Claim) -> NewClaim | None:
    """Write a first-seen key's row with its decision (one statement); None if the key exists.

    A row written `sending` carries the sender and the lease of this attempt. `conn` is
    psycopg's connection (`activities.database.driver_connection`), in autocommit."""
    row = await (await conn.execute(_CLAIM_NEW, claim.params(), prepare=True)).fetchone()
    return NewClaim(*row) if row else None


# `_CLAIM_NEW` for many keys in one statement: the same rules per row, on the columns of `v`. Rows
# of one statement do not see each other, so its keys and recipients must be distinct (a
# recipient's daily cap counts its other rows); `claim_new_many`'s callers keep them so.
_CLAIM_COLUMNS = {
    "key": "text",
    "recipient_type": "text",
    "recipient_id": "text",
    "channel": "text",
    "no_phone": "boolean",
    "daily_cap": "integer",
    "since": "timestamptz",
    "quiet_hours": "boolean",
    "template": "text",
    "template_version": "integer",
    "sender": "text",
    "lease_seconds": "float8",
}
_CLAIM_ARRAYS = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _CLAIM_COLUMNS.items())
_HOLD_REASON_OF_V = re.sub(r"(?<![:\w]):(\w+)", r"v.\1", _HOLD_REASON)  # `:key` -> `v.key`, ...
_CLAIM_NEW_MANY = psycopg_sql(
    f"""
WITH v AS (
    SELECT * FROM unnest({_CLAIM_ARRAYS}) AS v({", ".join(_CLAIM_COLUMNS)})
), decided AS (SELECT v.*, {_HOLD_REASON_OF_V} AS reason FROM v)
INSERT INTO message_log (idempotency_key, recipient_type, recipient_id, channel, template, template_version,
                         status, reason, attempts, sender, lease_started_at, lease_until)
SELECT key, recipient_type, recipient_id, channel, template, template_version,
       CASE WHEN reason IS NULL THEN 'sending' WHEN reason IN ('paused', 'quiet_hours') THEN 'deferred'
            ELSE 'suppressed' END,
       reason, CASE WHEN reason IS NULL THEN 1 ELSE 0 END,
       CASE WHEN reason IS NULL THEN sender END,
       CASE WHEN reason IS NULL THEN now() END,
       CASE WHEN reason IS NULL THEN now() + make_interval(secs => lease_seconds) END
FROM decided
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING idempotency_key, status, reason
"""
)


async def claim_new_many(conn: psycopg.AsyncConnection, claims: Sequence[Claim]) -> list[NewClaim | None]:
    """`claim_new` for many first-seen keys in one statement, in order (None: the key exists).
    Their keys and their recipients must be distinct (see `_CLAIM_NEW_MANY`)."""
    rows = [claim.params() for claim in claims]
    params = {name: [row[name] for row in rows] for name in _CLAIM_COLUMNS}
    cursor = await conn.execute(_CLAIM_NEW_MANY, params, prepare=True)
    written = {key: NewClaim(status, reason) for key, status, reason in await cursor.fetchall()}
    return [written.get(claim.hold.key) for claim in claims]


async def hold_reason(conn: AsyncConnection, hold: Hold) -> str | None:
    """The same rules for a key that exists already (a retry, a deferred message's next try)."""
    return await conn.scalar(_SELECT_HOLD_REASON, hold.params())


async def claim(conn: AsyncConnection, request: SendMessage, channel: str, template_version: int) -> Row[Any]:
    """Insert the key's row if new, then lock it for this attempt (the caller commits).

    The row comes with `lease_left`: how long the attempt holding `sending` still owns it
    (NULL or negative: no live lease), measured on the database's clock, which every worker shares."""
    await conn.execute(
        insert(MessageLog)
        .values(
            idempotency_key=request.idempotency_key,
            recipient_type=request.recipient_type,
            recipient_id=request.recipient_id,
            channel=channel,
            template=request.template,
            template_version=template_version,
            status="queued",
        )
        .on_conflict_do_nothing(index_elements=[MessageLog.idempotency_key])
    )
    lease_left = func.extract("epoch", MessageLog.lease_until - func.now()).label("lease_left")
    return (
        await conn.execute(
            select(MessageLog.__table__, lease_left)
            .where(MessageLog.idempotency_key == request.idempotency_key)
            .with_for_update(of=MessageLog.__table__)
        )
    ).one()


async def take_lease(
    conn: AsyncConnection,
    key: str,
    *,
    channel: str,
    sender: str,
    content_sid: str | None,
    lease: timedelta,
    **values: object,
) -> None:
    """`sending`, owned by this attempt until the lease ends; records where the next call goes."""
    await conn.execute(
        update(MessageLog)
        .where(MessageLog.idempotency_key == key)
        .values(
            status="sending",
            channel=channel,
            sender=sender,
            content_sid=content_sid,
            lease_started_at=func.now(),
            lease_until=func.now() + lease,
            updated_at=func.now(),
            **values,
        )
    )


async def owned_sids(conn: AsyncConnection, sids: list[str]) -> set[str]:
    """Which of these Twilio sids another key already recorded: those messages are not ours."""
    if not sids:
        return set()
    return set(await conn.scalars(select(MessageLog.provider_sid).where(MessageLog.provider_sid.in_(sids))))


# One slot of `1/per_second` per message, on the database's clock (every worker shares it). The
# row lock serializes the reservations; the statement holds it for microseconds.
_RESERVE_SLOT = psycopg_sql(
    """
INSERT INTO messaging_pace AS pace (name, next_slot)
VALUES (:name, clock_timestamp() + make_interval(secs => :interval))
ON CONFLICT (name) DO UPDATE
   SET next_slot = greatest(pace.next_slot, clock_timestamp()) + make_interval(secs => :interval)
RETURNING extract(epoch FROM pace.next_slot - clock_timestamp())::float8 - :interval
"""
)


async def reserve_slot(conn: psycopg.AsyncConnection, per_second: float, name: str = "twilio") -> float:
    """Reserve the next send slot of the `name` limit; returns the seconds to wait until it starts.

    Slots are `1/per_second` apart for the whole cluster, so however the sends are spread over
    activities and workers, they reach the provider no faster than `per_second` and never in a
    burst. A reserved slot whose send then fails is left unused: the limit errs low, never high."""
    row = await (
        await conn.execute(_RESERVE_SLOT, {"name": name, "interval": 1.0 / per_second}, prepare=True)
    ).fetchone()
    assert row is not None
    return max(float(row[0]), 0.0)


# `_RESERVE_SLOT` only while the next free slot starts within :max_wait; otherwise nothing is
# reserved and the wait until that slot is returned. The update re-checks on the locked row.
_RESERVE_SLOT_WITHIN = psycopg_sql(
    """
WITH free AS (
    SELECT greatest(next_slot, clock_timestamp()) AS at FROM messaging_pace WHERE name = :name
), reserved AS (
    INSERT INTO messaging_pace AS pace (name, next_slot)
    SELECT :name, clock_timestamp() + make_interval(secs => :interval)
    WHERE NOT EXISTS (SELECT FROM free WHERE at > clock_timestamp() + make_interval(secs => :max_wait))
    ON CONFLICT (name) DO UPDATE
       SET next_slot = greatest(pace.next_slot, clock_timestamp()) + make_interval(secs => :interval)
       WHERE pace.next_slot <= clock_timestamp() + make_interval(secs => :max_wait)
    RETURNING extract(epoch FROM pace.next_slot - clock_timestamp())::float8 - :interval AS wait
)
SELECT true, greatest(wait, 0.0) FROM reserved
UNION ALL
SELECT false, greatest(extract(epoch FROM at - clock_timestamp())::float8, 0.0) FROM free
WHERE NOT EXISTS (SELECT FROM reserved)
"""
)


async def reserve_slot_within(
    conn: psycopg.AsyncConnection, per_second: float, max_wait: float, name: str = "twilio"
) -> tuple[bool, float]:
    """`reserve_slot`, only if the slot starts within `max_wait` seconds: (reserved, seconds to wait).

    Not reserved, the seconds are until the next free slot: a send that could not wait that long
    inside its attempt leaves the slot to one that can, rather than holding one it never uses
    (each such reservation would push the whole backlog back)."""
    # A day stands for "no limit" (an attempt without a timeout): PostgreSQL has no infinite interval.
    params = {"name": name, "interval": 1.0 / per_second, "max_wait": min(max(max_wait, 0.0), 86_400.0)}
    row = await (await conn.execute(_RESERVE_SLOT_WITHIN, params, prepare=True)).fetchone()
    if row is None:  # the first reservation ever lost its insert to another's, then found it too far
        return False, 1.0 / per_second
    return bool(row[0]), float(row[1])


# A sender pool's slot: the soonest free slot of any of the pool's numbers (each its own row,
# `messaging_pace` names `:names`, `:intervals` apart). SKIP LOCKED: reservations made at the same
# moment spread over the pool's numbers instead of queueing on the one that looked soonest to all.
# With every row locked by another's reservation, nothing comes back; `reserve_pool_slot_within`
# then waits for the soonest row's lock (`_RESERVE_POOL_SLOT_WAITING`).
_RESERVE_POOL_SLOT = """
WITH pick AS (
    SELECT pace.name, p.secs, greatest(pace.next_slot, clock_timestamp()) AS at
    FROM messaging_pace AS pace
    JOIN unnest(CAST(:names AS text[]), CAST(:intervals AS float8[])) AS p(name, secs) ON p.name = pace.name
    ORDER BY greatest(pace.next_slot, now()), random()
    LIMIT 1
    FOR UPDATE OF pace SKIP LOCKED
), reserved AS (
    UPDATE messaging_pace AS pace SET next_slot = pick.at + make_interval(secs => pick.secs)
    FROM pick
    WHERE pace.name = pick.name AND pick.at <= clock_timestamp() + make_interval(secs => :max_wait)
    RETURNING pace.name, extract(epoch FROM pick.at - clock_timestamp())::float8 AS wait
)
SELECT true, name, greatest(wait, 0.0) FROM reserved
UNION ALL
SELECT false, name, greatest(extract(epoch FROM at - clock_timestamp())::float8, 0.0) FROM pick
WHERE NOT EXISTS (SELECT FROM reserved)
"""
_RESERVE_POOL_SLOT_SKIPPING = psycopg_sql(_RESERVE_POOL_SLOT)
_RESERVE_POOL_SLOT_WAITING = psycopg_sql(_RESERVE_POOL_SLOT.replace("SKIP LOCKED", ""))
_ENSURE_PACES = psycopg_sql(
    """
INSERT INTO messaging_pace (name, next_slot) SELECT unnest(CAST(:names AS text[])), clock_timestamp()
ON CONFLICT (name) DO NOTHING
"""
)


async def ensure_paces(conn: psycopg.AsyncConnection, names: list[str]) -> None:
    """The pool's rows in `messaging_pace` (a number new to the pool gets its row: free now)."""
    await conn.execute(_ENSURE_PACES, {"names": names}, prepare=True)


async def reserve_pool_slot_within(
    conn: psycopg.AsyncConnection, paces: dict[str, float], max_wait: float
) -> tuple[bool, str, float]:
    """`reserve_slot_within` over a pool: {pace name: per second} -> (reserved, whose slot, seconds
    to wait). Not reserved, the name and seconds are those of the pool's soonest slot. The pool's
    rows must exist (`ensure_paces`)."""
    params = {
        "names": list(paces),
        "intervals": [1.0 / rate for rate in paces.values()],
        "max_wait": min(max(max_wait, 0.0), 86_400.0),
    }
    row = await (await conn.execute(_RESERVE_POOL_SLOT_SKIPPING, params, prepare=True)).fetchone()
    if row is None:  # every number's row is being reserved right now: queue for the soonest
        row = await (await conn.execute(_RESERVE_POOL_SLOT_WAITING, params, prepare=True)).fetchone()
    if row is None:  # the pool's rows were deleted (a test's cleanup): make them again
        await ensure_paces(conn, list(paces))
        row = await (await conn.execute(_RESERVE_POOL_SLOT_WAITING, params, prepare=True)).fetchone()
    assert row is not None
    return bool(row[0]), str(row[1]), float(row[2])


# An interactive send's slot (`reserve_interactive_slot`): the next of the interactive lane, itself
# paced at the limit, while the bulk lane's next slot moves back by one interval. Locks the bulk row
# first, as every bulk reservation does, then the lane's: no two reservations wait on each other. (A
# data-modifying CTE runs whether or not the statement reads it.)
_RESERVE_INTERACTIVE_SLOT = psycopg_sql(
    """
WITH bulk AS (
    UPDATE messaging_pace SET next_slot = greatest(next_slot, clock_timestamp()) + make_interval(secs => :interval)
    WHERE name = :name
    RETURNING 1
)
INSERT INTO messaging_pace AS pace (name, next_slot)
VALUES (:lane, clock_timestamp() + make_interval(secs => :interval))
ON CONFLICT (name) DO UPDATE
   SET next_slot = greatest(pace.next_slot, clock_timestamp()) + make_interval(secs => :interval)
RETURNING extract(epoch FROM pace.next_slot - clock_timestamp())::float8 - :interval
"""
)


async def reserve_interactive_slot(conn: psycopg.AsyncConnection, per_second: float, name: str = "twilio") -> float:
    """A slot for a send someone is waiting for (a manual nudge, a HELP reply, a payment notice):
    the seconds until it starts, whatever the bulk sends have reserved.

    Bulk sends reserve their slots ahead (one per send in flight: 50 at 200 msg/s is a quarter of a
    second), and an interactive send behind them waited that long on every reminders day. It takes
    the next slot of its own lane instead, paced at the same limit among interactive sends, and
    pushes the bulk lane's next slot back by one interval: every message still costs one interval
    of the limit, so over any second the provider sees the limit plus at most what the bulk sends had
    reserved beyond it (within its one second of burst)."""
    params = {"name": name, "lane": f"{name}:interactive", "interval": 1.0 / per_second}
    row = await (await conn.execute(_RESERVE_INTERACTIVE_SLOT, params, prepare=True)).fetchone()
    assert row is not None
    return max(float(row[0]), 0.0)


_EXTEND_LEASE = psycopg_sql(
    """
UPDATE message_log SET lease_until = now() + make_interval(secs => :seconds), sender = :sender, updated_at = now()
WHERE idempotency_key = :key AND status = 'sending'
"""
)


async def extend_lease(conn: psycopg.AsyncConnection, key: str, seconds: float, sender: str) -> None:
    """The attempt that holds `key`'s lease keeps it `seconds` from now (its pace wait, then the call),
    and records the sender whose slot it reserved: where a crash after the call is looked up."""
    await conn.execute(_EXTEND_LEASE, {"key": key, "seconds": seconds, "sender": sender}, prepare=True)


_RELEASE = psycopg_sql(
    """
UPDATE message_log SET status = 'queued', reason = 'paced', lease_until = NULL, updated_at = now()
WHERE idempotency_key = :key AND status = 'sending'
"""
)


async def release(conn: psycopg.AsyncConnection, key: str) -> None:
    """Give back a lease taken for a send that never reached Twilio: the next attempt sends it
    without waiting out the lease and without looking it up at Twilio first."""
    await conn.execute(_RELEASE, {"key": key}, prepare=True)


# The common end of a send, as one constant statement (no statement built per message).
_SENT_SQL = psycopg_sql(
    """
UPDATE message_log SET status = 'sent', provider_sid = :provider_sid, channel = :channel, sent_at = :sent_at,
       error_code = NULL, lease_until = NULL, updated_at = now()
WHERE idempotency_key = :key
"""
)


async def set_sent(conn: psycopg.AsyncConnection, key: str, provider_sid: str, channel: str, sent_at: datetime) -> None:
    """`conn` is psycopg's connection (`activities.database.driver_connection`), in autocommit."""
    params = {"key": key, "provider_sid": provider_sid, "channel": channel, "sent_at": sent_at}
    await conn.execute(_SENT_SQL, params, prepare=True)


# A batch's sent marks in one statement (`set_sent_many`): the rows are `sending` under this
# attempt's lease until it runs, so a crash before it leaves them to the next attempt's look-up at
# Twilio, as a crash between the call and `set_sent` always did.
_SENT_MANY_SQL = psycopg_sql(
    """
UPDATE message_log AS m SET status = 'sent', provider_sid = v.sid, channel = v.channel, sent_at = v.sent_at,
       error_code = NULL, lease_until = NULL, updated_at = now()
FROM unnest(CAST(:keys AS text[]), CAST(:sids AS text[]), CAST(:channels AS text[]),
            CAST(:sent_at AS timestamptz[])) AS v(key, sid, channel, sent_at)
WHERE m.idempotency_key = v.key
"""
)


async def set_sent_many(conn: psycopg.AsyncConnection, rows: Sequence[tuple[str, str, str, datetime]]) -> None:
    """`set_sent` for (key, provider sid, channel, sent at) rows, in one statement."""
    keys, sids, channels, sent_at = (list(column) for column in zip(*rows, strict=True))
    params = {"keys": keys, "sids": sids, "channels": channels, "sent_at": sent_at}
    await conn.execute(_SENT_MANY_SQL, params, prepare=True)


async def set_status(conn: AsyncConnection, key: str, status: str, **values: object) -> None:
    await conn.execute(
        update(MessageLog)
        .where(MessageLog.idempotency_key == key)
        .values(status=status, updated_at=func.now(), **values)
    )


async def record_opt_out(engine: AsyncEngine, recipient: Recipient, channel: str, reason: str) -> None:
    async with engine.begin() as conn:
        added = await conn.scalar(
            insert(RecipientOptOut)
            .values(recipient_type=recipient.type, recipient_id=recipient.id, channel=channel, reason=reason)
            .on_conflict_do_nothing()
            .returning(RecipientOptOut.recipient_id)
        )
        if added is not None:
            await conn.execute(
                insert(RecipientOptOutEvent).values(
                    recipient_type=recipient.type,
                    recipient_id=recipient.id,
                    channel=channel,
                    action="opt_out",
                    reason=reason,
                )
            )


DELIVERY_STATUSES = {"sent", "delivered", "failed", "undelivered"}
_STATUS_RANK = {"sending": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}


async def record_delivery(engine: AsyncEngine, provider_sid: str, status: str, error_code: int | None) -> bool:
    """Apply a Twilio status callback; callbacks arrive out of order, so never step backwards."""
    if status not in DELIVERY_STATUSES:
        return False
    async with engine.begin() as conn:
        current = await conn.scalar(
            select(MessageLog.status).where(MessageLog.provider_sid == provider_sid).with_for_update()
        )
        if current is None or _STATUS_RANK.get(status, 0) <= _STATUS_RANK.get(current, 0):
            return False
        await conn.execute(
            update(MessageLog)
            .where(MessageLog.provider_sid == provider_sid)
            .values(status=status, error_code=error_code, updated_at=func.now())
        )
    return True


_BY_PHONE = """
    SELECT 'retailer' AS recipient_type, id::text AS recipient_id FROM retailers WHERE phone = :phone
    UNION ALL SELECT 'member', id::text FROM memberships WHERE phone = :phone
    UNION ALL SELECT 'customer', id::text FROM customers WHERE phone = :phone
"""
# Each statement records the inbound message, changes the opt-outs and writes their history at
# once; only real changes are audited (a second STOP, a START without a STOP, change nothing).
# Twilio delivers an inbound webhook again when it got no answer in time, and its body carries no
# time: a replayed START arriving after a newer STOP would lift it (issue #33). So each MessageSid
# applies once (`processed_webhook_events`, provider `twilio`, cleared by the data retention like
# Stripe's), and the changes apply in the order their messages were first received. A keyword
# without a MessageSid (never from Twilio) applies each time: an opt-out is never lost for it.
# Every statement also records a WhatsApp message in `whatsapp_sessions` (the `session` CTE, which
# runs whether or not the statement reads it): the time its MessageSid was first received, for a
# number one of our recipients has (no stranger's number is stored), never moved back.
_INBOUND_FIRST_SEEN = f"""
WITH seen AS (
    INSERT INTO processed_webhook_events (provider, event_id, event_type, status, processed_at)
    SELECT 'twilio', CAST(:sid AS text), :event_type, 'processed', now() WHERE CAST(:sid AS text) IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING event_id
), fresh AS (
    SELECT 1 WHERE CAST(:sid AS text) IS NULL OR EXISTS (SELECT FROM seen)
), session AS (
    INSERT INTO whatsapp_sessions AS s (phone, sender, last_inbound_at)
    SELECT :phone, CAST(:sender AS text), now()
    WHERE :channel = 'whatsapp' AND CAST(:sender AS text) IS NOT NULL AND EXISTS (SELECT FROM fresh)
      AND EXISTS (SELECT FROM ({_BY_PHONE}) r)
    ON CONFLICT (phone, sender) DO UPDATE SET last_inbound_at = greatest(s.last_inbound_at, excluded.last_inbound_at)
    RETURNING 1
)"""
_OPT_OUT_BY_PHONE = text(
    f"""{_INBOUND_FIRST_SEEN}, added AS (
    INSERT INTO recipient_opt_outs (recipient_type, recipient_id, channel, reason)
    SELECT recipient_type, recipient_id, :channel, :reason FROM ({_BY_PHONE}) r WHERE EXISTS (SELECT FROM fresh)
    ON CONFLICT DO NOTHING
    RETURNING recipient_type, recipient_id
)
INSERT INTO recipient_opt_out_events (recipient_type, recipient_id, channel, action, reason)
SELECT recipient_type, recipient_id, :channel, 'opt_out', :reason FROM added
"""
)
_OPT_IN_BY_PHONE = text(
    f"""{_INBOUND_FIRST_SEEN}, lifted AS (
    DELETE FROM recipient_opt_outs o USING ({_BY_PHONE}) r
    WHERE o.recipient_type = r.recipient_type AND o.recipient_id = r.recipient_id AND o.channel = :channel
    AND EXISTS (SELECT FROM fresh)
    RETURNING o.recipient_type, o.recipient_id
)
INSERT INTO recipient_opt_out_events (recipient_type, recipient_id, channel, action, reason)
SELECT recipient_type, recipient_id, :channel, 'opt_in', :reason FROM lifted
"""
)


_INBOUND_MESSAGE = text(f"{_INBOUND_FIRST_SEEN} SELECT count(*) FROM session")


async def opt_out_by_phone(
    engine: AsyncEngine,
    phone: str,
    channel: str,
    reason: str,
    message_sid: str | None = None,
    sender: str | None = None,
) -> int:
    """An inbound STOP: every recipient with this number stops getting messages on the channel.
    Nothing changes for a `message_sid` seen before (Twilio delivering the same message again).
    On WhatsApp the message also opens the session with `sender` (`record_inbound`)."""
    return await _inbound_change(
        engine, _OPT_OUT_BY_PHONE, "inbound.opt_out", phone, channel, reason, message_sid, sender
    )


async def opt_in_by_phone(
    engine: AsyncEngine,
    phone: str,
    channel: str,
    reason: str,
    message_sid: str | None = None,
    sender: str | None = None,
) -> int:
    """An inbound START: the opt-outs on this channel of every recipient with this number are lifted.
    Nothing changes for a `message_sid` seen before: a replayed START never undoes a newer STOP.
    On WhatsApp the message also opens the session with `sender` (`record_inbound`)."""
    return await _inbound_change(
        engine, _OPT_IN_BY_PHONE, "inbound.opt_in", phone, channel, reason, message_sid, sender
    )


async def _inbound_change(
    engine: AsyncEngine,
    statement: Any,
    event_type: str,
    phone: str,
    channel: str,
    reason: str,
    message_sid: str | None,
    sender: str | None,
) -> int:
    """Run an inbound STOP's or START's one statement; the recipients it changed."""
    params = {
        "phone": phone,
        "channel": channel,
        "reason": reason,
        "sid": message_sid,
        "sender": sender,
        "event_type": event_type,
    }
    async with engine.begin() as conn:
        return (await conn.execute(statement, params)).rowcount


async def record_inbound(engine: AsyncEngine, phone: str, sender: str, message_sid: str | None = None) -> bool:
    """Any other inbound WhatsApp message from `phone` to our `sender` (`whatsapp:+1...`): the
    recipient's customer-service window with that sender is open for 24 h from when it was first
    received. A `message_sid` seen before changes nothing (a redelivery is not a newer message);
    a number none of our recipients has is not stored. True when the session was recorded."""
    params = {
        "phone": phone,
        "channel": "whatsapp",
        "sid": message_sid,
        "sender": sender,
        "event_type": "inbound.message",
    }
    async with engine.begin() as conn:
        return bool(await conn.scalar(_INBOUND_MESSAGE, params))


SESSION_WINDOW = timedelta(hours=24)
"""WhatsApp's customer-service window: freeform messages only this long after the recipient's last."""
SESSION_MARGIN = timedelta(minutes=5)
"""The end of the window we trust less than this: our time is when the webhook reached us, a little
after Twilio's, and its clock is not ours. A send in the last minutes goes as the template (always
allowed) rather than risk a freeform refusal (63016) and its SMS fallback."""

_SESSIONS_SQL = psycopg_sql(
    "SELECT phone, sender, last_inbound_at FROM whatsapp_sessions"
    " WHERE phone = ANY(:phones) AND last_inbound_at > :since"
)
_SESSION_SQL = psycopg_sql("SELECT last_inbound_at FROM whatsapp_sessions WHERE phone = :phone AND sender = :sender")


def session_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """Is the window that an inbound message at `last_inbound_at` opened still open at `now`?"""
    return last_inbound_at is not None and last_inbound_at > now - (SESSION_WINDOW - SESSION_MARGIN)


async def load_sessions(
    conn: psycopg.AsyncConnection, phones: Iterable[str], now: datetime
) -> dict[tuple[str, str], datetime]:
    """{(phone, our sender): last inbound} of these numbers' sessions open at `now`, in one statement
    (a batch's; by the primary key's leading column). `conn` is psycopg's connection."""
    wanted = sorted(set(phones))
    if not wanted:
        return {}
    since = now - SESSION_WINDOW
    cursor = await conn.execute(_SESSIONS_SQL, {"phones": wanted, "since": since}, prepare=True)
    return {(phone, sender): at for phone, sender, at in await cursor.fetchall()}


async def load_session(conn: psycopg.AsyncConnection, phone: str, sender: str) -> datetime | None:
    """When `phone` last wrote to our `sender` (None: never, as far as we know); one primary-key read."""
    row = await (await conn.execute(_SESSION_SQL, {"phone": phone, "sender": sender}, prepare=True)).fetchone()
    return None if row is None else row[0]


async def recipient_by_phone(engine: AsyncEngine, phone: str) -> tuple[str, str] | None:
    """The first recipient with this number (type, id), to address a reply such as HELP's."""
    async with engine.connect() as conn:
        row = (await conn.execute(text(f"SELECT * FROM ({_BY_PHONE}) r LIMIT 1"), {"phone": phone})).first()
    return (row.recipient_type, row.recipient_id) if row else None
