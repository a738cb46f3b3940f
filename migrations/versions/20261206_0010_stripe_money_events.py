"""stripe money events: refunds and disputes of Stripe payments reach the credit ledger (issue #32)

- `credit_transactions`: a CREDIT's Stripe PaymentIntent (how a charge's refund or dispute finds
  the payment), what refunds and lost disputes took back of it (`refunded_amount`), and its open
  dispute (`disputed_at`, `dispute_id`).
- `credit_allocations`: what each CREDIT cleared of which DEBIT, so a refund reopens exactly
  those, the most recent first. Filled from the audit rows of the allocations made before
  (`allocated X of payment REF` / `of the credit balance (REF)`), best effort.
- `payment_returns`: each refund or lost dispute booked, unique per retailer and reference.

A PaymentIntent payment recorded before (reference `pi_...`) gets its own id as its intent; a
Checkout Session's payment recorded before has none, so its refunds are refused and logged.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 19:57:37
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKFILL_ALLOCATIONS = r"""
INSERT INTO credit_allocations (retailer_id, credit_id, debit_id, amount, created_at)
SELECT a.retailer_id, c.id, (a.new_value->>'debit_id')::bigint, split_part(a.reason, ' ', 2)::numeric, a.created_at
FROM audit_log a
JOIN credit_transactions c ON c.retailer_id = a.retailer_id AND c.type = 'CREDIT'
     AND a.reason IN ('allocated ' || split_part(a.reason, ' ', 2) || ' of payment ' || c.reference,
                      'allocated ' || split_part(a.reason, ' ', 2) || ' of the credit balance (' || c.reference || ')')
WHERE a.action IN ('debit_cleared', 'debit_partially_paid')
  AND a.reason LIKE 'allocated % of %'
  AND split_part(a.reason, ' ', 2) ~ '^[0-9]+(\.[0-9]+)?$'
  AND split_part(a.reason, ' ', 2)::numeric > 0
  AND EXISTS (SELECT 1 FROM credit_transactions d
              WHERE d.id = (a.new_value->>'debit_id')::bigint AND d.type = 'DEBIT' AND d.retailer_id = a.retailer_id)
"""


def upgrade() -> None:
    op.create_table(
        "credit_allocations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("retailer_id", sa.BigInteger(), nullable=False),
        sa.Column("credit_id", sa.BigInteger(), nullable=False),
        sa.Column("debit_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("reopened_amount", sa.Numeric(precision=14, scale=2), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_allocations_amount_positive")),
        sa.CheckConstraint(
            "reopened_amount >= 0 AND reopened_amount <= amount",
            name=op.f("ck_credit_allocations_reopened_amount_range"),
        ),
        sa.ForeignKeyConstraint(
            ["credit_id"],
            ["credit_transactions.id"],
            name=op.f("fk_credit_allocations_credit_id_credit_transactions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["debit_id"],
            ["credit_transactions.id"],
            name=op.f("fk_credit_allocations_debit_id_credit_transactions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["retailer_id"],
            ["retailers.id"],
            name=op.f("fk_credit_allocations_retailer_id_retailers"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_allocations")),
    )
    op.create_index("ix_credit_allocations_credit_id", "credit_allocations", ["credit_id"], unique=False)
    op.create_table(
        "payment_returns",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("retailer_id", sa.BigInteger(), nullable=False),
        sa.Column("credit_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("stripe_id", sa.Text(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("from_balance", sa.Numeric(precision=14, scale=2), server_default="0", nullable=False),
        sa.Column("reopened", sa.Numeric(precision=14, scale=2), server_default="0", nullable=False),
        sa.Column("owed_again", sa.Numeric(precision=14, scale=2), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('refund', 'dispute_lost')", name=op.f("ck_payment_returns_kind")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payment_returns_amount_positive")),
        sa.CheckConstraint(
            "from_balance + reopened + owed_again = amount", name=op.f("ck_payment_returns_parts_add_up")
        ),
        sa.ForeignKeyConstraint(
            ["credit_id"],
            ["credit_transactions.id"],
            name=op.f("fk_payment_returns_credit_id_credit_transactions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["retailer_id"],
            ["retailers.id"],
            name=op.f("fk_payment_returns_retailer_id_retailers"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_returns")),
        sa.UniqueConstraint("retailer_id", "reference", name=op.f("uq_payment_returns_retailer_id_reference")),
    )
    op.create_index("ix_payment_returns_credit_id", "payment_returns", ["credit_id"], unique=False)
    op.add_column("credit_transactions", sa.Column("stripe_payment_intent_id", sa.Text(), nullable=True))
    op.add_column(
        "credit_transactions",
        sa.Column("refunded_amount", sa.Numeric(precision=14, scale=2), server_default="0", nullable=False),
    )
    op.add_column("credit_transactions", sa.Column("disputed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("credit_transactions", sa.Column("dispute_id", sa.Text(), nullable=True))
    op.create_index(
        "ix_credit_transactions_stripe_payment_intent_id",
        "credit_transactions",
        ["stripe_payment_intent_id"],
        unique=False,
        postgresql_where=sa.text("stripe_payment_intent_id IS NOT NULL"),
    )
    op.create_check_constraint(
        op.f("ck_credit_transactions_refunded_amount_range"),
        "credit_transactions",
        "refunded_amount >= 0 AND refunded_amount <= amount",
    )
    op.execute(
        "UPDATE credit_transactions SET stripe_payment_intent_id = reference"
        " WHERE type = 'CREDIT' AND reference LIKE 'pi\\_%' AND stripe_payment_intent_id IS NULL"
    )
    op.execute(BACKFILL_ALLOCATIONS)


def downgrade() -> None:
    op.drop_constraint(op.f("ck_credit_transactions_refunded_amount_range"), "credit_transactions", type_="check")
    op.drop_index(
        "ix_credit_transactions_stripe_payment_intent_id",
        table_name="credit_transactions",
        postgresql_where=sa.text("stripe_payment_intent_id IS NOT NULL"),
    )
    op.drop_column("credit_transactions", "dispute_id")
    op.drop_column("credit_transactions", "disputed_at")
    op.drop_column("credit_transactions", "refunded_amount")
    op.drop_column("credit_transactions", "stripe_payment_intent_id")
    op.drop_index("ix_payment_returns_credit_id", table_name="payment_returns")
    op.drop_table("payment_returns")
    op.drop_index("ix_credit_allocations_credit_id", table_name="credit_allocations")
    op.drop_table("credit_allocations")
