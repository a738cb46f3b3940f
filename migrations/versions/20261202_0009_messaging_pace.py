"""messaging pace: the next free send slot of the provider's rate limit, shared by every messaging worker

Temporal's task-queue rate limit counts activities; a batch activity carries many messages. Each
message reserves its slot in `messaging_pace` (one row per provider limit), so the limit holds
in messages per second across workers however many messages an activity carries.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 09:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "messaging_pace",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("next_slot", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_messaging_pace")),
    )


def downgrade() -> None:
    op.drop_table("messaging_pace")
