"""whatsapp sessions: the send path decides template or freeform from our own record of the
recipient's last inbound WhatsApp message, not from a Twilio list call per send

- `whatsapp_sessions (phone, sender, last_inbound_at)`, primary key `(phone, sender)`: when a
  recipient's number last wrote to one of our WhatsApp senders. The inbound webhook
  (`POST /webhooks/twilio/inbound`) upserts it for every WhatsApp message from a number one of our
  recipients has, whatever its body, at the time the message was first received (a MessageSid
  applies once, through `processed_webhook_events`), and never moves it back (`greatest`).
- The send path reads it instead of `messages.list` at Twilio: a batch's numbers in one statement
  (`phone = ANY(...)`, the primary key's leading column), a single send by the primary key.
- Starts empty: until a recipient writes again after this migration, a kind with an approved
  template goes as the template. That is always allowed; a freeform message Twilio refuses out of
  session (63016) falls back to SMS as before.
- Phone numbers only of our recipients (already stored in `retailers`, `memberships`,
  `customers`); no names, no message text.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 08:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "whatsapp_sessions",
        sa.Column("phone", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("last_inbound_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("phone ~ '^\\+[1-9][0-9]{6,14}$'", name=op.f("ck_whatsapp_sessions_phone_e164")),
        sa.PrimaryKeyConstraint("phone", "sender", name=op.f("pk_whatsapp_sessions")),
    )


def downgrade() -> None:
    op.drop_table("whatsapp_sessions")
