"""directory and imports: the business's own ids, a retailer's language, an account's currency,
and `jobctl import`'s checkpoints (issue #34)

- `external_id` on retailers, orders, customers (unique) and memberships (unique per company): the
  ingestion API's PUT by the business's own id is an upsert, and an import run twice writes nothing new.
  Companies keep their slug, which is already the business's own id.
- `retailers.locale` (BCP 47, default 'en') and `credit_accounts.currency` (ISO 4217, default 'USD').
- `import_runs` (one per kind, mapping and file content: the checkpoint) and `import_refusals`
  (each refused line and why: the report).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 22:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXTERNAL_ID_CHECK = "external_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$'"
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


def upgrade() -> None:
    for table in ("retailers", "orders", "customers", "memberships"):
        op.add_column(table, sa.Column("external_id", sa.Text(), nullable=True))
        op.create_check_constraint(op.f(f"ck_{table}_external_id_format"), table, EXTERNAL_ID_CHECK)
    for table in ("retailers", "orders", "customers"):
        op.create_unique_constraint(op.f(f"uq_{table}_external_id"), table, ["external_id"])
    op.create_unique_constraint(
        op.f("uq_memberships_company_id_external_id"), "memberships", ["company_id", "external_id"]
    )
    op.add_column("retailers", sa.Column("locale", sa.Text(), server_default="en", nullable=False))
    op.add_column("credit_accounts", sa.Column("currency", sa.Text(), server_default="USD", nullable=False))
    op.create_check_constraint(
        op.f("ck_credit_accounts_currency_iso4217"), "credit_accounts", "currency ~ '^[A-Z]{3}$'"
    )

    op.create_table(
        "import_runs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("lines_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("imported", sa.Integer(), server_default="0", nullable=False),
        sa.Column("refused", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "kind IN (" + ", ".join(f"'{k}'" for k in IMPORT_KINDS) + ")", name=op.f("ck_import_runs_kind")
        ),
        sa.CheckConstraint(
            "lines_done >= 0 AND imported >= 0 AND refused >= 0", name=op.f("ck_import_runs_counts_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_runs")),
    )
    op.create_table(
        "import_refusals",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("field", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["import_runs.id"], name=op.f("fk_import_refusals_run_id_import_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "line", name=op.f("pk_import_refusals")),
    )


def downgrade() -> None:
    op.drop_table("import_refusals")
    op.drop_table("import_runs")
    op.drop_constraint(op.f("ck_credit_accounts_currency_iso4217"), "credit_accounts", type_="check")
    op.drop_column("credit_accounts", "currency")
    op.drop_column("retailers", "locale")
    op.drop_constraint(op.f("uq_memberships_company_id_external_id"), "memberships", type_="unique")
    for table in ("retailers", "orders", "customers"):
        op.drop_constraint(op.f(f"uq_{table}_external_id"), table, type_="unique")
    for table in ("retailers", "orders", "customers", "memberships"):
        op.drop_constraint(op.f(f"ck_{table}_external_id_format"), table, type_="check")
        op.drop_column(table, "external_id")
