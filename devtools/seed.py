"""Demo and benchmark data, generated set-based in PostgreSQL (fast for tens of thousands of rows).

Values are derived from ids with modular arithmetic, so the same seed always makes the
same data and tests can reason about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.database import autocommit

PRODUCTS = (
    "Basmati Rice 5kg",
    "Sunflower Oil 1L",
    "Black Tea 500g",
    "Sugar 1kg",
    "Wheat Flour 2kg",
    "Tomato Paste 400g",
    "Pasta 500g",
    "Lentils 1kg",
    "Dish Soap 750ml",
    "Laundry Powder 3kg",
    "Bottled Water 6x1.5L",
    "Instant Coffee 200g",
    "Milk Powder 900g",
    "Canned Tuna 160g",
    "Biscuits 12pk",
)

DEMO_MARKER = "Demo Retailer 001"
MONEY_LOOP_RETAILER = "Demo Corner Shop (over its limit)"
"""The demo's retailer for the money loop: three debits, all due a reminder today, above its limit."""

LOCALE_RETAILERS: tuple[tuple[str, str, str, str, str, tuple[tuple[int, str], ...]], ...] = (
    # name, phone, locale, currency, time zone, (days past due, amount) of debits due a reminder today
    ("Demo Kirana Store (Pune)", "+919876543210", "en-IN", "INR", "Asia/Kolkata", ((3, "125000.00"), (0, "18450.50"))),
    ("Demo Tienda Sol (Madrid)", "+34612345678", "es-ES", "EUR", "Europe/Madrid", ((14, "1234.50"), (-3, "310.00"))),
)
"""The demo's retailers in another locale and currency (issue #35): their reminders (the catalogue's
Spanish text; India's lakh grouping in rupees) and pay pages show their own."""


@dataclass(frozen=True)
class SeedReport:
    retailers: int
    orders: int
    debits: int


_INSERT_RETAILERS = text(
    """
INSERT INTO retailers (name, phone, preferred_channel, timezone)
SELECT :prefix || ' ' || lpad(g::text, 3, '0'),
       '+1555' || lpad((:phone_base + g)::text, 7, '0'),
       CASE WHEN g % 5 = 0 THEN 'sms' ELSE 'whatsapp' END,
       :tz
FROM generate_series(1, :n) AS g
RETURNING id
"""
)

_INSERT_ACCOUNTS = text(
    """
INSERT INTO credit_accounts (retailer_id, credit_limit, available_credit, max_order_value, max_outstanding_days)
SELECT id, 50000, 50000, 20000, 30 FROM retailers WHERE id BETWEEN :lo AND :hi
"""
)

# 3 to 10 orders per retailer spread over the last 60 days; every 17th order failed.
_INSERT_ORDERS = text(
    """
INSERT INTO orders (retailer_id, status, payment_mode, total_amount, created_at)
SELECT r.id,
       CASE WHEN (r.id + k) % 17 = 0 THEN 'FAILED' ELSE 'DELIVERED' END,
       CASE WHEN (r.id + k) % 3 = 0 THEN 'COD' ELSE 'CREDIT' END,
       0,
       CAST(:today AS timestamptz) - make_interval(days => ((r.id * 7 + k * 13) % 60)::int, hours => ((k % 9) + 8)::int)
FROM retailers r
CROSS JOIN LATERAL generate_series(1, 3 + (r.id % 8)) AS k
WHERE r.id BETWEEN :lo AND :hi
"""
)

_INSERT_ITEMS = text(
    """
INSERT INTO order_items (order_id, product_name, quantity, unit_price)
SELECT o.id,
       (CAST(:products AS text[]))[1 + ((o.id * 3 + i * 5) % :n_products)],
       1 + ((o.id + i) % 6),
       (5 + ((o.id * 11 + i * 7) % 95))::numeric(14, 2)
FROM orders o
JOIN retailers r ON r.id = o.retailer_id
CROSS JOIN LATERAL generate_series(1, 1 + (o.id % 3)) AS i
WHERE r.id BETWEEN :lo AND :hi
"""
)

_ORDER_TOTALS = text(
    """
UPDATE orders o SET total_amount = t.total
FROM (SELECT order_id, sum(quantity * unit_price) AS total FROM order_items GROUP BY order_id) t
WHERE t.order_id = o.id AND o.retailer_id BETWEEN :lo AND :hi
"""
)

# Debits in every aging bucket: due dates from 75 days ago to 10 days ahead; a third already paid.
_INSERT_DEBITS = text(
    """
INSERT INTO credit_transactions (retailer_id, type, amount, due_date, cleared_amount, status, cleared_at,
                                 reference, created_at)
SELECT r.id, 'DEBIT', amount,
       due,
       CASE WHEN paid THEN amount ELSE 0 END,
       CASE WHEN paid THEN 'CLEARED' ELSE 'OPEN' END,
       CASE WHEN paid THEN due::timestamptz + make_interval(days => (((r.id + d) % 9) - 4)::int) END,
       'seed-' || r.id || '-' || d,
       due::timestamptz - interval '30 days'
FROM retailers r
CROSS JOIN LATERAL generate_series(1, 1 + (r.id % 3)) AS d
CROSS JOIN LATERAL (SELECT (CAST(:today AS date) - ((r.id * 5 + d * 23) % 86)::int + 10) AS due,
                           (500 + ((r.id * 37 + d * 101) % 9500))::numeric(14, 2) AS amount,
                           (r.id + d) % 3 = 0 AS paid) v
WHERE r.id BETWEEN :lo AND :hi
"""
)

_AVAILABLE_CREDIT = text(
    """
UPDATE credit_accounts ca
SET available_credit = ca.credit_limit - coalesce(o.outstanding, 0)  -- the ledger's rule, unclamped
FROM (SELECT retailer_id, sum(amount - cleared_amount) AS outstanding
      FROM credit_transactions WHERE type = 'DEBIT' AND status <> 'CLEARED' GROUP BY retailer_id) o
WHERE o.retailer_id = ca.retailer_id AND ca.retailer_id BETWEEN :lo AND :hi
"""
)


async def seed_retailers(
    engine: AsyncEngine, count: int, *, today: date, prefix: str = "Retailer", timezone: str = "UTC"
) -> SeedReport:
    """Add `count` retailers with credit accounts, 60 days of orders with items, and debits."""
    if count < 1:
        raise ValueError("count must be at least 1")
    async with engine.begin() as conn:
        phone_base = await conn.scalar(text("SELECT coalesce(max(id), 0) FROM retailers"))
        ids = (
            (
                await conn.execute(
                    _INSERT_RETAILERS, {"prefix": prefix, "n": count, "tz": timezone, "phone_base": phone_base}
                )
            )
            .scalars()
            .all()
        )
        bounds = {"lo": min(ids), "hi": max(ids)}
        await conn.execute(_INSERT_ACCOUNTS, bounds)
        orders = (await conn.execute(_INSERT_ORDERS, {**bounds, "today": today})).rowcount
        await conn.execute(_INSERT_ITEMS, {**bounds, "products": list(PRODUCTS), "n_products": len(PRODUCTS)})
        await conn.execute(_ORDER_TOTALS, bounds)
        debits = (await conn.execute(_INSERT_DEBITS, {**bounds, "today": today})).rowcount
        await conn.execute(_AVAILABLE_CREDIT, bounds)
    # A bulk load leaves the planner's statistics saying the tables are nearly empty until
    # autovacuum catches up (a minute or more), and the insight page's plan is then a nested
    # loop over every order, 100x slower; and its pages not yet marked all-visible, so the
    # insights' index-only read of orders visits the heap anyway. A database that lived with
    # this data would be vacuumed and analysed.
    async with autocommit(engine).connect() as conn:  # VACUUM runs outside a transaction
        await conn.execute(text("VACUUM ANALYZE retailers, credit_accounts, orders, order_items, credit_transactions"))
    return SeedReport(retailers=len(ids), orders=orders, debits=debits)


async def seed_demo(engine: AsyncEngine, *, today: date, timezone: str = "UTC") -> SeedReport | None:
    """The demo data set of every job family; a second call finds it and does nothing (returns None)."""
    async with engine.connect() as conn:
        if await conn.scalar(text("SELECT 1 FROM retailers WHERE name = :n"), {"n": DEMO_MARKER}):
            return None
    report = await seed_retailers(engine, 50, today=today, prefix="Demo Retailer", timezone=timezone)
    async with engine.begin() as conn:
        await conn.execute(_DEMO_PENDING_ORDERS, {"marker": "Demo Retailer %"})
        await conn.execute(_DEMO_COMPANIES)
        await conn.execute(_DEMO_MEMBERSHIPS)
        for statement in _DEMO_CHURN_HISTORY:  # before the open cases: ids follow the opening times
            await conn.execute(statement)
        await conn.execute(_DEMO_CASES)
        await conn.execute(_DEMO_CUSTOMERS)
        await conn.execute(_DEMO_QUEUE)
        await conn.execute(_DEMO_OVER_LIMIT, {"name": MONEY_LOOP_RETAILER, "tz": timezone, "today": today})
        for name, phone, locale, currency, tz, owed in LOCALE_RETAILERS:
            rid = await conn.scalar(
                _DEMO_LOCALE_RETAILER, {"name": name, "phone": phone, "locale": locale, "currency": currency, "tz": tz}
            )
            for days, amount in owed:
                await conn.execute(_DEMO_LOCALE_DEBIT, {"r": rid, "days": days, "amount": amount, "today": today})
    extra = sum(len(owed) for *_, owed in LOCALE_RETAILERS)
    return SeedReport(
        retailers=report.retailers + 1 + len(LOCALE_RETAILERS),
        orders=report.orders + 3 + extra,
        debits=report.debits + 3 + extra,
    )


async def locale_retailers(engine: AsyncEngine) -> list[tuple[int, str, str]]:
    """The demo's retailers in other locales: (id, locale, currency)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT r.id, r.locale, a.currency FROM retailers r JOIN credit_accounts a ON a.retailer_id = r.id"
                " WHERE r.name = ANY(:names) ORDER BY r.id"
            ),
            {"names": [name for name, *_ in LOCALE_RETAILERS]},
        )
        return [(row.id, row.locale, row.currency) for row in rows]


_DEMO_LOCALE_RETAILER = text(
    """
WITH shop AS (
    INSERT INTO retailers (name, phone, preferred_channel, timezone, locale)
    VALUES (:name, :phone, 'whatsapp', :tz, :locale)
    RETURNING id
), account AS (
    INSERT INTO credit_accounts (retailer_id, credit_limit, available_credit, max_order_value, max_outstanding_days,
                                 currency)
    SELECT id, 500000, 500000, 200000, 60, :currency FROM shop
)
SELECT id FROM shop
"""
)

# A delivered credit order and its debit, due `days` ago (a reminder day today); available credit follows.
_DEMO_LOCALE_DEBIT = text(
    """
WITH placed AS (
    INSERT INTO orders (retailer_id, status, payment_mode, total_amount, created_at)
    VALUES (:r, 'DELIVERED', 'CREDIT', CAST(:amount AS numeric),
            CAST(:today AS timestamptz) - make_interval(days => (CAST(:days AS int) + 30), hours => 10))
    RETURNING id, retailer_id, total_amount, created_at
), debit AS (
    INSERT INTO credit_transactions (retailer_id, type, amount, due_date, order_id, reference, notes, created_at)
    SELECT retailer_id, 'DEBIT', total_amount, CAST(:today AS date) - CAST(:days AS int), id, 'order:' || id,
           'credit order ' || id, created_at
    FROM placed
)
UPDATE credit_accounts SET available_credit = available_credit - CAST(:amount AS numeric) WHERE retailer_id = :r
"""
)


async def money_loop_retailer(engine: AsyncEngine) -> int | None:
    """The demo retailer whose reminder link pays off everything it owes (None: no demo data)."""
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT id FROM retailers WHERE name = :n"), {"n": MONEY_LOOP_RETAILER})


# Ten checkouts left pending in the last few hours (each gets its own 24-hour clock).
_DEMO_PENDING_ORDERS = text(
    """
WITH picked AS (
    SELECT r.id AS retailer_id, row_number() OVER (ORDER BY r.id) AS n
    FROM retailers r WHERE r.name LIKE :marker ORDER BY r.id LIMIT 10
), created AS (
    INSERT INTO orders (retailer_id, status, payment_mode, total_amount, created_at)
    SELECT retailer_id, 'PENDING', 'CREDIT', 100 + n * 25, now() - make_interval(hours => n::int)
    FROM picked
    RETURNING id, retailer_id, total_amount, created_at
)
INSERT INTO pending_orders (order_id, retailer_id, amount, status, created_at, expires_at)
SELECT id, retailer_id, total_amount, 'PENDING', created_at, created_at + interval '24 hours' FROM created
"""
)

_DEMO_COMPANIES = text(
    """
INSERT INTO companies (id, name, reminder_offsets_days, incentive_days, daily_nudge_cap, grace_period_days)
VALUES ('acme', 'Acme Fitness', '{0,2,5}', 14, 1, 3),
       ('globex', 'Globex Coffee Club', '{0,3,7,14}', 7, 1, 5),
       ('initech', 'Initech Software', '{1,4}', 30, 2, 2)
ON CONFLICT (id) DO NOTHING
"""
)

_DEMO_MEMBERSHIPS = text(
    """
INSERT INTO memberships (company_id, name, phone, preferred_channel, status, current_period_end)
SELECT c.id, 'Member ' || c.id || ' ' || g, '+1556' || lpad((c.ord * 100 + g)::text, 7, '0'),
       CASE WHEN g % 3 = 0 THEN 'sms' ELSE 'whatsapp' END,
       CASE WHEN g <= 2 THEN 'PAST_DUE' ELSE 'ACTIVE' END,
       now() + make_interval(days => (g * 3)::int)
FROM (SELECT id, row_number() OVER (ORDER BY id) AS ord FROM companies WHERE id IN ('acme', 'globex', 'initech')) c
CROSS JOIN generate_series(1, 6) AS g
"""
)

# The two past-due members of each company have an open recovery case.
_DEMO_CASES = text(
    """
INSERT INTO recovery_cases (company_id, membership_id, status, trigger)
SELECT company_id, id, 'OPEN', 'payment_failed' FROM memberships WHERE status = 'PAST_DUE'
ON CONFLICT DO NOTHING
"""
)

# The churn results the console charts (issue #37): each company's members pay a plan in its
# currency, and 40 past cases per company over the last 12 weeks, closed recovered (3 in 5),
# cancelled or terminated after 1-3 nudges on the member's channel, each nudge's message delivered
# (one in 7 failed), so a company admin's Results page and case list are full on a fresh `make run`.
_DEMO_CHURN_HISTORY = (
    text(
        "UPDATE companies SET currency = CASE id WHEN 'globex' THEN 'EUR' WHEN 'initech' THEN 'GBP' ELSE 'USD' END"
        " WHERE id IN ('acme', 'globex', 'initech')"
    ),
    text(
        """
INSERT INTO memberships (company_id, name, phone, preferred_channel, status, current_period_end)
SELECT c.id, 'Past Member ' || c.id || ' ' || g, '+1558' || lpad((c.ord * 100 + g)::text, 7, '0'),
       CASE WHEN g % 3 = 0 THEN 'sms' ELSE 'whatsapp' END,
       CASE WHEN g % 5 < 3 THEN 'ACTIVE' ELSE 'CANCELLED' END, now() + make_interval(days => (g % 28)::int)
FROM (SELECT id, row_number() OVER (ORDER BY id) AS ord FROM companies WHERE id IN ('acme', 'globex', 'initech')) c
CROSS JOIN generate_series(1, 40) AS g
"""
    ),
    text(
        "UPDATE memberships SET plan_amount = CASE company_id WHEN 'acme' THEN 49.00 WHEN 'globex' THEN 19.50"
        " ELSE 120.00 END + (id % 3) * 10 WHERE company_id IN ('acme', 'globex', 'initech') AND plan_amount IS NULL"
    ),
    text(
        """
INSERT INTO recovery_cases (company_id, membership_id, status, trigger, attempts, opened_at, closed_at, last_nudge_at)
SELECT company_id, id, s.status, CASE WHEN g % 4 = 0 THEN 'cancel_at_period_end' ELSE 'payment_failed' END,
       1 + g % 3, now() - make_interval(days => 2 * g + 4),
       now() - make_interval(days => 2 * g + 4) + make_interval(days => 1 + g % 4),
       now() - make_interval(days => 2 * g + 4) + make_interval(days => g % 4)
FROM (SELECT company_id, id, split_part(name, ' ', 4)::int AS g FROM memberships WHERE name LIKE 'Past Member %') m
CROSS JOIN LATERAL (SELECT CASE WHEN g % 5 < 3 THEN 'RECOVERED' WHEN g % 5 = 3 THEN 'CANCELLED'
                                ELSE 'TERMINATED' END AS status) s
ORDER BY g DESC, company_id
"""
    ),
    text(
        """
INSERT INTO recovery_actions (case_id, company_id, type, actor_type, metadata, idempotency_key, created_at)
SELECT c.id, c.company_id, 'nudge_' || m.preferred_channel, 'system',
       jsonb_build_object('attempt_number', n, 'channel', m.preferred_channel, 'manual', false),
       'nudge:' || c.id || ':' || n, c.opened_at + make_interval(hours => 10 + 24 * (n - 1))
FROM recovery_cases c JOIN memberships m ON m.id = c.membership_id AND m.name LIKE 'Past Member %'
CROSS JOIN LATERAL generate_series(1, c.attempts) AS n
"""
    ),
    text(
        """
INSERT INTO recovery_actions (case_id, company_id, type, actor_type, idempotency_key, created_at)
SELECT c.id, c.company_id, k.kind, 'system', k.kind || ':' || c.id, c.closed_at
FROM recovery_cases c JOIN memberships m ON m.id = c.membership_id AND m.name LIKE 'Past Member %'
CROSS JOIN LATERAL (SELECT CASE c.status WHEN 'RECOVERED' THEN 'case_recovered' WHEN 'CANCELLED' THEN 'case_cancelled'
                           ELSE 'membership_terminated' END AS kind) k
"""
    ),
    text(
        """
INSERT INTO message_log (idempotency_key, recipient_type, recipient_id, channel, template, template_version, status,
                         sent_at, created_at)
SELECT a.idempotency_key, 'member', c.membership_id::text, a.metadata ->> 'channel',
       CASE c.trigger WHEN 'cancel_at_period_end' THEN 'churn_nudge_cancel_scheduled'
                      ELSE 'churn_nudge_payment_failed' END,
       1, CASE WHEN a.id % 7 = 0 THEN 'failed' ELSE 'delivered' END, a.created_at, a.created_at
FROM recovery_actions a JOIN recovery_cases c ON c.id = a.case_id
WHERE a.type IN ('nudge_sms', 'nudge_whatsapp') AND a.idempotency_key LIKE 'nudge:%'
ON CONFLICT (idempotency_key) DO NOTHING
"""
    ),
)

_DEMO_CUSTOMERS = text(
    """
INSERT INTO customers (name, phone, loyalty_points)
SELECT 'Loyalty Customer ' || g, '+1557' || lpad(g::text, 7, '0'), 0 FROM generate_series(1, 20) AS g
"""
)

# Three checkouts whose points update failed, waiting for reconciliation.
_DEMO_QUEUE = text(
    """
INSERT INTO loyalty_reconciliation_queue (customer_id, order_reference, payment_intent_id, points_redeemed, order_total)
SELECT id, 'demo-order-' || id, NULL, 0, 40 + id FROM customers WHERE name LIKE 'Loyalty Customer %' ORDER BY id LIMIT 3
ON CONFLICT (order_reference) DO NOTHING
"""
)


# The money loop on the first `make run`, whatever the hour: 6,000.00 owed on a 5,000.00 limit, so
# the demo's guardrails run pauses the shop, and every debit is on a reminder day today (0, 3 and
# 7 days past due), so the demo's reminders run gives it one Checkout link for all of it (the link
# is made before the message, which quiet hours may hold). Paying it clears everything and lifts
# the pause.
_DEMO_OVER_LIMIT = text(
    """
WITH shop AS (
    INSERT INTO retailers (name, phone, preferred_channel, timezone)
    VALUES (:name, '+15559990001', 'sms', :tz)
    RETURNING id
), account AS (
    INSERT INTO credit_accounts (retailer_id, credit_limit, available_credit, max_order_value, max_outstanding_days)
    SELECT id, 5000, 5000 - 6000, 5000, 30 FROM shop  -- limit - outstanding, as the ledger keeps it
), owed (days_past_due, amount, product, quantity) AS (
    VALUES (7, 2400.00, 'Basmati Rice 5kg', 80), (3, 1850.00, 'Sunflower Oil 1L', 185),
           (0, 1750.00, 'Black Tea 500g', 70)
), placed AS (
    INSERT INTO orders (retailer_id, status, payment_mode, total_amount, created_at)
    SELECT shop.id, 'DELIVERED', 'CREDIT', owed.amount,
           CAST(:today AS timestamptz) - make_interval(days => (owed.days_past_due + 30)::int, hours => 10)
    FROM shop, owed
    RETURNING id, retailer_id, total_amount, created_at
), items AS (
    INSERT INTO order_items (order_id, product_name, quantity, unit_price)
    SELECT placed.id, owed.product, owed.quantity, owed.amount / owed.quantity
    FROM placed JOIN owed ON owed.amount = placed.total_amount
)
INSERT INTO credit_transactions (retailer_id, type, amount, due_date, order_id, reference, notes, created_at)
SELECT placed.retailer_id, 'DEBIT', placed.total_amount, CAST(:today AS date) - owed.days_past_due, placed.id,
       'order:' || placed.id, 'credit order ' || placed.id, placed.created_at
FROM placed JOIN owed ON owed.amount = placed.total_amount
"""
)


# The console's demo users, one per role (issue #37): `make run` prints them. A dev-only password:
# the dev stack is reachable from this machine only.
DEMO_CONSOLE_PASSWORD = "jobctl-demo-console"
DEMO_CONSOLE_USERS: tuple[tuple[str, str, str | None], ...] = (
    ("finance", "finance", None),
    ("support", "support", None),
    ("acme-admin", "company_admin", "acme"),
    ("operator", "operator", None),
    ("viewer", "read_only", None),
)


async def seed_console_users(engine: AsyncEngine) -> list[tuple[str, str, str | None]]:
    """The demo's console users (those missing are added; a second call adds none): every one's
    (username, role, company)."""
    from sqlalchemy import select

    from schemas.tables import ConsoleUser
    from workers.console.users import add_user

    async with engine.connect() as conn:
        present = set((await conn.scalars(select(ConsoleUser.username))).all())
    for username, role, company in DEMO_CONSOLE_USERS:
        if username not in present:
            await add_user(engine, username, DEMO_CONSOLE_PASSWORD, role, company)
    return list(DEMO_CONSOLE_USERS)
