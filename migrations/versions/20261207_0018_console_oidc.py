"""console oidc: users who sign in through the company's identity provider (issue #37)

- `console_users.external_id` (unique, NULL for a local user): an OIDC user's identity at the
  provider, `oidc:{issuer}:{sub}`; each sign-in finds its row by it and refreshes the role.
- `console_users.password_hash` may be NULL: an OIDC user has no password here. Exactly one of the
  two is set (`ck_console_users_password_or_external_id`).
- `console_users.username` may hold '@' and '+': an OIDC user's is the provider's
  `preferred_username` or e-mail (local users' stay as `jobctl console-user add` allows).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("console_users", sa.Column("external_id", sa.Text(), nullable=True))
    op.create_unique_constraint(op.f("uq_console_users_external_id"), "console_users", ["external_id"])
    op.alter_column("console_users", "password_hash", existing_type=sa.Text(), nullable=True)
    op.create_check_constraint(
        op.f("ck_console_users_password_or_external_id"),
        "console_users",
        "(password_hash IS NULL) <> (external_id IS NULL)",
    )
    op.drop_constraint(op.f("ck_console_users_username_slug"), "console_users", type_="check")
    op.create_check_constraint(
        op.f("ck_console_users_username_slug"), "console_users", "username ~ '^[a-z0-9][a-z0-9_.@+-]{1,63}$'"
    )


def downgrade() -> None:
    op.execute("DELETE FROM console_users WHERE external_id IS NOT NULL")
    op.drop_constraint(op.f("ck_console_users_username_slug"), "console_users", type_="check")
    op.create_check_constraint(
        op.f("ck_console_users_username_slug"), "console_users", "username ~ '^[a-z0-9][a-z0-9_.-]{1,63}$'"
    )
    op.drop_constraint(op.f("ck_console_users_password_or_external_id"), "console_users", type_="check")
    op.alter_column("console_users", "password_hash", existing_type=sa.Text(), nullable=False)
    op.drop_constraint(op.f("uq_console_users_external_id"), "console_users", type_="unique")
    op.drop_column("console_users", "external_id")
