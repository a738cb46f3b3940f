"""stable pay links: a reminder links to jobctl's `/pay/{token}`; the Checkout Session is made on click

- `payment_links.token`: the link's capability (random, unguessable; the URL is `{PUBLIC_BASE_URL}/pay/{token}`).
  Existing rows get one from `gen_random_uuid()` (two of them: 244 random bits).
- `payment_links.checkout_session_id` becomes nullable: no session exists until the retailer clicks.
- `payment_links.session_fingerprint`: the debits and amounts the stored session charges (reused while they
  match); `session_count`: sessions made for this link (part of their Stripe idempotency key).
- `retired_payment_links`: tokens replaced by a newer link (their debits changed), so an old message's
  link says "replaced" (410) instead of "unknown" (404).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 13:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOKEN_DEFAULT = "replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')"


def upgrade() -> None:
    op.add_column("payment_links", sa.Column("token", sa.Text(), server_default=sa.text(TOKEN_DEFAULT), nullable=False))
    op.create_unique_constraint(op.f("uq_payment_links_token"), "payment_links", ["token"])
    op.alter_column("payment_links", "checkout_session_id", nullable=True)
    op.add_column("payment_links", sa.Column("session_fingerprint", sa.Text(), nullable=True))
    op.add_column("payment_links", sa.Column("session_count", sa.Integer(), server_default="0", nullable=False))
    op.create_check_constraint(
        op.f("ck_payment_links_session_count_non_negative"), "payment_links", "session_count >= 0"
    )
    # A session made by the old code was fingerprinted differently: the next click makes a fresh one.
    op.execute("UPDATE payment_links SET session_fingerprint = NULL")

    op.create_table(
        "retired_payment_links",
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("retailer_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["retailer_id"], ["retailers.id"], name="fk_retired_payment_links_retailer_id_retailers", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token", name="pk_retired_payment_links"),
    )


def downgrade() -> None:
    op.drop_table("retired_payment_links")
    op.drop_constraint(op.f("ck_payment_links_session_count_non_negative"), "payment_links", type_="check")
    op.drop_column("payment_links", "session_count")
    op.drop_column("payment_links", "session_fingerprint")
    op.execute("DELETE FROM payment_links WHERE checkout_session_id IS NULL")
    op.alter_column("payment_links", "checkout_session_id", nullable=False)
    op.drop_constraint(op.f("uq_payment_links_token"), "payment_links", type_="unique")
    op.drop_column("payment_links", "token")
