"""metrics indexes: the API's business gauges read held and failed messages and failed webhook
events from small partial indexes, never by scanning the outbox (issue #36)

- `ix_message_log_attention` on `message_log (status, updated_at)` where the status is `deferred`,
  `failed` or `undelivered`: held messages by reason and their oldest, failures of the last 24 h.
- `ix_processed_webhook_events_failed` on `processed_webhook_events (provider)` where `failed`.

Both hold only rows that need someone's attention, so they stay small however large the tables grow.

Revision ID: 0015
Revises: 0014_console
Create Date: 2026-12-07 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_message_log_attention",
        "message_log",
        ["status", "updated_at"],
        postgresql_where=sa.text("status IN ('deferred', 'failed', 'undelivered')"),
    )
    op.create_index(
        "ix_processed_webhook_events_failed",
        "processed_webhook_events",
        ["provider"],
        postgresql_where=sa.text("status = 'failed'"),
    )


def downgrade() -> None:
    op.drop_index("ix_processed_webhook_events_failed", table_name="processed_webhook_events")
    op.drop_index("ix_message_log_attention", table_name="message_log")
