"""Data retention in the database: each activity changes one page of rows that still need it
(old webhook ids, message provider data, ended members' actions, expired API idempotency keys,
closed WhatsApp sessions).

Every statement selects only rows not yet in their retained form, so a retried page or a second
run changes nothing. Money and ledger tables (credit, orders, loyalty) are never named here.
The daily cap counts `message_log` rows by recipient, status and time: those columns stay.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from schemas.retention import ANONYMISED_ACTOR, KEPT_ACTION_METADATA, RetentionPage

_DELETE_WEBHOOK_EVENTS = text(
    """
DELETE FROM processed_webhook_events WHERE (provider, event_id) IN (
    SELECT provider, event_id FROM processed_webhook_events WHERE received_at < :before
    ORDER BY received_at LIMIT :limit FOR UPDATE SKIP LOCKED)
"""
)

# The provider's data on a message row: its SID (which opens the body and the number at Twilio),
# its error code and the reason text. Recipient, channel, template, status and times stay.
_CLEAR_MESSAGE_PAYLOADS = text(
    """
UPDATE message_log SET provider_sid = NULL, error_code = NULL, reason = NULL
WHERE id IN (
    SELECT id FROM message_log
    WHERE created_at < :before AND (provider_sid IS NOT NULL OR error_code IS NOT NULL OR reason IS NOT NULL)
    ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED)
"""
)

# A membership has ended when it is cancelled or terminated, its paid period is over and none of
# its cases is open or closed since the cut-off.
_ANONYMISE_RECOVERY_ACTIONS = text(
    """
UPDATE recovery_actions a
SET actor_id_hash = CASE WHEN a.actor_id_hash IS NULL THEN NULL ELSE :anonymised END,
    metadata = (SELECT COALESCE(jsonb_object_agg(j.key, j.value), '{}'::jsonb)
                FROM jsonb_each(a.metadata) AS j WHERE j.key = ANY(:kept))
WHERE a.id IN (
    SELECT x.id FROM recovery_actions x
    JOIN recovery_cases c ON c.id = x.case_id AND c.company_id = x.company_id
    JOIN memberships m ON m.id = c.membership_id AND m.company_id = c.company_id
    WHERE m.status IN ('CANCELLED', 'TERMINATED')
      AND (m.current_period_end IS NULL OR m.current_period_end < :before)
      AND NOT EXISTS (SELECT 1 FROM recovery_cases o WHERE o.membership_id = m.id
                      AND (o.closed_at IS NULL OR o.closed_at >= :before))
      AND ((x.actor_id_hash IS NOT NULL AND x.actor_id_hash <> :anonymised)
           OR EXISTS (SELECT 1 FROM jsonb_object_keys(x.metadata) AS k WHERE k <> ALL(:kept)))
    ORDER BY x.id LIMIT :limit FOR UPDATE OF x SKIP LOCKED)
"""
)


# An Idempotency-Key replays its answer IDEMPOTENCY_RETENTION_HOURS; after that the API treats
# it as new (workers/api/idempotency.py), so its row only takes space.
_DELETE_IDEMPOTENCY_KEYS = text(
    """
DELETE FROM api_idempotency_keys WHERE (api_key_id, idempotency_key) IN (
    SELECT api_key_id, idempotency_key FROM api_idempotency_keys WHERE created_at < :before
    ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED)
"""
)


# A WhatsApp session is open 24 hours after the number's last inbound message
# (`outbox.session_open`); after that its row decides nothing and only holds a phone number.
_DELETE_WHATSAPP_SESSIONS = text(
    """
DELETE FROM whatsapp_sessions WHERE (phone, sender) IN (
    SELECT phone, sender FROM whatsapp_sessions WHERE last_inbound_at < :before
    ORDER BY last_inbound_at LIMIT :limit FOR UPDATE SKIP LOCKED)
"""
)


@dataclass
class RetentionActivities:
    engine: AsyncEngine

    async def _page(self, statement: TextClause, page: RetentionPage, **params: object) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(statement, {"before": page.older_than, "limit": page.limit, **params})
        return result.rowcount

    @activity.defn(name="retention_delete_webhook_events")
    async def delete_webhook_events(self, page: RetentionPage) -> int:
        """Webhook event ids older than any provider retry: the de-duplication no longer needs them."""
        return await self._page(_DELETE_WEBHOOK_EVENTS, page)

    @activity.defn(name="retention_clear_message_payloads")
    async def clear_message_payloads(self, page: RetentionPage) -> int:
        """Old message rows keep their counts (reports, the cap) but not the provider's data."""
        return await self._page(_CLEAR_MESSAGE_PAYLOADS, page)

    @activity.defn(name="retention_anonymise_recovery_actions")
    async def anonymise_recovery_actions(self, page: RetentionPage) -> int:
        """Actions on long-ended memberships keep what was done, not who did it or their notes."""
        return await self._page(
            _ANONYMISE_RECOVERY_ACTIONS, page, anonymised=ANONYMISED_ACTOR, kept=list(KEPT_ACTION_METADATA)
        )

    @activity.defn(name="retention_delete_idempotency_keys")
    async def delete_idempotency_keys(self, page: RetentionPage) -> int:
        """API Idempotency-Keys past their retention: the API already treats them as new."""
        return await self._page(_DELETE_IDEMPOTENCY_KEYS, page)

    @activity.defn(name="retention_delete_whatsapp_sessions")
    async def delete_whatsapp_sessions(self, page: RetentionPage) -> int:
        """Sessions closed a day or more: the send path would read them as closed anyway."""
        return await self._page(_DELETE_WHATSAPP_SESSIONS, page)
