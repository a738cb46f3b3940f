"""Every table of the platform, as SQLAlchemy 2 typed models (docs/ARCHITECTURE.md §5 and §6).

The database, not only the code, holds the rules a job must never break, because jobs are
retried, replayed and run concurrently:

- enum-like columns are text with a CHECK ... IN (...) (no PostgreSQL enum types, so adding a
  value is a one-line migration), and amounts, balances and counters have range CHECKs;
- unique keys make every write of a retried activity idempotent (`INSERT ... ON CONFLICT`):
  message idempotency keys, payment references, ledger references, webhook event ids, one
  insight per retailer and day, one open recovery case per membership;
- indexes match the jobs' queries (named in each table's docstring).

Alembic autogenerates migrations from these models; `alembic check` must report no drift.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, MappedColumn, mapped_column

from schemas.base import Base, CreatedAt

# --------------------------------------------------------------------------- helpers


def _bigint_pk() -> MappedColumn[Any]:
    """A bigint identity primary key (BY DEFAULT, so seeds may still give explicit ids)."""
    return mapped_column(BigInteger, Identity(), primary_key=True)


def _in(column: str, values: tuple[str, ...]) -> str:
    """SQL text of `column IN ('a', 'b')` for a CHECK constraint."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


E164 = r"^\+[1-9][0-9]{6,14}$"
"""A phone number in E.164 (`+` and 7 to 15 digits)."""

EXTERNAL_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$"
"""The business's own id of a row (ingestion API, imports): 1-128 characters, no spaces."""
EXTERNAL_ID_CHECK = f"external_id ~ '{EXTERNAL_ID}'"

CHANNELS = ("whatsapp", "sms")
CREDIT_STATUSES = ("ACTIVE", "PAUSED", "BLOCKED")
TRANSACTION_TYPES = ("DEBIT", "CREDIT")
DEBIT_STATUSES = ("OPEN", "PARTIALLY_PAID", "CLEARED")
PAYMENT_RETURN_KINDS = ("refund", "dispute_lost")
ORDER_STATUSES = ("PENDING", "CONFIRMED", "DELIVERED", "CANCELLED", "FAILED")
PAYMENT_MODES = ("CREDIT", "COD")
PENDING_ORDER_STATUSES = ("PENDING", "COMPLETED", "RECOVERED", "EXPIRED", "FAILED")
RISK_LEVELS = ("LOW", "MEDIUM", "HIGH")
MEMBERSHIP_STATUSES = ("ACTIVE", "PAST_DUE", "CANCELLING", "CANCELLED", "TERMINATED")
CASE_STATUSES = ("OPEN", "RECOVERED", "CANCELLED", "TERMINATED")
CASE_TRIGGERS = ("payment_failed", "cancel_at_period_end", "manual")
RECOVERY_ACTION_TYPES = (
    "nudge_sms",
    "nudge_whatsapp",
    "incentive_applied",
    "case_recovered",
    "case_cancelled",
    "membership_terminated",
    "nudge_suppressed",
    "nudge_deferred",
)
ACTOR_TYPES = ("system", "user")
LOYALTY_TYPES = ("earned", "spent", "adjusted", "reversed")
QUEUE_STATUSES = ("PENDING", "RESOLVED", "NEEDS_REVIEW")
RECIPIENT_TYPES = ("retailer", "member", "customer")
MESSAGE_STATUSES = ("queued", "sending", "sent", "delivered", "failed", "suppressed", "deferred", "undelivered")
WEBHOOK_PROVIDERS = ("stripe", "twilio")
WEBHOOK_EVENT_STATUSES = ("received", "processed", "failed")
OPT_OUT_ACTIONS = ("opt_out", "opt_in")


# --------------------------------------------------------------------------- credit


class Retailer(CreatedAt, Base):
    """A shop buying on credit. Pages of retailers are read by id (the primary key)."""

    __tablename__ = "retailers"

    id: Mapped[int] = _bigint_pk()
    name: Mapped[str]
    phone: Mapped[str | None] = mapped_column(
        index=True, doc="E.164; never leaves the database in payloads or logs; indexed for inbound messages"
    )
    preferred_channel: Mapped[str] = mapped_column(server_default="whatsapp")
    timezone: Mapped[str] = mapped_column(server_default="UTC")
    credit_status: Mapped[str] = mapped_column(server_default="ACTIVE")
    credit_paused_at: Mapped[datetime | None]
    credit_pause_reason: Mapped[str | None]
    paused_by: Mapped[str | None] = mapped_column(doc="'system' or an admin id; only system pauses lift by themselves")
    stripe_customer_id: Mapped[str | None] = mapped_column(unique=True)
    external_id: Mapped[str | None] = mapped_column(
        unique=True, doc="the business's own id (ingestion API, imports): PUT by it is an upsert"
    )
    locale: Mapped[str] = mapped_column(server_default="en", doc="BCP 47 (e.g. 'en', 'hi-IN'): the messages' language")
    insights_opt_in: Mapped[bool] = mapped_column(
        server_default=text("false"), doc="receives its weekly insights message (`insights-weekly`)"
    )

    __table_args__ = (
        CheckConstraint(f"phone ~ '{E164}'", name="phone_e164"),
        CheckConstraint(_in("preferred_channel", CHANNELS), name="preferred_channel"),
        CheckConstraint(_in("credit_status", CREDIT_STATUSES), name="credit_status"),
        CheckConstraint(EXTERNAL_ID_CHECK, name="external_id_format"),
        # `insights-weekly` reads the opted-in retailers by id every hour.
        Index("ix_retailers_insights_opt_in", "id", postgresql_where=text("insights_opt_in")),
    )


class CreditAccount(Base):
    """A retailer's credit line (one per retailer)."""

    __tablename__ = "credit_accounts"

    retailer_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("retailers.id", ondelete="CASCADE"), primary_key=True
    )
    credit_limit: Mapped[Decimal] = mapped_column(server_default="50000")
    available_credit: Mapped[Decimal] = mapped_column(
        doc="credit_limit minus outstanding debits; may go below zero when the limit is lowered"
    )
    max_order_value: Mapped[Decimal] = mapped_column(server_default="50000")
    max_outstanding_days: Mapped[int] = mapped_column(server_default="30")
    payment_terms_days: Mapped[int] = mapped_column(
        server_default="30", doc="a credit order's debit is due this many days after"
    )
    currency: Mapped[str] = mapped_column(server_default="USD", doc="ISO 4217: the account's amounts and pay links")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        CheckConstraint("credit_limit >= 0", name="credit_limit_non_negative"),
        # available = limit - outstanding (a credit balance is spent on the next debits, not added
        # here); nothing outstanding is negative, and a lowered limit may take it below zero.
        CheckConstraint("available_credit <= credit_limit", name="available_credit_within_limit"),
        CheckConstraint("max_order_value > 0", name="max_order_value_positive"),
        CheckConstraint("max_outstanding_days >= 0", name="max_outstanding_days_non_negative"),
        CheckConstraint("payment_terms_days BETWEEN 0 AND 365", name="payment_terms_days_range"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso4217"),
    )


class CreditTransaction(CreatedAt, Base):
    """A DEBIT (money owed, with a due date and reminders) or a CREDIT (a payment or a reversal).

    Idempotent writes: one row per (retailer, type, reference), so a payment reference recorded
    twice is one payment; one DEBIT and one reversing CREDIT at most per order.
    Indexes: open debits by due date (reminders, guardrails); a retailer's debits by status and
    due date (oldest-first allocation, profile).
    """

    __tablename__ = "credit_transactions"

    id: Mapped[int] = _bigint_pk()
    retailer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("retailers.id", ondelete="RESTRICT"))
    type: Mapped[str]
    amount: Mapped[Decimal]
    due_date: Mapped[date | None] = mapped_column(doc="required for a DEBIT, null for a CREDIT")
    cleared_amount: Mapped[Decimal] = mapped_column(server_default="0")
    status: Mapped[str] = mapped_column(server_default="OPEN")
    reminder_count: Mapped[int] = mapped_column(server_default="0")
    reminder_sent_at: Mapped[datetime | None]
    cleared_at: Mapped[datetime | None]
    notes: Mapped[str | None]
    reference: Mapped[str | None]
    order_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("orders.id", ondelete="SET NULL"))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(
        doc="a Stripe payment's PaymentIntent (a CREDIT's): how its charge's refunds and disputes find it"
    )
    refunded_amount: Mapped[Decimal] = mapped_column(
        server_default="0", doc="a CREDIT's: what refunds and lost disputes took back of it (payment_returns)"
    )
    disputed_at: Mapped[datetime | None] = mapped_column(doc="a CREDIT's: a dispute is open at Stripe since then")
    dispute_id: Mapped[str | None] = mapped_column(doc="a CREDIT's: its latest Stripe dispute")

    __table_args__ = (
        CheckConstraint(_in("type", TRANSACTION_TYPES), name="type"),
        CheckConstraint(_in("status", DEBIT_STATUSES), name="status"),
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        CheckConstraint("cleared_amount >= 0 AND cleared_amount <= amount", name="cleared_amount_range"),
        CheckConstraint("refunded_amount >= 0 AND refunded_amount <= amount", name="refunded_amount_range"),
        CheckConstraint("reminder_count BETWEEN 0 AND 8", name="reminder_count_range"),
        CheckConstraint(
            "(type = 'DEBIT' AND due_date IS NOT NULL) OR (type = 'CREDIT' AND due_date IS NULL)",
            name="due_date_for_debits_only",
        ),
        UniqueConstraint("retailer_id", "type", "reference"),
        UniqueConstraint("order_id", "type"),
        Index(
            "ix_credit_transactions_open_debits_due_date",
            "due_date",
            postgresql_where=text("type = 'DEBIT' AND status <> 'CLEARED'"),
        ),
        Index("ix_credit_transactions_retailer_id_status_due_date", "retailer_id", "status", "due_date"),
        Index(
            "ix_credit_transactions_stripe_payment_intent_id",
            "stripe_payment_intent_id",
            postgresql_where=text("stripe_payment_intent_id IS NOT NULL"),
        ),
    )


class CreditAllocation(CreatedAt, Base):
    """What a CREDIT cleared of which DEBIT, one row per allocation (`ledger.record_credit`,
    `ledger.apply_credit_balance`): a refund of the payment reopens them, the most recent first.
    `reopened_amount` is how much of it a refund or lost dispute has taken back."""

    __tablename__ = "credit_allocations"

    id: Mapped[int] = _bigint_pk()
    retailer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("retailers.id", ondelete="RESTRICT"))
    credit_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("credit_transactions.id", ondelete="RESTRICT"))
    debit_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("credit_transactions.id", ondelete="RESTRICT"))
    amount: Mapped[Decimal]
    reopened_amount: Mapped[Decimal] = mapped_column(server_default="0")

    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("reopened_amount >= 0 AND reopened_amount <= amount", name="reopened_amount_range"),
        Index("ix_credit_allocations_credit_id", "credit_id"),
    )


class PaymentReturn(CreatedAt, Base):
    """Money a Stripe payment gave back: a refund (`kind` refund, per charge and cumulative amount
    refunded) or a lost dispute. `reference` is unique per retailer, so a late or repeated event
    books nothing twice. Where it came from: the payment's unspent balance (`from_balance`), the
    debits it had cleared (`reopened`), and what neither could take (`owed_again`, a new DEBIT)."""

    __tablename__ = "payment_returns"

    id: Mapped[int] = _bigint_pk()
    retailer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("retailers.id", ondelete="RESTRICT"))
    credit_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("credit_transactions.id", ondelete="RESTRICT"))
    kind: Mapped[str]
    reference: Mapped[str]
    stripe_id: Mapped[str] = mapped_column(doc="the charge (a refund) or the dispute (a lost dispute)")
    amount: Mapped[Decimal]
    from_balance: Mapped[Decimal] = mapped_column(server_default="0")
    reopened: Mapped[Decimal] = mapped_column(server_default="0")
    owed_again: Mapped[Decimal] = mapped_column(server_default="0")

    __table_args__ = (
        CheckConstraint(_in("kind", PAYMENT_RETURN_KINDS), name="kind"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("from_balance + reopened + owed_again = amount", name="parts_add_up"),
        UniqueConstraint("retailer_id", "reference"),
        Index("ix_payment_returns_credit_id", "credit_id"),
    )


class PaymentLink(CreatedAt, Base):
    """The retailer's current payment link, one per retailer: `{PUBLIC_BASE_URL}/pay/{token}`.

    `token` is the link's capability (random). `fingerprint` digests the debits the link pays:
    while it matches, reminders send the same URL (no Stripe call); when it changes, the token is
    replaced (the old one goes to `retired_payment_links`), an open session of the old link is
    expired at Stripe, and `generation` counts the replacements. The Stripe Checkout Session is
    made when the retailer opens the link (`checkout_session_id`, charging `session_fingerprint`:
    the debits and amounts left then) and reused while it is open and the amounts are unchanged;
    `session_count` (part of its idempotency key) counts the sessions made for this token.
    """

    __tablename__ = "payment_links"

    retailer_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("retailers.id", ondelete="CASCADE"), primary_key=True
    )
    token: Mapped[str] = mapped_column(
        unique=True, server_default=text("replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')")
    )
    checkout_session_id: Mapped[str | None] = mapped_column(unique=True)
    session_fingerprint: Mapped[str | None]
    session_count: Mapped[int] = mapped_column(server_default="0")
    url: Mapped[str]
    fingerprint: Mapped[str]
    generation: Mapped[int] = mapped_column(server_default="1")
    amount: Mapped[Decimal]
    currency: Mapped[str]
    debit_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("generation >= 1", name="generation_positive"),
        CheckConstraint("session_count >= 0", name="session_count_non_negative"),
    )


class RetiredPaymentLink(CreatedAt, Base):
    """A token replaced by a newer link: opening it says so (410) rather than "unknown"."""

    __tablename__ = "retired_payment_links"

    token: Mapped[str] = mapped_column(primary_key=True)
    retailer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("retailers.id", ondelete="CASCADE"))


class AuditLog(CreatedAt, Base):
    """Every change of money or status, written in the same transaction as the change.

    Index: a retailer's history by time.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = _bigint_pk()
    retailer_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("retailers.id", ondelete="SET NULL"))
    action: Mapped[str]
    reference: Mapped[str | None]
    old_value: Mapped[Any | None] = mapped_column(JSONB)
    new_value: Mapped[Any | None] = mapped_column(JSONB)
    performed_by: Mapped[str] = mapped_column(doc="'system' or an admin id")
    reason: Mapped[str | None]

    __table_args__ = (
        Index("ix_audit_log_retailer_id_created_at", "retailer_id", "created_at"),
        # a company's changed churn rules (`company:{id}`), without the retailers' rows
        Index("ix_audit_log_company_rules", "reference", "id", postgresql_where=text("retailer_id IS NULL")),
    )


# --------------------------------------------------------------------------- orders


class Order(CreatedAt, Base):
    """An order placed by a retailer. Index: a retailer's orders by time, covering what insights read."""

    __tablename__ = "orders"

    id: Mapped[int] = _bigint_pk()
    retailer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("retailers.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(server_default="PENDING")
    payment_mode: Mapped[str]
    total_amount: Mapped[Decimal]
    failed_at: Mapped[datetime | None]
    failure_reason: Mapped[str | None]
    external_id: Mapped[str | None] = mapped_column(unique=True, doc="the shop's own order id")

    __table_args__ = (
        CheckConstraint(_in("status", ORDER_STATUSES), name="status"),
        CheckConstraint(EXTERNAL_ID_CHECK, name="external_id_format"),
        CheckConstraint(_in("payment_mode", PAYMENT_MODES), name="payment_mode"),
        CheckConstraint("total_amount >= 0", name="total_amount_non_negative"),
        # covering: the nightly insights read a page's sold orders from the index alone (migration 0019)
        Index(
            "ix_orders_retailer_id_created_at",
            "retailer_id",
            "created_at",
            postgresql_include=["status", "total_amount", "id"],
        ),
    )


class OrderItem(Base):
    """A line of an order (for top products)."""

    __tablename__ = "order_items"

    id: Mapped[int] = _bigint_pk()
    order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    product_name: Mapped[str]
    quantity: Mapped[int]
    unit_price: Mapped[Decimal]

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("unit_price >= 0", name="unit_price_non_negative"),
    )


class PendingOrder(CreatedAt, Base):
    """A checkout in progress with its 24-hour clock; one per order.

    Index: by status and expiry (the safety-net sweep).
    """

    __tablename__ = "pending_orders"

    id: Mapped[int] = _bigint_pk()
    order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id", ondelete="CASCADE"), unique=True)
    retailer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("retailers.id", ondelete="CASCADE"))
    amount: Mapped[Decimal]
    status: Mapped[str] = mapped_column(server_default="PENDING")
    expires_at: Mapped[datetime]
    follow_up_sent_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_in("status", PENDING_ORDER_STATUSES), name="status"),
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        Index("ix_pending_orders_status_expires_at", "status", "expires_at"),
    )


# --------------------------------------------------------------------------- insights


class RetailerInsight(Base):
    """A retailer's nightly figures and friendly message; one row per retailer and day (upserted).

    `generation` counts regenerations of the same row, so a test can see a page done twice.
    """

    __tablename__ = "retailer_insights"

    id: Mapped[int] = _bigint_pk()
    retailer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("retailers.id", ondelete="CASCADE"))
    insight_date: Mapped[date]
    orders_30d: Mapped[int]
    orders_prev_30d: Mapped[int]
    gmv_30d: Mapped[Decimal]
    gmv_prev_30d: Mapped[Decimal]
    avg_order_value: Mapped[Decimal]
    top_products: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    on_time_payment_rate: Mapped[Decimal | None] = mapped_column(Numeric(5, 4))
    avg_days_to_pay: Mapped[Decimal | None] = mapped_column(Numeric(8, 2))
    credit_utilisation: Mapped[Decimal | None] = mapped_column(Numeric(8, 4))
    risk_level: Mapped[str]
    message: Mapped[str]
    generation: Mapped[int] = mapped_column(server_default="1")
    generated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("retailer_id", "insight_date"),
        CheckConstraint(_in("risk_level", RISK_LEVELS), name="risk_level"),
        CheckConstraint("orders_30d >= 0 AND orders_prev_30d >= 0", name="order_counts_non_negative"),
        CheckConstraint("gmv_30d >= 0 AND gmv_prev_30d >= 0 AND avg_order_value >= 0", name="amounts_non_negative"),
        CheckConstraint("on_time_payment_rate BETWEEN 0 AND 1", name="on_time_payment_rate_range"),
        CheckConstraint("avg_days_to_pay >= 0", name="avg_days_to_pay_non_negative"),
        CheckConstraint("credit_utilisation >= 0", name="credit_utilisation_non_negative"),
        CheckConstraint("generation >= 1", name="generation_positive"),
    )


# --------------------------------------------------------------------------- churn


class Company(CreatedAt, Base):
    """A tenant of the churn saver and its settings. The id is a short slug (e.g. "acme")."""

    __tablename__ = "companies"

    id: Mapped[str] = mapped_column(primary_key=True)
    name: Mapped[str]
    reminder_offsets_days: Mapped[list[int]] = mapped_column(
        ARRAY(Integer),
        server_default=text("'{0,2,5}'::integer[]"),
        doc="days after the case opens; at most 10, each 0-90",
    )
    channels: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("'{whatsapp,sms}'::text[]"), doc="allowed channels, in order of preference"
    )
    incentive_days: Mapped[int] = mapped_column(server_default="7")
    quiet_hours_start: Mapped[int] = mapped_column(server_default="21", doc="local hour (0-23) nudges stop")
    quiet_hours_end: Mapped[int] = mapped_column(server_default="8", doc="local hour (0-23) nudges resume")
    daily_nudge_cap: Mapped[int] = mapped_column(server_default="1", doc="nudges per member per local day")
    grace_period_days: Mapped[int] = mapped_column(server_default="3")
    timezone: Mapped[str] = mapped_column(server_default="UTC")
    currency: Mapped[str] = mapped_column(server_default="USD", doc="ISO 4217: what its members pay in")
    stripe_account_id: Mapped[str | None] = mapped_column(
        unique=True, doc="Stripe Connect account when the tenant bills through its own; None: the platform's"
    )

    __table_args__ = (
        CheckConstraint("id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'", name="id_slug"),
        CheckConstraint(
            "cardinality(reminder_offsets_days) <= 10"
            " AND array_position(reminder_offsets_days, NULL) IS NULL"
            " AND 0 <= ALL (reminder_offsets_days) AND 90 >= ALL (reminder_offsets_days)",
            name="reminder_offsets_days_range",
        ),
        CheckConstraint("cardinality(channels) >= 1 AND channels <@ ARRAY['whatsapp', 'sms']::text[]", name="channels"),
        CheckConstraint("incentive_days BETWEEN 0 AND 90", name="incentive_days_range"),
        CheckConstraint(
            "quiet_hours_start BETWEEN 0 AND 23 AND quiet_hours_end BETWEEN 0 AND 23", name="quiet_hours_range"
        ),
        CheckConstraint("daily_nudge_cap >= 0", name="daily_nudge_cap_non_negative"),
        CheckConstraint("grace_period_days BETWEEN 0 AND 90", name="grace_period_days_range"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso4217"),
    )


class Membership(CreatedAt, Base):
    """A member's subscription with a company. Name and phone stay in the database.

    Index: a company's memberships by status; Stripe ids for webhook routing.
    """

    __tablename__ = "memberships"

    id: Mapped[int] = _bigint_pk()
    company_id: Mapped[str] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    name: Mapped[str]
    phone: Mapped[str | None] = mapped_column(index=True, doc="indexed: an inbound message finds its sender by it")
    timezone: Mapped[str | None] = mapped_column(doc="None: the company's time zone")
    preferred_channel: Mapped[str] = mapped_column(server_default="whatsapp")
    stripe_customer_id: Mapped[str | None] = mapped_column(index=True)
    stripe_subscription_id: Mapped[str | None] = mapped_column(unique=True)
    status: Mapped[str] = mapped_column(server_default="ACTIVE")
    current_period_end: Mapped[datetime | None]
    stripe_event_at: Mapped[datetime | None] = mapped_column(
        doc="`created` of the latest Stripe event applied to this membership: an older one arriving late is ignored"
    )
    external_id: Mapped[str | None] = mapped_column(doc="the company's own member id, unique within the company")
    plan_amount: Mapped[Decimal | None] = mapped_column(
        Numeric(12, 2), doc="what the member pays a billing period, in the company's currency; None: unknown"
    )

    __table_args__ = (
        UniqueConstraint("company_id", "id"),  # target of the tenant-scoped foreign key of recovery_cases
        UniqueConstraint("company_id", "external_id"),
        CheckConstraint(EXTERNAL_ID_CHECK, name="external_id_format"),
        CheckConstraint(f"phone ~ '{E164}'", name="phone_e164"),
        CheckConstraint(_in("preferred_channel", CHANNELS), name="preferred_channel"),
        CheckConstraint(_in("status", MEMBERSHIP_STATUSES), name="status"),
        CheckConstraint("plan_amount IS NULL OR plan_amount >= 0", name="plan_amount_non_negative"),
        Index("ix_memberships_company_id_status", "company_id", "status"),
    )


class RecoveryCase(Base):
    """An at-risk membership being won back; at most one OPEN case per membership.

    The foreign key (company_id, membership_id) makes a case of one company pointing at
    another company's member impossible. Index: a company's cases by status.
    """

    __tablename__ = "recovery_cases"

    id: Mapped[int] = _bigint_pk()
    company_id: Mapped[str] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    membership_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(server_default="OPEN")
    trigger: Mapped[str]
    attempts: Mapped[int] = mapped_column(server_default="0", doc="nudges sent")
    last_nudge_at: Mapped[datetime | None]
    incentive_applied_at: Mapped[datetime | None]
    opened_at: Mapped[datetime] = mapped_column(server_default=func.now())
    closed_at: Mapped[datetime | None]

    __table_args__ = (
        ForeignKeyConstraint(
            ["company_id", "membership_id"], ["memberships.company_id", "memberships.id"], ondelete="CASCADE"
        ),
        UniqueConstraint("company_id", "id"),  # target of the tenant-scoped foreign key of recovery_actions
        CheckConstraint(_in("status", CASE_STATUSES), name="status"),
        CheckConstraint(_in("trigger", CASE_TRIGGERS), name="trigger"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_recovery_cases_company_id_status", "company_id", "status"),
        Index("ix_recovery_cases_company_id_id", "company_id", "id"),  # a company's cases, keyset-paged
        Index(
            "uq_recovery_cases_one_open_per_membership",
            "membership_id",
            unique=True,
            postgresql_where=text("status = 'OPEN'"),
        ),
    )


class RecoveryAction(CreatedAt, Base):
    """What was done on a case and by whom (hashed). Never message text or a phone number."""

    __tablename__ = "recovery_actions"

    id: Mapped[int] = _bigint_pk()
    case_id: Mapped[int] = mapped_column(BigInteger)
    company_id: Mapped[str]
    type: Mapped[str]
    actor_type: Mapped[str] = mapped_column(server_default="system")
    actor_id_hash: Mapped[str | None]
    # `metadata` is reserved on declarative classes: the attribute has another name.
    action_metadata: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb"), doc="attempt_number, channel, template_version, manual"
    )
    idempotency_key: Mapped[str] = mapped_column(unique=True)

    __table_args__ = (
        ForeignKeyConstraint(
            ["company_id", "case_id"], ["recovery_cases.company_id", "recovery_cases.id"], ondelete="CASCADE"
        ),
        CheckConstraint(_in("type", RECOVERY_ACTION_TYPES), name="type"),
        CheckConstraint(_in("actor_type", ACTOR_TYPES), name="actor_type"),
        CheckConstraint("actor_type = 'system' OR actor_id_hash IS NOT NULL", name="user_actor_has_id"),
        Index("ix_recovery_actions_case_id_created_at", "case_id", "created_at"),
    )


class MembershipStripeEvent(Base):
    """A Stripe event the churn handlers matched to a membership: its id, type and `created`, and
    whether it was applied or ignored (older than one applied already). Never the event's body."""

    __tablename__ = "membership_stripe_events"

    id: Mapped[int] = _bigint_pk()
    company_id: Mapped[str]
    membership_id: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[str]
    event_type: Mapped[str]
    event_created_at: Mapped[datetime]
    applied: Mapped[bool]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        ForeignKeyConstraint(
            ["company_id", "membership_id"], ["memberships.company_id", "memberships.id"], ondelete="CASCADE"
        ),
        UniqueConstraint("membership_id", "event_id"),  # a webhook retried is recorded once
    )


# --------------------------------------------------------------------------- loyalty


class Customer(CreatedAt, Base):
    """A loyalty customer. `loyalty_points` equals the sum of their ledger and is never negative."""

    __tablename__ = "customers"

    id: Mapped[int] = _bigint_pk()
    name: Mapped[str]
    phone: Mapped[str | None] = mapped_column(index=True, doc="indexed: an inbound message finds its sender by it")
    loyalty_points: Mapped[int] = mapped_column(server_default="0")
    earn_rate: Mapped[Decimal] = mapped_column(
        Numeric(10, 4), server_default="1", doc="points earned per currency unit spent (floored)"
    )
    stripe_customer_id: Mapped[str | None] = mapped_column(unique=True)
    external_id: Mapped[str | None] = mapped_column(unique=True, doc="the business's own customer id")

    __table_args__ = (
        CheckConstraint(f"phone ~ '{E164}'", name="phone_e164"),
        CheckConstraint(EXTERNAL_ID_CHECK, name="external_id_format"),
        CheckConstraint("loyalty_points >= 0", name="loyalty_points_non_negative"),
        CheckConstraint("earn_rate >= 0", name="earn_rate_non_negative"),
    )


class LoyaltyTransaction(CreatedAt, Base):
    """One signed change of a customer's points (spent < 0, earned > 0).

    Unique per (reference_type, reference_id, type): applying an order twice writes nothing new.
    Index: a customer's ledger by time (the integrity audit sums it).
    """

    __tablename__ = "loyalty_transactions"

    id: Mapped[int] = _bigint_pk()
    customer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("customers.id", ondelete="RESTRICT"))
    type: Mapped[str]
    points: Mapped[int] = mapped_column(doc="signed: the change of the balance")
    balance_before: Mapped[int]
    balance_after: Mapped[int]
    reference_type: Mapped[str] = mapped_column(doc="e.g. 'order', 'refund', 'manual'")
    reference_id: Mapped[str]

    __table_args__ = (
        UniqueConstraint("reference_type", "reference_id", "type"),
        CheckConstraint(_in("type", LOYALTY_TYPES), name="type"),
        CheckConstraint("balance_before >= 0 AND balance_after >= 0", name="balances_non_negative"),
        CheckConstraint("balance_after = balance_before + points", name="balance_arithmetic"),
        CheckConstraint(
            "(type = 'earned' AND points >= 0) OR (type = 'spent' AND points <= 0) OR type IN ('adjusted', 'reversed')",
            name="points_sign",
        ),
        Index("ix_loyalty_transactions_customer_id_created_at", "customer_id", "created_at"),
    )


class LoyaltyReconciliationQueueItem(CreatedAt, Base):
    """An order whose points failed to apply, retried by its workflow; one per order reference.

    Index: by status (the sweep and the review list).
    """

    __tablename__ = "loyalty_reconciliation_queue"

    id: Mapped[int] = _bigint_pk()
    customer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("customers.id", ondelete="RESTRICT"))
    order_reference: Mapped[str] = mapped_column(unique=True)
    payment_intent_id: Mapped[str | None]
    points_redeemed: Mapped[int] = mapped_column(server_default="0")
    order_total: Mapped[Decimal]
    status: Mapped[str] = mapped_column(server_default="PENDING")
    resolution: Mapped[str | None] = mapped_column(doc="e.g. 'applied', 'refunded', 'manual'")
    attempts: Mapped[int] = mapped_column(server_default="0")
    last_error: Mapped[str | None]
    resolved_by: Mapped[str | None]
    resolved_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        CheckConstraint(_in("status", QUEUE_STATUSES), name="status"),
        CheckConstraint("points_redeemed >= 0", name="points_redeemed_non_negative"),
        CheckConstraint("order_total >= 0", name="order_total_non_negative"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_loyalty_reconciliation_queue_status_created_at", "status", "created_at"),
    )


# --------------------------------------------------------------------------- messaging and webhooks


class MessageLog(CreatedAt, Base):
    """The outbox: one row per message idempotency key. Never the body, never the phone number.

    Index: a recipient's messages by time (the per-recipient daily cap).
    """

    __tablename__ = "message_log"

    id: Mapped[int] = _bigint_pk()
    idempotency_key: Mapped[str] = mapped_column(unique=True)
    recipient_type: Mapped[str]
    recipient_id: Mapped[str]
    channel: Mapped[str]
    template: Mapped[str]
    template_version: Mapped[int]
    status: Mapped[str] = mapped_column(server_default="queued")
    provider_sid: Mapped[str | None] = mapped_column(unique=True)
    error_code: Mapped[int | None]
    reason: Mapped[str | None] = mapped_column(doc="why suppressed, deferred or failed")
    attempts: Mapped[int] = mapped_column(server_default="0")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    sent_at: Mapped[datetime | None]
    sender: Mapped[str | None] = mapped_column(doc="the From address of the attempt in flight (or that sent it)")
    content_sid: Mapped[str | None] = mapped_column(doc="the approved WhatsApp template sent instead of text, if so")
    lease_started_at: Mapped[datetime | None] = mapped_column(doc="when the attempt holding `sending` claimed it")
    lease_until: Mapped[datetime | None] = mapped_column(
        doc="`sending` belongs to one attempt until then; no other attempt sends or looks it up before"
    )

    __table_args__ = (
        CheckConstraint(_in("recipient_type", RECIPIENT_TYPES), name="recipient_type"),
        CheckConstraint(_in("channel", CHANNELS), name="channel"),
        CheckConstraint(_in("status", MESSAGE_STATUSES), name="status"),
        CheckConstraint("template_version >= 1", name="template_version_positive"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_message_log_recipient_created_at", "recipient_type", "recipient_id", "created_at"),
        # held and failed messages for the API's gauges (workers/business_metrics.py): small, partial
        Index(
            "ix_message_log_attention",
            "status",
            "updated_at",
            postgresql_where=text("status IN ('deferred', 'failed', 'undelivered')"),
        ),
        # the messages in flight for the brake's state (activities/messaging/brake.py): a handful
        Index("ix_message_log_sending", "lease_until", postgresql_where=text("status = 'sending'")),
    )


class RecipientOptOut(CreatedAt, Base):
    """A recipient who asked not to be messaged on a channel (Twilio 21610 or an inbound STOP)."""

    __tablename__ = "recipient_opt_outs"

    recipient_type: Mapped[str]
    recipient_id: Mapped[str]
    channel: Mapped[str]
    reason: Mapped[str | None]

    __table_args__ = (
        PrimaryKeyConstraint("recipient_type", "recipient_id", "channel"),
        CheckConstraint(_in("recipient_type", RECIPIENT_TYPES), name="recipient_type"),
        CheckConstraint(_in("channel", CHANNELS), name="channel"),
    )


class RecipientOptOutEvent(CreatedAt, Base):
    """The history of `recipient_opt_outs`: every opt-out and opt-in (STOP, START, 21610), as it came.

    Index: a recipient's events by time (what an operator reads to answer "why no message?").
    """

    __tablename__ = "recipient_opt_out_events"

    id: Mapped[int] = _bigint_pk()
    recipient_type: Mapped[str]
    recipient_id: Mapped[str]
    channel: Mapped[str]
    action: Mapped[str] = mapped_column(doc="opt_out or opt_in")
    reason: Mapped[str | None]

    __table_args__ = (
        CheckConstraint(_in("recipient_type", RECIPIENT_TYPES), name="recipient_type"),
        CheckConstraint(_in("channel", CHANNELS), name="channel"),
        CheckConstraint(_in("action", OPT_OUT_ACTIONS), name="action"),
        Index("ix_recipient_opt_out_events_recipient_created_at", "recipient_type", "recipient_id", "created_at"),
    )


class WhatsAppSession(Base):
    """When a recipient last wrote to one of our WhatsApp senders: WhatsApp's customer-service
    window (24 h) is open until then plus 24 h, and a kind with an approved template goes freeform
    inside it (activities/messaging/send.py). Written by the inbound webhook for every WhatsApp
    message from a number one of our recipients has, whatever its body, at the time the message
    was first received (a MessageSid applies once), never moved back. Read by the send path
    instead of a Twilio list call: a batch's recipients in one statement, by the primary key.
    """

    __tablename__ = "whatsapp_sessions"

    phone: Mapped[str] = mapped_column(doc="the recipient's number, E.164 (as `retailers.phone`)")
    sender: Mapped[str] = mapped_column(doc="our WhatsApp sender the message went to: `whatsapp:+1...`")
    last_inbound_at: Mapped[datetime]

    __table_args__ = (
        PrimaryKeyConstraint("phone", "sender"),
        CheckConstraint(f"phone ~ '{E164}'", name="phone_e164"),
    )


class MessagingBrake(Base):
    """The emergency brake: one row; while `paused`, the outbox holds every outbound message."""

    __tablename__ = "messaging_brake"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, server_default="1")
    paused: Mapped[bool] = mapped_column(server_default=text("false"))
    reason: Mapped[str | None]
    actor: Mapped[str | None]
    changed_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class MessagingPace(Base):
    """The next free send slot of one provider's rate limit, shared by every messaging worker.

    Temporal's task-queue limit counts activities, and a batch activity carries many messages:
    each message reserves its own slot here (one row-locked UPDATE on the database's clock), so
    the limit holds in messages per second across workers whatever an activity carries."""

    __tablename__ = "messaging_pace"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    next_slot: Mapped[datetime] = mapped_column(server_default=func.now())


class ProcessedWebhookEvent(Base):
    """A webhook event: `received` while its handler runs (or after it failed for now, so the
    provider's retry runs it again), then `processed`, or `failed` for good (`error` says why).
    A replay of a processed or failed event is acknowledged and ignored.
    """

    __tablename__ = "processed_webhook_events"

    provider: Mapped[str]
    event_id: Mapped[str]
    event_type: Mapped[str]
    status: Mapped[str] = mapped_column(server_default="received")
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    claimed_at: Mapped[datetime | None] = mapped_column(doc="a handler runs it since then (a lease)")
    processed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(doc="the handler's last error (type and message, masked)")

    __table_args__ = (
        PrimaryKeyConstraint("provider", "event_id"),
        CheckConstraint(_in("provider", WEBHOOK_PROVIDERS), name="provider"),
        CheckConstraint(_in("status", WEBHOOK_EVENT_STATUSES), name="status"),
        Index("ix_processed_webhook_events_received_at", "received_at"),
        Index("ix_processed_webhook_events_failed", "provider", postgresql_where=text("status = 'failed'")),
    )


# --------------------------------------------------------------------------- imports


IMPORT_KINDS = (
    "retailers",
    "credit_accounts",
    "credit_transactions",
    "orders",
    "companies",
    "memberships",
    "recovery_cases",
    "customers",
    "loyalty_balances",
)


class ImportRun(CreatedAt, Base):
    """One file imported by `jobctl import`: its checkpoint. The id is the kind, the mapping and the
    SHA-256 of the file's bytes, so re-running the same file resumes it and a changed file is a new run.

    `lines_done` counts the file's lines committed (rows written and refusals recorded in the same
    transaction as the checkpoint): a crash loses at most the batch in flight, which re-running redoes.
    """

    __tablename__ = "import_runs"

    id: Mapped[str] = mapped_column(primary_key=True)
    kind: Mapped[str]
    source: Mapped[str] = mapped_column(doc="the file's name, as given")
    lines_done: Mapped[int] = mapped_column(server_default="0")
    imported: Mapped[int] = mapped_column(server_default="0")
    refused: Mapped[int] = mapped_column(server_default="0")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_in("kind", IMPORT_KINDS), name="kind"),
        CheckConstraint("lines_done >= 0 AND imported >= 0 AND refused >= 0", name="counts_non_negative"),
    )


class ImportRefusal(Base):
    """A row `jobctl import` refused: its line number, the field at fault and why (the report)."""

    __tablename__ = "import_refusals"

    run_id: Mapped[str] = mapped_column(ForeignKey("import_runs.id", ondelete="CASCADE"))
    line: Mapped[int]
    field: Mapped[str | None]
    reason: Mapped[str]

    __table_args__ = (PrimaryKeyConstraint("run_id", "line"),)


# --------------------------------------------------------------------------- the HTTP API


class ApiKey(CreatedAt, Base):
    """A caller of the HTTP API. Only the key's SHA-256 is stored; the key is shown once.

    `name` is the actor recorded in audit rows; `company_id` (when set) confines the key to that
    tenant's churn data.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = _bigint_pk()
    name: Mapped[str] = mapped_column(unique=True)
    key_hash: Mapped[str] = mapped_column(unique=True)
    prefix: Mapped[str] = mapped_column(doc="the key's first characters, to tell keys apart in listings")
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    company_id: Mapped[str | None] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'", name="name_slug"),
        CheckConstraint("cardinality(scopes) >= 1", name="scopes_not_empty"),
    )


class ConsoleUser(CreatedAt, Base):
    """A person signing in to the business console (`/console`): only the password's argon2 hash is
    stored, or for an OIDC user the provider's identity (no password). `username` is the actor in
    the audit rows their actions write (`console:{username}`); `role` decides what they see and may
    do; a `company_admin` is bound to `company_id` and sees only that company's data."""

    __tablename__ = "console_users"

    id: Mapped[int] = _bigint_pk()
    username: Mapped[str] = mapped_column(unique=True)
    password_hash: Mapped[str | None]
    """A local user's argon2 hash; NULL for a user who signs in through OIDC (`external_id`)."""
    external_id: Mapped[str | None] = mapped_column(unique=True)
    """An OIDC user's identity at the provider, `oidc:{issuer}:{sub}`; NULL for a local user."""
    role: Mapped[str]
    company_id: Mapped[str | None] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    disabled_at: Mapped[datetime | None]
    last_sign_in_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("username ~ '^[a-z0-9][a-z0-9_.@+-]{1,63}$'", name="username_slug"),
        CheckConstraint("(password_hash IS NULL) <> (external_id IS NULL)", name="password_or_external_id"),
        CheckConstraint("role IN ('finance', 'support', 'company_admin', 'operator', 'read_only')", name="role_known"),
        CheckConstraint("(role = 'company_admin') = (company_id IS NOT NULL)", name="company_admin_has_company"),
    )


class IdempotentRequest(CreatedAt, Base):
    """A POST made with an `Idempotency-Key`: the first answer, replayed to a retry with the same body.

    `status_code` NULL: the first request is still being answered.
    """

    __tablename__ = "api_idempotency_keys"

    api_key_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("api_keys.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str]
    request_hash: Mapped[str] = mapped_column(doc="SHA-256 of method, path and body")
    status_code: Mapped[int | None]
    response_body: Mapped[Any | None] = mapped_column(JSONB)

    __table_args__ = (
        PrimaryKeyConstraint("api_key_id", "idempotency_key"),
        CheckConstraint("char_length(idempotency_key) BETWEEN 1 AND 255", name="key_length"),
        Index("ix_api_idempotency_keys_created_at", "created_at"),
    )


# --------------------------------------------------------------------------- outbound events


OUTBOUND_EVENT_TYPES = (
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
"""The catalogue of outbound events (docs/ARCHITECTURE.md §6, "Outbound events")."""
EVENT_DELIVERY_STATUSES = ("pending", "delivered", "failed")
EVENT_ID_DEFAULT = "'evt_' || replace(gen_random_uuid()::text, '-', '')"
"""`evt_` and 32 hex digits: what a receiver de-duplicates on."""


class EventSubscription(CreatedAt, Base):
    """A receiver of outbound events: its URL, the types it wants and the secret that signs them.

    The secret is stored as given back once at creation (it must be readable to sign: an HMAC key).
    `delivered_through` is the delivery's cursor: every event with a smaller or equal id was delivered
    to it or given up on (`event_deliveries`); it starts at the newest event when the subscription is
    made, so a new subscriber gets what happens from then on. `company_id` (a company-bound key's
    subscription) limits it to that company's events."""

    __tablename__ = "event_subscriptions"

    id: Mapped[int] = _bigint_pk()
    url: Mapped[str]
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    secret: Mapped[str]
    description: Mapped[str | None]
    company_id: Mapped[str | None] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    created_by: Mapped[str]
    delivered_through: Mapped[int] = mapped_column(BigInteger, server_default="0")
    disabled_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("url ~ '^https?://'", name="url_http"),
        CheckConstraint("cardinality(event_types) >= 1", name="event_types_not_empty"),
        CheckConstraint("char_length(secret) >= 32", name="secret_length"),
    )


class OutboundEvent(Base):
    """One thing that happened, written in the transaction that made it happen (the outbox).

    `id` is the global order of occurrence (delivery follows it); `event_id` (`evt_...`) is what a
    receiver de-duplicates on. `dedupe_key` is unique: a change replayed by a retried activity
    writes no second event. The payload holds ids and amounts, never names or phone numbers."""

    __tablename__ = "outbound_events"

    id: Mapped[int] = _bigint_pk()
    event_id: Mapped[str] = mapped_column(unique=True, server_default=text(EVENT_ID_DEFAULT))
    type: Mapped[str]
    object_type: Mapped[str]
    object_id: Mapped[str]
    company_id: Mapped[str | None]
    payload: Mapped[Any] = mapped_column(JSONB)
    dedupe_key: Mapped[str] = mapped_column(unique=True)
    occurred_at: Mapped[datetime] = mapped_column(
        server_default=func.clock_timestamp(), doc="when the row was written (not the transaction's start)"
    )

    __table_args__ = (
        CheckConstraint(_in("type", OUTBOUND_EVENT_TYPES), name="type"),
        Index("ix_outbound_events_occurred_at", "occurred_at"),
        Index("ix_outbound_events_object_type_object_id", "object_type", "object_id"),
        Index("ix_outbound_events_type_id", "type", "id"),
    )


class EventDelivery(Base):
    """A subscription's delivery of one event: its attempts, the receiver's last answer, the outcome.

    Written by the delivery (`activities/events/delivery.py`) as it tries; `pending` with `replay`
    set is an operator's redelivery (`jobctl events replay`), delivered before the next new event."""

    __tablename__ = "event_deliveries"

    subscription_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("event_subscriptions.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("outbound_events.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(server_default="pending")
    replay: Mapped[bool] = mapped_column(server_default=text("false"))
    attempts: Mapped[int] = mapped_column(server_default="0")
    last_status: Mapped[int | None] = mapped_column(doc="the receiver's last HTTP status (None: no answer)")
    last_error: Mapped[str | None]
    queued_at: Mapped[datetime] = mapped_column(
        server_default=func.now(), doc="the event's occurrence, or an operator's replay: give-up counts from it"
    )
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("subscription_id", "event_id"),
        CheckConstraint(_in("status", EVENT_DELIVERY_STATUSES), name="status"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_event_deliveries_event_id", "event_id"),
    )
