"""money loop: payment_links (one reusable Checkout Session per retailer); max_order_value not null; payment terms

Every credit account gets a `max_order_value` (50,000 where it was unset), as seed 001's data
checks demand; the CHECK no longer allows NULL. `payment_terms_days` (30) dates a credit order's debit.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 07:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE credit_accounts SET max_order_value = 50000 WHERE max_order_value IS NULL")
    op.alter_column("credit_accounts", "max_order_value", nullable=False, server_default="50000")
    op.drop_constraint(op.f("ck_credit_accounts_max_order_value_positive"), "credit_accounts", type_="check")
    op.create_check_constraint(
        op.f("ck_credit_accounts_max_order_value_positive"), "credit_accounts", "max_order_value > 0"
    )

    op.add_column("credit_accounts", sa.Column("payment_terms_days", sa.Integer(), server_default="30", nullable=False))
    op.create_check_constraint(
        op.f("ck_credit_accounts_payment_terms_days_range"), "credit_accounts", "payment_terms_days BETWEEN 0 AND 365"
    )

    op.create_table(
        "payment_links",
        sa.Column("retailer_id", sa.BigInteger(), nullable=False),
        sa.Column("checkout_session_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("generation", sa.Integer(), server_default="1", nullable=False),
        sa.Column("amount", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("debit_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payment_links_amount_positive")),
        sa.CheckConstraint("generation >= 1", name=op.f("ck_payment_links_generation_positive")),
        sa.ForeignKeyConstraint(
            ["retailer_id"], ["retailers.id"], name="fk_payment_links_retailer_id_retailers", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("retailer_id", name="pk_payment_links"),
        sa.UniqueConstraint("checkout_session_id", name="uq_payment_links_checkout_session_id"),
    )


def downgrade() -> None:
    op.drop_table("payment_links")
    op.drop_column("credit_accounts", "payment_terms_days")
    op.drop_constraint(op.f("ck_credit_accounts_max_order_value_positive"), "credit_accounts", type_="check")
    op.create_check_constraint(
        op.f("ck_credit_accounts_max_order_value_positive"),
        "credit_accounts",
        "max_order_value IS NULL OR max_order_value > 0",
    )
    op.alter_column("credit_accounts", "max_order_value", nullable=True, server_default=None)
