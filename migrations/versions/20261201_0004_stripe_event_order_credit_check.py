"""harden2: the last applied Stripe event per membership, and available credit within the limit

`memberships.stripe_event_at`: the `created` time of the latest Stripe event applied to the
membership, so a late or out-of-order event (an old `invoice.payment_failed` after a newer
`invoice.paid`) is ignored instead of opening a churn case.

`credit_accounts.available_credit <= credit_limit`: available credit is the limit minus what is
outstanding, and nothing outstanding is negative. It may go below zero (the limit was lowered), so
there is no lower bound.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 07:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("memberships", sa.Column("stripe_event_at", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint(
        op.f("ck_credit_accounts_available_credit_within_limit"), "credit_accounts", "available_credit <= credit_limit"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_credit_accounts_available_credit_within_limit"), "credit_accounts", type_="check")
    op.drop_column("memberships", "stripe_event_at")
