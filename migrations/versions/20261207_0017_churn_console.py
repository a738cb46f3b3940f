"""churn console: what the console's Churn section lists and sums (issue #37, second part)

- `companies.currency` (ISO 4217, default USD): the company's members pay in it; the console's
  recovered revenue is shown in it.
- `memberships.plan_amount` (NULL: unknown): what the member pays a billing period; a recovered
  case keeps one period of it (the console's recovered revenue).
- `ix_recovery_cases_company_id_id` on `recovery_cases (company_id, id)`: a company's cases newest
  first, a page at a time by keyset (`id < last`), however many the company has.
- `membership_stripe_events`: each Stripe event the churn handlers matched to a membership (its id,
  type and `created`, and whether it was applied or ignored as older than one applied): a case's
  page lists its member's. Ids and types only, never the event's body.
- `ix_audit_log_company_rules` on `audit_log (reference, id)` where `retailer_id IS NULL`: a
  company's changed rules (`company:{id}`), without scanning every retailer's audit.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 02:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("companies", sa.Column("currency", sa.Text(), server_default="USD", nullable=False))
    op.create_check_constraint(op.f("ck_companies_currency_iso4217"), "companies", "currency ~ '^[A-Z]{3}$'")
    op.add_column("memberships", sa.Column("plan_amount", sa.Numeric(12, 2), nullable=True))
    op.create_check_constraint(
        op.f("ck_memberships_plan_amount_non_negative"), "memberships", "plan_amount IS NULL OR plan_amount >= 0"
    )
    op.create_index("ix_recovery_cases_company_id_id", "recovery_cases", ["company_id", "id"])
    op.create_table(
        "membership_stripe_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("company_id", sa.Text(), nullable=False),
        sa.Column("membership_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("event_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["company_id", "membership_id"],
            ["memberships.company_id", "memberships.id"],
            name=op.f("fk_membership_stripe_events_company_id_memberships"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_membership_stripe_events")),
        sa.UniqueConstraint(
            "membership_id", "event_id", name=op.f("uq_membership_stripe_events_membership_id_event_id")
        ),
    )
    op.create_index(
        "ix_audit_log_company_rules",
        "audit_log",
        ["reference", "id"],
        postgresql_where=sa.text("retailer_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_audit_log_company_rules", table_name="audit_log")
    op.drop_table("membership_stripe_events")
    op.drop_index("ix_recovery_cases_company_id_id", table_name="recovery_cases")
    op.drop_constraint(op.f("ck_memberships_plan_amount_non_negative"), "memberships", type_="check")
    op.drop_column("memberships", "plan_amount")
    op.drop_constraint(op.f("ck_companies_currency_iso4217"), "companies", type_="check")
    op.drop_column("companies", "currency")
