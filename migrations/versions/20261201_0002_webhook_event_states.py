"""webhook events: received / processed / failed, so handlers run outside any transaction

An event is recorded as received in one short statement, its handler runs holding no
connection, then it is marked processed (or failed for good). `received_at` is what the
data-retention job ages events by.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "processed_webhook_events"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("status", sa.Text(), server_default=sa.text("'received'"), nullable=False))
    op.add_column(
        TABLE, sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)
    )
    op.add_column(TABLE, sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(TABLE, sa.Column("error", sa.Text(), nullable=True))
    op.alter_column(TABLE, "processed_at", nullable=True, server_default=None)
    # Rows from before: processed when they were written.
    op.execute(f"UPDATE {TABLE} SET status = 'processed', received_at = processed_at")
    op.create_check_constraint(
        op.f("ck_processed_webhook_events_status"), TABLE, "status IN ('received', 'processed', 'failed')"
    )
    op.create_index("ix_processed_webhook_events_received_at", TABLE, ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_processed_webhook_events_received_at", table_name=TABLE)
    op.drop_constraint(op.f("ck_processed_webhook_events_status"), TABLE, type_="check")
    op.execute(f"DELETE FROM {TABLE} WHERE status <> 'processed'")
    op.alter_column(TABLE, "processed_at", nullable=False, server_default=sa.text("now()"))
    for column in ("error", "claimed_at", "received_at", "status"):
        op.drop_column(TABLE, column)
