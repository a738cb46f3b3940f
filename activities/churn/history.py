"""Churn cases for reading, as the console shows them: a company's cases by status, trigger,
channel and opening date a page at a time; one case's member, timeline (recovery actions with their
message's status), the Stripe side of the member; and a company's changed rules. Read-only: every
change goes through `services.churn` and `services.directory` (the console shows, it never writes here).

Every query takes the company it is scoped to; None only where an operator sees every company.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

NUDGE_TYPES = ("nudge_sms", "nudge_whatsapp", "nudge_deferred", "nudge_suppressed")

# Keyset paging, newest first: `id < :before`. A company's page walks `ix_recovery_cases_company_id_id`
# backwards and stops after `limit` rows, however many cases the company has; every company's (an
# operator's), the primary key. The channel filter is a probe of the case's actions by
# `ix_recovery_actions_case_id_created_at` per row read.
CASES = text(
    """
SELECT c.id AS case_id, c.company_id, c.membership_id, c.status, c.trigger, c.attempts, c.opened_at,
       c.closed_at, c.last_nudge_at, c.incentive_applied_at, m.name AS member_name
FROM recovery_cases c JOIN memberships m ON m.id = c.membership_id AND m.company_id = c.company_id
WHERE (CAST(:company AS text) IS NULL OR c.company_id = :company)
  AND (CAST(:before AS bigint) IS NULL OR c.id < :before)
  AND (CAST(:status AS text) IS NULL OR c.status = :status)
  AND (CAST(:trigger AS text) IS NULL OR c.trigger = :trigger)
  AND (CAST(:opened_from AS date) IS NULL OR c.opened_at >= CAST(:opened_from AS date))
  AND (CAST(:opened_to AS date) IS NULL OR c.opened_at < CAST(:opened_to AS date) + 1)
  AND (CAST(:channel AS text) IS NULL OR EXISTS (
        SELECT 1 FROM recovery_actions a WHERE a.case_id = c.id AND a.type = 'nudge_' || CAST(:channel AS text)))
ORDER BY c.id DESC LIMIT :limit
"""
)

CASE = text(
    """
SELECT c.id AS case_id, c.company_id, c.membership_id, c.status, c.trigger, c.attempts, c.opened_at,
       c.closed_at, c.last_nudge_at, c.incentive_applied_at,
       m.name AS member_name, m.phone, m.external_id AS member_external_id, m.preferred_channel,
       coalesce(m.timezone, co.timezone) AS timezone, m.status AS membership_status, m.current_period_end,
       m.stripe_customer_id IS NOT NULL AS has_stripe_customer,
       m.stripe_subscription_id IS NOT NULL AS has_subscription,
       m.stripe_event_at, m.plan_amount, co.currency, co.name AS company_name
FROM recovery_cases c
JOIN memberships m ON m.id = c.membership_id AND m.company_id = c.company_id
JOIN companies co ON co.id = c.company_id
WHERE c.id = :case AND (CAST(:company AS text) IS NULL OR c.company_id = :company)
"""
)

# The case's actions in order, each nudge with the status of the message it sent (same key).
TIMELINE = text(
    """
SELECT a.id, a.type, a.actor_type, a.actor_id_hash, a.metadata, a.created_at,
       msg.status AS message_status, msg.channel AS message_channel, msg.error_code, msg.sent_at
FROM recovery_actions a
LEFT JOIN message_log msg ON msg.idempotency_key = a.idempotency_key AND a.type IN ('nudge_sms', 'nudge_whatsapp')
WHERE a.case_id = :case AND a.company_id = :company
ORDER BY a.id
"""
)

STRIPE_EVENTS = text(
    "SELECT event_id, event_type, event_created_at, applied, received_at FROM membership_stripe_events"
    " WHERE membership_id = :m AND company_id = :company ORDER BY event_created_at DESC, id DESC LIMIT :limit"
)

COMPANY_AUDIT = text(
    "SELECT id, created_at, action, performed_by, old_value, new_value, reason FROM audit_log"
    " WHERE retailer_id IS NULL AND reference = :ref ORDER BY id DESC LIMIT :limit"
)

COMPANIES = text("SELECT id, name, currency, timezone FROM companies ORDER BY id")


async def cases_page(
    engine: AsyncEngine,
    *,
    company_id: str | None,
    before: int | None = None,
    status: str | None = None,
    trigger: str | None = None,
    channel: str | None = None,
    opened_from: date | None = None,
    opened_to: date | None = None,
    limit: int = 25,
) -> list[dict[str, Any]]:
    """Up to `limit` cases older than `before` (newest first) that pass every filter given."""
    params = {
        "company": company_id,
        "before": before,
        "status": status,
        "trigger": trigger,
        "channel": channel,
        "opened_from": opened_from,
        "opened_to": opened_to,
        "limit": limit,
    }
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(CASES, params)]


async def case(engine: AsyncEngine, case_id: int, *, company_id: str | None) -> dict[str, Any] | None:
    """The case with its member and company; None when it is not the company's (or does not exist)."""
    async with engine.connect() as conn:
        row = (await conn.execute(CASE, {"case": case_id, "company": company_id})).first()
    return dict(row._mapping) if row else None


async def timeline(engine: AsyncEngine, case_id: int, company_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(TIMELINE, {"case": case_id, "company": company_id})]


async def stripe_events(
    engine: AsyncEngine, membership_id: int, company_id: str, *, limit: int = 20
) -> list[dict[str, Any]]:
    """The member's latest Stripe events the handlers matched to it, applied or ignored as late."""
    async with engine.connect() as conn:
        rows = await conn.execute(STRIPE_EVENTS, {"m": membership_id, "company": company_id, "limit": limit})
        return [dict(row._mapping) for row in rows]


async def company_audit(engine: AsyncEngine, company_id: str, *, limit: int = 20) -> list[dict[str, Any]]:
    """The company's changed rules, newest first (`audit_log` rows `company:{id}`)."""
    async with engine.connect() as conn:
        rows = await conn.execute(COMPANY_AUDIT, {"ref": f"company:{company_id}", "limit": limit})
        return [dict(row._mapping) for row in rows]


async def companies(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every company (id, name, currency, time zone): an operator's choice of one."""
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(COMPANIES)]


async def company(engine: AsyncEngine, company_id: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        one = text("SELECT id, name, currency, timezone FROM companies WHERE id = :c")
        row = (await conn.execute(one, {"c": company_id})).first()
    return dict(row._mapping) if row else None
