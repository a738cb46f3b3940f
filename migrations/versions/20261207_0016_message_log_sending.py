"""message_log sending index: the brake's state counts the messages in flight from a small partial
index, never by scanning the outbox (issue #37, the console's Messaging and jobs page)

- `ix_message_log_sending` on `message_log (lease_until)` where the status is `sending`: the
  rows an attempt holds now, a handful however large the outbox grows. `ix_message_log_attention`
  (0015) does not cover `sending`, so `jobctl messaging status`, `GET /v1/messaging/brake` and the
  console read the whole outbox for that count (34 ms at 300,000 messages, growing with it).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 02:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_message_log_sending", "message_log", ["lease_until"], postgresql_where=sa.text("status = 'sending'")
    )


def downgrade() -> None:
    op.drop_index("ix_message_log_sending", table_name="message_log")
