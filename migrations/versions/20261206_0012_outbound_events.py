"""outbound events: subscriptions, the events outbox and each subscription's deliveries (issue #34)

- `event_subscriptions`: a receiver's URL, the event types it wants, the secret that signs them,
  and the delivery's cursor (`delivered_through`).
- `outbound_events`: the outbox, written in the transaction of the change; `id` is the order of
  occurrence, `event_id` what receivers de-duplicate on, `dedupe_key` unique so a replayed change
  writes no second event.
- `event_deliveries`: per subscription and event, the attempts and the outcome.
- `outbound_event_from_audit()`, an AFTER INSERT trigger on `audit_log`: every credit, payment and
  order change already writes an audit row in its own transaction, only when it happened (set-based
  statements too: the guardrails, the order sweep), so the credit, payment and order events are
  written there, one INSERT per audited change of a catalogued action (docs/ARCHITECTURE.md §6).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 23:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TYPES = (
    "credit.paused",
    "credit.resumed",
    "credit.blocked",
    "credit.limits_changed",
    "payment.recorded",
    "payment.refunded",
    "payment.disputed",
    "order.expired",
    "order.failed",
    "churn.case.closed",
    "loyalty.item.needs_review",
)
EVENT_ID_DEFAULT = "'evt_' || replace(gen_random_uuid()::text, '-', '')"

AUDITED_ACTIONS = (
    "credit_paused",
    "credit_unpaused",
    "credit_resumed",
    "credit_blocked",
    "credit_limits_changed",
    "payment_recorded",
    "payment_refunded",
    "payment_dispute_lost",
    "payment_disputed",
    "pending_order_expired",
    "order_failed",
)

# One audit row of a catalogued action -> one event, in the audit row's transaction. The payload
# holds ids, statuses and amounts: an admin's free-text reason and names stay in the audit log.
FROM_AUDIT = """
CREATE FUNCTION outbound_event_from_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n jsonb := COALESCE(NEW.new_value, '{}'::jsonb);
    by_whom text := CASE
        WHEN NEW.performed_by = 'system' THEN 'system'
        WHEN n ->> 'paused_by' = 'stripe-dispute' THEN 'stripe-dispute'
        ELSE 'admin' END;
    event_type text;
    object_type text := 'retailer';
    object_id text := NEW.retailer_id::text;
    payload jsonb := jsonb_build_object('retailer_id', NEW.retailer_id);
BEGIN
    CASE NEW.action
    WHEN 'credit_paused', 'credit_unpaused', 'credit_resumed', 'credit_blocked' THEN
        event_type := CASE NEW.action WHEN 'credit_paused' THEN 'credit.paused'
                                      WHEN 'credit_blocked' THEN 'credit.blocked'
                                      ELSE 'credit.resumed' END;
        payload := payload || jsonb_build_object('credit_status', n ->> 'credit_status', 'by', by_whom,
            'reason', CASE WHEN by_whom = 'system' THEN NEW.reason END);
    WHEN 'credit_limits_changed' THEN
        event_type := 'credit.limits_changed';
        payload := payload || jsonb_build_object('old', NEW.old_value, 'new', n);
    WHEN 'payment_recorded' THEN
        event_type := 'payment.recorded';
        object_type := 'payment';
        object_id := n ->> 'credit_transaction_id';
        payload := payload || jsonb_build_object('payment_id', (n ->> 'credit_transaction_id')::bigint,
            'reference', NEW.reference, 'amount', n -> 'amount', 'allocated', n -> 'allocated',
            'credit_balance_added', n -> 'credit_balance_added');
    WHEN 'payment_refunded', 'payment_dispute_lost' THEN
        event_type := 'payment.refunded';
        object_type := 'payment';
        object_id := n ->> 'credit_transaction_id';
        payload := payload || jsonb_build_object('payment_id', (n ->> 'credit_transaction_id')::bigint,
            'reference', n ->> 'payment', 'kind', CASE NEW.action WHEN 'payment_refunded' THEN 'refund'
            ELSE 'dispute_lost' END, 'amount', n -> 'amount', 'refunded_amount', n -> 'refunded_amount',
            'owed_again', n -> 'owed_again');
    WHEN 'payment_disputed' THEN
        event_type := 'payment.disputed';
        object_type := 'payment';
        object_id := n ->> 'credit_transaction_id';
        payload := payload || jsonb_build_object('payment_id', (n ->> 'credit_transaction_id')::bigint,
            'reference', n ->> 'payment', 'dispute_id', n ->> 'dispute_id');
    WHEN 'pending_order_expired', 'order_failed' THEN
        event_type := CASE NEW.action WHEN 'order_failed' THEN 'order.failed' ELSE 'order.expired' END;
        object_type := 'order';
        object_id := substr(NEW.reference, 7);
        payload := payload || jsonb_build_object('order_id', substr(NEW.reference, 7)::bigint);
        IF NEW.action = 'order_failed' THEN
            payload := payload || jsonb_build_object('reversed_amount', n -> 'reversed_amount',
                'returned_to_balance', n -> 'returned_to_balance');
        END IF;
    ELSE
        RETURN NULL;
    END CASE;
    INSERT INTO outbound_events (type, object_type, object_id, payload, dedupe_key)
    VALUES (event_type, object_type, COALESCE(object_id, ''), jsonb_strip_nulls(payload), 'audit:' || NEW.id)
    ON CONFLICT (dedupe_key) DO NOTHING;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "event_subscriptions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("company_id", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("delivered_through", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("url ~ '^https?://'", name=op.f("ck_event_subscriptions_url_http")),
        sa.CheckConstraint("cardinality(event_types) >= 1", name=op.f("ck_event_subscriptions_event_types_not_empty")),
        sa.CheckConstraint("char_length(secret) >= 32", name=op.f("ck_event_subscriptions_secret_length")),
        sa.ForeignKeyConstraint(
            ["company_id"],
            ["companies.id"],
            name=op.f("fk_event_subscriptions_company_id_companies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_subscriptions")),
    )
    op.create_table(
        "outbound_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("event_id", sa.Text(), server_default=sa.text(EVENT_ID_DEFAULT), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("object_type", sa.Text(), nullable=False),
        sa.Column("object_id", sa.Text(), nullable=False),
        sa.Column("company_id", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column(
            "occurred_at", sa.DateTime(timezone=True), server_default=sa.text("clock_timestamp()"), nullable=False
        ),
        sa.CheckConstraint(
            "type IN (" + ", ".join(f"'{t}'" for t in EVENT_TYPES) + ")", name=op.f("ck_outbound_events_type")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbound_events")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_outbound_events_dedupe_key")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbound_events_event_id")),
    )
    op.create_index(
        "ix_outbound_events_object_type_object_id", "outbound_events", ["object_type", "object_id"], unique=False
    )
    op.create_index("ix_outbound_events_type_id", "outbound_events", ["type", "id"], unique=False)
    op.create_index("ix_outbound_events_occurred_at", "outbound_events", ["occurred_at"], unique=False)
    op.create_table(
        "event_deliveries",
        sa.Column("subscription_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("replay", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name=op.f("ck_event_deliveries_status")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_event_deliveries_attempts_non_negative")),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbound_events.id"],
            name=op.f("fk_event_deliveries_event_id_outbound_events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["event_subscriptions.id"],
            name=op.f("fk_event_deliveries_subscription_id_event_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("subscription_id", "event_id", name=op.f("pk_event_deliveries")),
    )
    op.create_index("ix_event_deliveries_event_id", "event_deliveries", ["event_id"], unique=False)

    op.execute(FROM_AUDIT)
    op.execute(
        "CREATE TRIGGER audit_log_outbound_events AFTER INSERT ON audit_log FOR EACH ROW"
        " WHEN (NEW.action IN (" + ", ".join(f"'{a}'" for a in AUDITED_ACTIONS) + "))"
        " EXECUTE FUNCTION outbound_event_from_audit()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_log_outbound_events ON audit_log")
    op.execute("DROP FUNCTION outbound_event_from_audit()")
    op.drop_index("ix_event_deliveries_event_id", table_name="event_deliveries")
    op.drop_table("event_deliveries")
    op.drop_index("ix_outbound_events_occurred_at", table_name="outbound_events")
    op.drop_index("ix_outbound_events_type_id", table_name="outbound_events")
    op.drop_index("ix_outbound_events_object_type_object_id", table_name="outbound_events")
    op.drop_table("outbound_events")
    op.drop_table("event_subscriptions")
