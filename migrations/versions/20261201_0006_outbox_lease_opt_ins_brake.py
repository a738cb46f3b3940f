"""messages: a lease on `sending`, the sender of each attempt, opt-out history, the emergency brake

- `message_log.sender`, `content_sid`, `lease_started_at`, `lease_until`: an attempt owns a `sending` row until its
  lease ends; crash recovery looks the message up on the recorded channel and sender.
- `recipient_opt_out_events`: every opt-out and opt-in (STOP, START, Twilio 21610), audited.
- `messaging_brake`: one row; while paused, every outbound message is held.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("message_log", sa.Column("sender", sa.Text(), nullable=True))
    op.add_column("message_log", sa.Column("content_sid", sa.Text(), nullable=True))
    op.add_column("message_log", sa.Column("lease_started_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("message_log", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        "recipient_opt_out_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("recipient_type", sa.Text(), nullable=False),
        sa.Column("recipient_id", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("action IN ('opt_out', 'opt_in')", name=op.f("ck_recipient_opt_out_events_action")),
        sa.CheckConstraint("channel IN ('whatsapp', 'sms')", name=op.f("ck_recipient_opt_out_events_channel")),
        sa.CheckConstraint(
            "recipient_type IN ('retailer', 'member', 'customer')",
            name=op.f("ck_recipient_opt_out_events_recipient_type"),
        ),
        sa.PrimaryKeyConstraint("id", name="pk_recipient_opt_out_events"),
    )
    op.create_index(
        "ix_recipient_opt_out_events_recipient_created_at",
        "recipient_opt_out_events",
        ["recipient_type", "recipient_id", "created_at"],
    )

    op.create_table(
        "messaging_brake",
        sa.Column("id", sa.Integer(), server_default="1", nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_messaging_brake_single_row")),
        sa.PrimaryKeyConstraint("id", name="pk_messaging_brake"),
    )


def downgrade() -> None:
    op.drop_table("messaging_brake")
    op.drop_index("ix_recipient_opt_out_events_recipient_created_at", table_name="recipient_opt_out_events")
    op.drop_table("recipient_opt_out_events")
    op.drop_column("message_log", "lease_until")
    op.drop_column("message_log", "lease_started_at")
    op.drop_column("message_log", "content_sid")
    op.drop_column("message_log", "sender")
