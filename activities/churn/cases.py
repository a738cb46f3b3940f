"""Churn cases in the database: opening one, what its workflow needs, the company's nudge rules,
and the audited `recovery_actions` rows. Every query names the company (tenant scoping).

Times come from the workflow (`at`), never the activity's clock, so a case's decisions are the
same on replay and under the time-skipping test server.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

import structlog
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.events.outbox import emit
from activities.messaging.outbox import QuietHours
from config.settings import get_settings
from schemas.churn import CaseAction, CaseContext, DecideNudge, LoadCase, NudgeDecision
from schemas.errors import Refused
from schemas.messaging import Channel

log = structlog.get_logger(__name__)

DEV_ACTOR_HASH_KEY = "jobctl-dev-only-actor-hash-key"
"""Used when ACTOR_HASH_KEY is unset; settings refuse to start without a key in production."""


def hash_actor(actor_id: str, key: SecretStr | None = None) -> str:
    """Who acted, without storing who: the same operator hashes the same, for audits.

    A keyed HMAC (ACTOR_HASH_KEY), so nobody without the key can hash guessed ids and compare.
    """
    key = key or get_settings().actor_hash_key
    if key is None:
        structlog.get_logger(__name__).warning("churn.actor_hash_dev_key", hint="set ACTOR_HASH_KEY")
        key = SecretStr(DEV_ACTOR_HASH_KEY)
    return hmac.new(key.get_secret_value().encode(), actor_id.encode(), hashlib.sha256).hexdigest()


ACTOR_HASH_PREFIX = "hmac-sha256:"
_ACTOR_REFERENCE = re.compile(r"hmac-sha256:([0-9a-f]{64})")


def actor_reference(actor_id: str, key: SecretStr | None = None) -> str:
    """What a case's workflow is given for an operator: the HMAC, marked as one. The services hash
    at the door, so a raw operator id never enters a workflow history (issue #33)."""
    return ACTOR_HASH_PREFIX + hash_actor(actor_id, key)


def stored_actor_hash(actor: str, key: SecretStr | None = None) -> str:
    """`recovery_actions.actor_id_hash` of the actor a workflow passed: the HMAC of an
    `actor_reference` as it is; a raw id (a signal recorded before the services hashed, or one
    sent around them, e.g. `temporal workflow signal`) hashed here, as it always was."""
    hashed = _ACTOR_REFERENCE.fullmatch(actor)
    return hashed.group(1) if hashed else hash_actor(actor, key)


class CaseRefused(Refused):
    """Opening or acting on a case that cannot apply (unknown membership, another company's case)."""


async def open_case(engine: AsyncEngine, membership_id: int, trigger: str, company_id: str) -> tuple[int, str, bool]:
    """The membership's OPEN case, opened now if it has none: (case_id, company_id, opened_now).

    The company is required: a membership of another company is refused like an unknown one."""
    async with engine.begin() as conn:
        member = (
            await conn.execute(
                text("SELECT id, company_id FROM memberships WHERE id = :m AND company_id = :c"),
                {"m": membership_id, "c": company_id},
            )
        ).first()
        if member is None:
            raise CaseRefused(f"no membership {membership_id} in company {company_id}", code="unknown_membership")
        opened = await conn.scalar(
            text(
                "INSERT INTO recovery_cases (company_id, membership_id, trigger) VALUES (:c, :m, :t)"
                " ON CONFLICT (membership_id) WHERE status = 'OPEN' DO NOTHING RETURNING id"
            ),
            {"c": member.company_id, "m": membership_id, "t": trigger},
        )
        if opened is not None:
            return opened, member.company_id, True
        existing = await conn.scalar(
            text("SELECT id FROM recovery_cases WHERE membership_id = :m AND status = 'OPEN'"), {"m": membership_id}
        )
        return existing, member.company_id, False


async def case_company(engine: AsyncEngine, case_id: int) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT company_id FROM recovery_cases WHERE id = :i"), {"i": case_id})


async def company_channels(engine: AsyncEngine, company_id: str) -> list[str]:
    async with engine.connect() as conn:
        return list(await conn.scalar(text("SELECT channels FROM companies WHERE id = :c"), {"c": company_id}) or [])


@dataclass(frozen=True)
class StripeMember:
    membership_id: int
    company_id: str


async def membership_by_stripe(
    engine: AsyncEngine, *, customer: str | None, subscription: str | None
) -> StripeMember | None:
    """The one membership a Stripe object belongs to, or None (unknown or ambiguous).

    By subscription id when the object has one (unique in the table); by customer id only when
    exactly one membership holds it: a customer id stored in two companies is refused, never
    resolved to whichever row comes first."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT m.id, m.company_id FROM memberships m"
                    " WHERE CASE WHEN CAST(:s AS text) IS NOT NULL THEN m.stripe_subscription_id = :s"
                    "  ELSE m.stripe_customer_id = :c END LIMIT 2"
                ),
                {"s": subscription, "c": customer},
            )
        ).all()
    if len(rows) != 1:
        if rows:
            log.warning("churn.stripe_customer_ambiguous", customer=customer, memberships=[r.id for r in rows])
        return None
    return StripeMember(rows[0].id, rows[0].company_id)


async def apply_stripe_event(
    engine: AsyncEngine,
    membership_id: int,
    created: datetime,
    *,
    event_id: str | None = None,
    event_type: str | None = None,
) -> bool:
    """Record `created` as the membership's latest applied Stripe event; False when a newer one
    was applied already (this one is late or out of order and must change nothing). With its id
    and type, the event is listed for the membership too (`membership_stripe_events`, the console's
    case page), applied or not, once however often Stripe retries it."""
    async with engine.begin() as conn:
        applied = await conn.scalar(
            text(
                "UPDATE memberships SET stripe_event_at = :t WHERE id = :m"
                " AND (stripe_event_at IS NULL OR stripe_event_at <= :t) RETURNING id"
            ),
            {"m": membership_id, "t": created},
        )
        if event_id and event_type:
            await conn.execute(
                text(
                    "INSERT INTO membership_stripe_events"
                    " (company_id, membership_id, event_id, event_type, event_created_at, applied)"
                    " SELECT company_id, id, :e, :type, :t, :applied FROM memberships WHERE id = :m"
                    " ON CONFLICT (membership_id, event_id) DO NOTHING"
                ),
                {
                    "m": membership_id,
                    "e": event_id[:255],
                    "type": event_type[:100],
                    "t": created,
                    "applied": applied is not None,
                },
            )
    return applied is not None


@dataclass
class OpenCaseCounts:
    """A company's open cases, its size for the fairness weight of its cases' tasks and sends
    (`workflows.messaging.company_weight`). The weight needs only the size, so a count is reused
    for `fresh` seconds: the cases of a burst, opened or decided together, wait on one count
    instead of each running its own, and once a company has been counted a recount runs beside
    the nudges, which take the last count meanwhile (a nudge never waits for a recount)."""

    engine: AsyncEngine
    fresh: float = 60.0
    _counted: dict[str, tuple[float, asyncio.Future[int]]] = field(default_factory=dict, init=False, repr=False)
    _known: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    async def __call__(self, company_id: str) -> int:
        now = time.monotonic()
        counted = self._counted.get(company_id)
        if counted is None or now - counted[0] > self.fresh:
            counted = self._counted[company_id] = (now, asyncio.ensure_future(self._count(company_id)))
            counted[1].add_done_callback(functools.partial(self._settled, company_id, counted))
        if not counted[1].done() and company_id in self._known:
            return self._known[company_id]
        return await asyncio.shield(counted[1])

    def _settled(self, company_id: str, counted: tuple[float, asyncio.Future[int]], _: asyncio.Future[int]) -> None:
        if counted[1].cancelled() or (error := counted[1].exception()) is not None:
            if not counted[1].cancelled():
                log.warning("churn.open_cases_count_failed", company_id=company_id, error=type(error).__name__)
            if self._counted.get(company_id) is counted:  # counted again by the next caller
                del self._counted[company_id]
        else:
            self._known[company_id] = counted[1].result()

    async def _count(self, company_id: str) -> int:
        async with self.engine.connect() as conn:
            count = await conn.scalar(
                text("SELECT count(*) FROM recovery_cases WHERE company_id = :c AND status = 'OPEN'"), {"c": company_id}
            )
        return int(count or 0)


@dataclass
class ChurnActivities:
    engine: AsyncEngine
    _open_cases: OpenCaseCounts = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._open_cases = OpenCaseCounts(self.engine)

    @activity.defn(name="churn_load_case")
    async def load_case(self, request: LoadCase) -> CaseContext:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT c.id, c.company_id, c.membership_id, c.status, c.opened_at, c.attempts, c.trigger,"
                        " c.incentive_applied_at IS NOT NULL AS incentive_applied,"
                        " co.reminder_offsets_days, co.grace_period_days"
                        " FROM recovery_cases c JOIN companies co ON co.id = c.company_id"
                        " WHERE c.id = :i AND c.company_id = :c"
                    ),
                    {"i": request.case_id, "c": request.company_id},
                )
            ).first()
        if row is None:
            raise ApplicationError(
                f"no case {request.case_id} in company {request.company_id}", type="UnknownCase", non_retryable=True
            )
        return CaseContext(
            case_id=row.id,
            company_id=row.company_id,
            membership_id=row.membership_id,
            status=row.status,
            opened_at=row.opened_at,
            offsets_days=sorted(row.reminder_offsets_days),
            grace_period_days=row.grace_period_days,
            incentive_applied=row.incentive_applied,
            attempts=row.attempts,
            trigger=row.trigger,
        )

    @activity.defn(name="churn_decide_nudge")
    async def decide_nudge(self, request: DecideNudge) -> NudgeDecision:
        """The company's channels, quiet hours and daily cap, in the member's time zone (the company's if unset)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT COALESCE(m.timezone, co.timezone) AS tz, m.preferred_channel, co.channels,"
                        " co.quiet_hours_start, co.quiet_hours_end, co.daily_nudge_cap"
                        " FROM recovery_cases c JOIN memberships m ON m.id = c.membership_id"
                        " JOIN companies co ON co.id = c.company_id WHERE c.id = :i AND c.company_id = :c"
                    ),
                    {"i": request.case_id, "c": request.company_id},
                )
            ).one()
        zone = ZoneInfo(row.tz)
        local = request.at.astimezone(zone)
        if request.channel is not None and request.channel not in row.channels:  # a manual nudge: now or never
            return NudgeDecision(allowed=False, channel=request.channel, held_back="channel_not_allowed")
        # companies.preferred_channel and channels hold only whatsapp/sms (CHECK constraints).
        channel: Channel = request.channel or cast(
            Channel, row.preferred_channel if row.preferred_channel in row.channels else row.channels[0]
        )
        quiet = QuietHours(row.quiet_hours_start, row.quiet_hours_end)
        if quiet.holds(local):
            return NudgeDecision(
                allowed=False, channel=channel, held_back="quiet_hours", retry_at=quiet.next_allowed(local)
            )
        today = sum(1 for sent in request.sent_before if sent.astimezone(zone).date() == local.date())
        if today >= row.daily_nudge_cap:
            tomorrow = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=zone)
            return NudgeDecision(
                allowed=False, channel=channel, held_back="daily_cap", retry_at=quiet.next_allowed(tomorrow)
            )
        return NudgeDecision(allowed=True, channel=channel, open_cases=await self._open_cases(request.company_id))

    @activity.defn(name="churn_record_action")
    async def record_action(self, action: CaseAction) -> bool:
        """The action row and the case's counters in one transaction; False if recorded before."""
        async with self.engine.begin() as conn:
            inserted = await conn.scalar(
                text(
                    "INSERT INTO recovery_actions"
                    " (case_id, company_id, type, actor_type, actor_id_hash, metadata, idempotency_key)"
                    " SELECT id, company_id, :type, :actor_type, :actor, CAST(:meta AS jsonb), :key FROM recovery_cases"
                    " WHERE id = :case AND company_id = :company"
                    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
                ),
                {
                    "type": action.type,
                    "actor_type": "user" if action.actor_id else "system",
                    "actor": stored_actor_hash(action.actor_id) if action.actor_id else None,
                    "meta": json.dumps(action.metadata, default=str),
                    "key": action.idempotency_key,
                    "case": action.case_id,
                    "company": action.company_id,
                },
            )
            if inserted is None:
                return False
            membership_id = await conn.scalar(
                text(
                    "UPDATE recovery_cases SET"
                    " attempts = attempts + CASE WHEN :sent THEN 1 ELSE 0 END,"
                    " last_nudge_at = CASE WHEN :sent THEN now() ELSE last_nudge_at END,"
                    " incentive_applied_at = CASE WHEN :incentive THEN now() ELSE incentive_applied_at END,"
                    " status = COALESCE(CAST(:close AS text), status),"
                    " closed_at = CASE WHEN CAST(:close AS text) IS NULL THEN closed_at ELSE now() END"
                    " WHERE id = :case AND company_id = :company RETURNING membership_id"
                ),
                {
                    "sent": action.nudge_sent,
                    "incentive": action.incentive_applied,
                    "close": action.close_as,
                    "case": action.case_id,
                    "company": action.company_id,
                },
            )
            if action.close_as is not None:  # a case closes once: the event's key is the case's
                await emit(
                    conn,
                    "churn.case.closed",
                    "churn_case",
                    action.case_id,
                    {"case_id": action.case_id, "membership_id": membership_id, "status": action.close_as},
                    company_id=action.company_id,
                    dedupe_key=str(action.case_id),
                )
            if action.close_as in ("TERMINATED", "CANCELLED"):
                await conn.execute(
                    text(
                        "UPDATE memberships SET status = :s"
                        " WHERE id = (SELECT membership_id FROM recovery_cases WHERE id = :case)"
                        " AND company_id = :company"
                    ),
                    {
                        "s": "TERMINATED" if action.close_as == "TERMINATED" else "CANCELLED",
                        "case": action.case_id,
                        "company": action.company_id,
                    },
                )
        return True
