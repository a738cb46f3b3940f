"""recipient phone indexes: an inbound message finds its recipients by phone through an index

The inbound webhook (`POST /webhooks/twilio/inbound`: STOP, START, HELP and the WhatsApp session
record) looks its sender's number up in `retailers`, `memberships` and `customers`
(`outbox._BY_PHONE`), each by `phone`, which had no index: three sequential scans per inbound
message, 100,000 retailers' rows each at the scale of issue #38. Each table gets a plain b-tree
on `phone` (numbers are not unique across or within tables: a shop may list one number twice).
Built in the migration's transaction: writes to the three tables wait for the builds (well under
a second at 100,000 rows).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 11:25:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("retailers", "memberships", "customers")


def upgrade() -> None:
    for table in TABLES:
        op.create_index(f"ix_{table}_phone", table, ["phone"])


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"ix_{table}_phone", table_name=table)
