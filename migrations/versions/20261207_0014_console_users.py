"""console users: the people who sign in to the business console (issue #37)

- `console_users`: a username, its argon2 password hash, a role (finance, support, company_admin,
  operator, read_only) and, for a company admin only, the company it is bound to.

Revision ID: 0014_console
Revises: 0013
Create Date: 2026-12-07 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_console"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("company_id", sa.Text(), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sign_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("username ~ '^[a-z0-9][a-z0-9_.-]{1,63}$'", name=op.f("ck_console_users_username_slug")),
        sa.CheckConstraint(
            "role IN ('finance', 'support', 'company_admin', 'operator', 'read_only')",
            name=op.f("ck_console_users_role_known"),
        ),
        sa.CheckConstraint(
            "(role = 'company_admin') = (company_id IS NOT NULL)",
            name=op.f("ck_console_users_company_admin_has_company"),
        ),
        sa.ForeignKeyConstraint(
            ["company_id"], ["companies.id"], name=op.f("fk_console_users_company_id_companies"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_users")),
        sa.UniqueConstraint("username", name=op.f("uq_console_users_username")),
    )


def downgrade() -> None:
    op.drop_table("console_users")
