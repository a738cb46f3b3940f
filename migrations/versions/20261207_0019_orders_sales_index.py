"""orders sales index: a retailer's orders by time carry what the nightly insights read of them
(issue #38, point 4)

`ix_orders_retailer_id_created_at` (retailer_id, created_at) becomes the same key with
`INCLUDE (status, total_amount, id)`: a page of insights reads its retailers' sold orders of the
last 60 days from the index alone (an index-only scan, once autovacuum has marked the pages
all-visible) instead of visiting every order's heap page. PostgreSQL's share of the page
statement fell by a fifth at 100,000 retailers (docs/BENCHMARKS.md, "Insight regeneration").
Every other reader of the index keeps its key. The index is rebuilt in the migration's
transaction: writes to `orders` wait for the build (about a second a million orders).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_orders_retailer_id_created_at", table_name="orders")
    op.create_index(
        "ix_orders_retailer_id_created_at",
        "orders",
        ["retailer_id", "created_at"],
        postgresql_include=["status", "total_amount", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_orders_retailer_id_created_at", table_name="orders")
    op.create_index("ix_orders_retailer_id_created_at", "orders", ["retailer_id", "created_at"])
