"""insights opt-in: a retailer receives its weekly insights message only once it opted in (issue #35)

- `retailers.insights_opt_in` (boolean, default false), written by the directory (`PUT
  /v1/retailers/{external_id}`, `jobctl import`); the hourly `insights-weekly` job reads it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 23:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("retailers", sa.Column("insights_opt_in", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index("ix_retailers_insights_opt_in", "retailers", ["id"], postgresql_where=sa.text("insights_opt_in"))


def downgrade() -> None:
    op.drop_index("ix_retailers_insights_opt_in", table_name="retailers")
    op.drop_column("retailers", "insights_opt_in")
