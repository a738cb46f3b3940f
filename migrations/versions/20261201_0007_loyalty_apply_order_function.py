"""loyalty: `loyalty_apply_order(...)`, an order's points applied in one statement

Applying an order took six round trips while holding the customer's row lock (lock, read the
order's rows, savepoint, insert, release, update), so a hot customer's applications queued on the
client's network and event loop, not on the database. The function does the same steps inside the
server: the lock is held for microseconds. It is PL/pgSQL, not one data-modifying CTE, because a
CTE reads with the snapshot its statement started with: after waiting for the lock it would not
see the rows of the order's repeat that held the lock before it. Each statement of a function gets
a new snapshot (READ COMMITTED), so the order's rows are read after the lock is taken.

It writes only on `applied`; every other outcome is returned (not raised) with nothing written, so
the caller raises the domain's refusal (`activities.loyalty.ledger.apply_points`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 13:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The limits match activities.loyalty.ledger: BALANCE_LIMIT (32-bit columns) and schemas.loyalty.MAX_POINTS.
APPLY_ORDER = """
CREATE FUNCTION loyalty_apply_order(
    p_customer_id bigint, p_order_id text, p_redeemed integer, p_order_total numeric,
    OUT outcome text, OUT points_redeemed bigint, OUT points_earned bigint,
    OUT balance_before bigint, OUT balance_after bigint, OUT owner_id bigint, OUT lock_wait_ms double precision
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    started timestamptz := clock_timestamp();
    balance bigint;
    rate numeric;
    rows_found bigint;
    owner bigint;
    spent_points bigint;
    spent_before bigint;
    earned_found boolean;
    earned_points bigint;
    earned_before bigint;
    earned_after bigint;
    earned numeric;
    written text[];
BEGIN
    SELECT c.loyalty_points, c.earn_rate INTO balance, rate FROM customers c WHERE c.id = p_customer_id FOR UPDATE;
    lock_wait_ms := extract(epoch FROM clock_timestamp() - started) * 1000;
    IF balance IS NULL THEN
        outcome := 'unknown_customer';
        RETURN;
    END IF;
    points_redeemed := 0;
    points_earned := 0;
    balance_before := balance;
    balance_after := balance;

    -- Twice at most: the second time after another customer's transaction wrote this order first.
    FOR attempt IN 1..2 LOOP
        SELECT count(*), min(t.customer_id),
               min(t.points) FILTER (WHERE t.type = 'spent'), min(t.balance_before) FILTER (WHERE t.type = 'spent'),
               bool_or(t.type = 'earned'), min(t.points) FILTER (WHERE t.type = 'earned'),
               min(t.balance_before) FILTER (WHERE t.type = 'earned'),
               min(t.balance_after) FILTER (WHERE t.type = 'earned')
          INTO rows_found, owner, spent_points, spent_before, earned_found, earned_points, earned_before, earned_after
          FROM loyalty_transactions t
         WHERE t.reference_type = 'order' AND t.reference_id = p_order_id;
        IF rows_found > 0 THEN
            owner_id := owner;
            IF owner <> p_customer_id THEN
                outcome := 'another_customer';
            ELSIF NOT earned_found THEN  -- refunded before it was ever applied
                outcome := 'order_reversed';
            ELSIF COALESCE(-spent_points, 0) <> p_redeemed THEN
                outcome := 'applied_differently';
                points_redeemed := COALESCE(-spent_points, 0);
            ELSE
                outcome := 'already_applied';
                points_redeemed := COALESCE(-spent_points, 0);
                points_earned := earned_points;
                balance_before := COALESCE(spent_before, earned_before);
                balance_after := earned_after;
            END IF;
            RETURN;
        END IF;
        IF attempt = 2 THEN  -- only possible if a row was written outside this function
            RAISE EXCEPTION 'order %: partial ledger rows %', p_order_id, written;
        END IF;

        earned := floor(p_order_total * rate);
        points_redeemed := p_redeemed;
        IF balance - p_redeemed < 0 THEN
            outcome := 'insufficient';
            RETURN;
        END IF;
        IF earned > 1000000000 OR balance - p_redeemed + earned > 2147483647 THEN
            outcome := 'overflow';
            balance_after := balance - p_redeemed + earned;
            RETURN;
        END IF;
        points_earned := earned;
        balance_after := balance - p_redeemed + earned;

        -- `spent` (only when points are redeemed) then `earned`, none at all when a refund came first.
        WITH ins AS (
            INSERT INTO loyalty_transactions
                   (customer_id, type, points, balance_before, balance_after, reference_type, reference_id)
            SELECT p_customer_id, v.type, v.points, v.before, v.after, 'order', p_order_id
              FROM (VALUES (1, 'spent', -p_redeemed, balance, balance - p_redeemed),
                           (2, 'earned', points_earned::integer, balance - p_redeemed, balance_after)
                   ) AS v(n, type, points, before, after)
             WHERE (v.type = 'earned' OR p_redeemed > 0)
               AND NOT EXISTS (
                   SELECT 1 FROM loyalty_transactions r
                    WHERE r.reference_type = 'order' AND r.reference_id = p_order_id AND r.type = 'reversed')
             ORDER BY v.n
            ON CONFLICT DO NOTHING
            RETURNING id, type
        )
        SELECT array_agg(ins.type) INTO written FROM ins;
        IF 'earned' = ANY (written) THEN
            UPDATE customers SET loyalty_points = balance_after WHERE id = p_customer_id;
            outcome := 'applied';
            RETURN;
        END IF;
        -- Another customer's transaction wrote this order meanwhile: undo ours whole, then report theirs.
        DELETE FROM loyalty_transactions t
         WHERE t.reference_type = 'order' AND t.reference_id = p_order_id AND t.customer_id = p_customer_id
           AND t.type = 'spent' AND 'spent' = ANY (COALESCE(written, '{}'));
        points_redeemed := 0;
        points_earned := 0;
        balance_after := balance;
    END LOOP;
END
$$
"""


def upgrade() -> None:
    op.execute(APPLY_ORDER)


def downgrade() -> None:
    op.execute("DROP FUNCTION loyalty_apply_order(bigint, text, integer, numeric)")
