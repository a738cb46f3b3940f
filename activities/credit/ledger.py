"""The credit ledger: every write of money and every audit row of the credit domain.

Here, and nowhere else, money is written (a reminder's marks on a debit, `reminder_count` and
`reminder_sent_at`, stay with the reminders):
- `credit_transactions`: a credit order's DEBIT (`debit_order`), an admin's charge (`charge`), a
  payment's or a favourable adjustment's CREDIT and its allocation to the oldest open debits
  (`record_credit`), the spending of a credit balance on new debits (`apply_credit_balance`), an
  opening debit from another system's books (`import_debit`, `jobctl import`), and
  the reversal of a failed order's debit (`reverse_order_debit`), and what a Stripe payment gives
  back, a refund or a lost dispute (`refund_payment`), and its dispute flag (`flag_dispute`,
  `close_dispute`);
- `credit_allocations`: what each CREDIT cleared of which DEBIT (a refund reopens those);
  `payment_returns`: each refund or lost dispute booked;
- `credit_accounts`: the limits (`change_limits`) and available credit, by one rule;
- `audit_log`: one row per change (`audit`), or one per row of a set-based statement
  (`audit_rows`, for the guardrails' and the order clocks' single statements).

**The one rule for available credit**: `available_credit = credit_limit - outstanding`, where
outstanding is the sum of `amount - cleared_amount` over the retailer's open debits
(`REFRESH_AVAILABLE`). Every write that changes a debit or the limit recomputes it in the same
transaction; nothing adds to or subtracts from it. A credit balance (money paid ahead: the unspent
part of the CREDITs) is not available credit; it clears the next debits as they are written.

The caller holds the transaction and the retailer's row lock (`SELECT ... FROM retailers ... FOR
UPDATE`) across the writes: the rule reads every open debit of the retailer, so two transactions
recomputing it must not overlap. `record_credit`, `charge`, `refund_payment` and the dispute flags
take the lock themselves; the other writes are called by paths that took it first (a credit
order's placement, a failed order).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio.exceptions import ApplicationError

from schemas.credit import DebitAllocation, PaymentRecorded, RecordPayment

# --------------------------------------------------------------------------- audit rows

AUDIT_COLUMNS = "retailer_id, action, reference, old_value, new_value, performed_by, reason"
_INSERT_AUDIT = f"INSERT INTO audit_log ({AUDIT_COLUMNS})"

AUDIT = text(
    f"{_INSERT_AUDIT}"
    " VALUES (:r, :action, :reference, CAST(:old AS jsonb), CAST(:new AS jsonb), :actor, :reason) RETURNING id"
)


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, default=str)


async def audit(
    conn: AsyncConnection,
    retailer_id: int,
    action: str,
    *,
    actor: str,
    reference: str | None = None,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
    reason: str | None = None,
) -> int:
    """Write one audit row in the caller's transaction; returns its id. `old`/`new` go to jsonb
    (None stays SQL NULL; Decimals and dates as their text)."""
    return await conn.scalar(
        AUDIT,
        {
            "r": retailer_id,
            "action": action,
            "reference": reference,
            "old": _json(old),
            "new": _json(new),
            "actor": actor,
            "reason": reason,
        },
    )


def audit_rows(
    source: str, *, retailer_id: str, action: str, reference: str, old: str, new: str, performed_by: str, reason: str
) -> str:
    """SQL that audits every row of `source` (a CTE of the caller's statement), one row each: for a
    statement that changes and audits a set in one round trip. Each argument is a SQL expression
    over `source`'s columns (or a bind parameter)."""
    return (
        f"{_INSERT_AUDIT}\n"
        f"SELECT {retailer_id}, {action}, {reference}, {old}, {new}, {performed_by}, {reason}\n"
        f"FROM {source}"
    )


# --------------------------------------------------------------------------- the retailer and available credit


class UnknownRetailer(ApplicationError):
    def __init__(self, retailer_id: int) -> None:
        super().__init__(f"no retailer {retailer_id}", type="UnknownRetailer", non_retryable=True)


LOCK_RETAILER = text("SELECT id FROM retailers WHERE id = :r FOR UPDATE")

# The account's ISO 4217 currency (an account written before migration 0011 is USD).
ACCOUNT_CURRENCY = text("SELECT currency FROM credit_accounts WHERE retailer_id = :r")

# The one rule: available credit is the limit minus what the open debits still owe.
OUTSTANDING = """COALESCE((SELECT sum(amount - cleared_amount) FROM credit_transactions
                    WHERE retailer_id = :r AND type = 'DEBIT' AND status <> 'CLEARED'), 0)"""
REFRESH_AVAILABLE = text(
    f"""
UPDATE credit_accounts ca
SET available_credit = ca.credit_limit - {OUTSTANDING},
    updated_at = now()
WHERE ca.retailer_id = :r
RETURNING ca.available_credit
"""
)

AVAILABLE = text("SELECT available_credit FROM credit_accounts WHERE retailer_id = :r")


async def lock_retailer(conn: AsyncConnection, retailer_id: int) -> None:
    """Take the retailer's row lock for this transaction; `UnknownRetailer` if there is none."""
    if await conn.scalar(LOCK_RETAILER, {"r": retailer_id}) is None:
        raise UnknownRetailer(retailer_id)


async def refresh_available(conn: AsyncConnection, retailer_id: int) -> Decimal | None:
    """Recompute available credit by the rule; the new value (None: no credit account)."""
    return await conn.scalar(REFRESH_AVAILABLE, {"r": retailer_id})


async def available_credit(conn: AsyncConnection, retailer_id: int) -> Decimal:
    """The account's available credit (the caller holds the retailer, so the row exists)."""
    return (await conn.execute(AVAILABLE, {"r": retailer_id})).scalar_one()


# --------------------------------------------------------------------------- limits

LIMIT_COLUMNS = ("credit_limit", "max_order_value", "max_outstanding_days")


async def change_limits(
    conn: AsyncConnection, retailer_id: int, old: dict[str, Any], new: dict[str, Any], *, actor: str, reason: str | None
) -> int:
    """Set any of `LIMIT_COLUMNS` (the caller locked the account row and read `old`); available
    credit follows the new limit. Returns the audit row's id."""
    if set(new) - set(LIMIT_COLUMNS):
        raise ValueError(f"not a limit: {sorted(set(new) - set(LIMIT_COLUMNS))}")
    # One statement: the limit and the available credit it implies change together, so the check
    # available_credit <= credit_limit never sees a lowered limit beside yesterday's available.
    sets = ", ".join(f"{k} = :{k}" for k in new)
    limit = "CAST(:credit_limit AS numeric)" if "credit_limit" in new else "ca.credit_limit"
    await conn.execute(
        text(
            f"UPDATE credit_accounts ca SET {sets}, available_credit = {limit} - ({OUTSTANDING}), updated_at = now()"
            " WHERE ca.retailer_id = :r"
        ),
        {"r": retailer_id, **new},
    )
    return await audit(conn, retailer_id, "credit_limits_changed", actor=actor, old=old, new=new, reason=reason)


# --------------------------------------------------------------------------- credits and the credit balance

INSERT_CREDIT = text(
    """
INSERT INTO credit_transactions
    (retailer_id, type, amount, cleared_amount, status, reference, notes, stripe_payment_intent_id)
VALUES (:r, 'CREDIT', :amount, 0, 'OPEN', :reference, :notes, :intent)
ON CONFLICT (retailer_id, type, reference) DO NOTHING
RETURNING id
"""
)

# What a CREDIT cleared of which DEBIT: a refund reopens these, the most recent first.
INSERT_ALLOCATIONS = text(
    "INSERT INTO credit_allocations (retailer_id, credit_id, debit_id, amount)"
    " SELECT :r, :credit, d, a FROM unnest(CAST(:debits AS bigint[]), CAST(:amounts AS numeric[])) AS x(d, a)"
)

# How much of a CREDIT has been spent on debits; what is left is the retailer's credit balance.
SPEND_CREDIT = text(
    """
UPDATE credit_transactions
SET cleared_amount = cleared_amount + :spent,
    status = CASE WHEN cleared_amount + :spent >= amount THEN 'CLEARED'
                  WHEN cleared_amount + :spent > 0 THEN 'PARTIALLY_PAID' ELSE 'OPEN' END,
    cleared_at = CASE WHEN cleared_amount + :spent >= amount THEN now() ELSE cleared_at END
WHERE id = :id
"""
)

UNSPENT_CREDITS = text(
    """
SELECT id, reference, amount - cleared_amount AS unspent FROM credit_transactions
WHERE retailer_id = :r AND type = 'CREDIT' AND status <> 'CLEARED'
ORDER BY created_at, id
FOR UPDATE
"""
)

CREDIT_BALANCE = text(
    "SELECT COALESCE(sum(amount - cleared_amount), 0) FROM credit_transactions"
    " WHERE retailer_id = :r AND type = 'CREDIT' AND status <> 'CLEARED'"
)

EXISTING_CREDIT = text(
    "SELECT id, amount FROM credit_transactions WHERE retailer_id = :r AND type = 'CREDIT' AND reference = :reference"
)

# `amount` to the open debits, oldest due date first; the last one reached may be partly paid.
ALLOCATE = text(
    """
WITH open AS (
    SELECT id, amount - cleared_amount AS outstanding,
           sum(amount - cleared_amount) OVER (ORDER BY due_date, id) AS running
    FROM credit_transactions
    WHERE retailer_id = :r AND type = 'DEBIT' AND status <> 'CLEARED'
), allocation AS (
    SELECT id, LEAST(outstanding, CAST(:amount AS numeric) - (running - outstanding)) AS allocated
    FROM open
    WHERE running - outstanding < CAST(:amount AS numeric)
)
UPDATE credit_transactions t
SET cleared_amount = t.cleared_amount + a.allocated,
    status = CASE WHEN t.cleared_amount + a.allocated >= t.amount THEN 'CLEARED' ELSE 'PARTIALLY_PAID' END,
    cleared_at = CASE WHEN t.cleared_amount + a.allocated >= t.amount THEN now() ELSE t.cleared_at END
FROM allocation a
WHERE t.id = a.id
RETURNING t.id, a.allocated, t.status, t.cleared_amount - a.allocated AS cleared_before, t.cleared_amount
"""
)


async def _remember_allocations(conn: AsyncConnection, retailer_id: int, credit_id: int, rows: Sequence[Any]) -> None:
    if rows:
        await conn.execute(
            INSERT_ALLOCATIONS,
            {
                "r": retailer_id,
                "credit": credit_id,
                "debits": [row.id for row in rows],
                "amounts": [row.allocated for row in rows],
            },
        )


async def _audit_allocations(
    conn: AsyncConnection, rows: Sequence[Any], retailer_id: int, reference: str, actor: str, source: str
) -> None:
    for row in rows:
        await audit(
            conn,
            retailer_id,
            "debit_cleared" if row.status == "CLEARED" else "debit_partially_paid",
            actor=actor,
            reference=reference,
            old={"debit_id": row.id, "cleared_amount": row.cleared_before},
            new={"debit_id": row.id, "cleared_amount": row.cleared_amount, "status": row.status},
            reason=f"allocated {row.allocated} of {source}",
        )


async def apply_credit_balance(
    conn: AsyncConnection, retailer_id: int, *, actor: str, reference: str
) -> list[DebitAllocation]:
    """Spend the retailer's unspent CREDITs (oldest first) on its open debits (oldest first).

    Call inside the transaction that wrote a DEBIT, with the retailer's row locked. Audited under
    `reference`; returns what was cleared."""
    cleared: list[DebitAllocation] = []
    for credit in (await conn.execute(UNSPENT_CREDITS, {"r": retailer_id})).all():
        rows = (await conn.execute(ALLOCATE, {"r": retailer_id, "amount": credit.unspent})).all()
        if not rows:
            break
        spent = sum((row.allocated for row in rows), Decimal("0"))
        await conn.execute(SPEND_CREDIT, {"id": credit.id, "spent": spent})
        await _remember_allocations(conn, retailer_id, credit.id, rows)
        await _audit_allocations(conn, rows, retailer_id, reference, actor, f"the credit balance ({credit.reference})")
        cleared += [DebitAllocation(debit_id=row.id, allocated=row.allocated, status=row.status) for row in rows]
    if cleared:
        await conn.execute(REFRESH_AVAILABLE, {"r": retailer_id})
    return cleared


async def credit_balance(conn: AsyncConnection, retailer_id: int) -> Decimal:
    return Decimal(await conn.scalar(CREDIT_BALANCE, {"r": retailer_id}))


async def record_credit(
    conn: AsyncConnection, payment: RecordPayment, *, notes: str, action: str, reason: str | None = None
) -> PaymentRecorded:
    """A CREDIT (a payment, or an adjustment in the retailer's favour) allocated oldest debits first;
    what is left stays on the CREDIT as credit balance. Idempotent by (retailer, reference).
    Takes the retailer's lock; `UnknownRetailer` if there is none."""
    await lock_retailer(conn, payment.retailer_id)
    params = {"r": payment.retailer_id, "amount": payment.amount, "reference": payment.reference}
    credit_id = await conn.scalar(INSERT_CREDIT, params | {"notes": notes, "intent": payment.stripe_payment_intent_id})
    currency = await conn.scalar(ACCOUNT_CURRENCY, {"r": payment.retailer_id}) or "USD"
    if credit_id is None:
        existing = (await conn.execute(EXISTING_CREDIT, params)).one()
        return PaymentRecorded(
            retailer_id=payment.retailer_id,
            reference=payment.reference,
            amount=existing.amount,
            credit_transaction_id=existing.id,
            duplicate=True,
            currency=currency,
        )
    rows = (await conn.execute(ALLOCATE, params)).all()
    allocated = sum((row.allocated for row in rows), Decimal("0"))
    await conn.execute(SPEND_CREDIT, {"id": credit_id, "spent": allocated})
    await _remember_allocations(conn, payment.retailer_id, credit_id, rows)
    await conn.execute(REFRESH_AVAILABLE, {"r": payment.retailer_id})
    await audit(
        conn,
        payment.retailer_id,
        action,
        actor=payment.actor,
        reference=payment.reference,
        new={
            "amount": payment.amount,
            "allocated": allocated,
            "credit_balance_added": payment.amount - allocated,
            "credit_transaction_id": credit_id,
        },
        reason=reason,
    )
    await _audit_allocations(
        conn, rows, payment.retailer_id, payment.reference, payment.actor, f"payment {payment.reference}"
    )
    return PaymentRecorded(
        retailer_id=payment.retailer_id,
        reference=payment.reference,
        amount=payment.amount,
        credit_transaction_id=credit_id,
        allocations=[DebitAllocation(debit_id=row.id, allocated=row.allocated, status=row.status) for row in rows],
        unallocated=payment.amount - allocated,
        currency=currency,
    )


# --------------------------------------------------------------------------- debits

INSERT_ORDER_DEBIT = text(
    """
INSERT INTO credit_transactions (retailer_id, type, amount, due_date, order_id, reference, notes)
VALUES (:r, 'DEBIT', :amount, :due, :o, :reference, :notes)
ON CONFLICT DO NOTHING
RETURNING id
"""
)

INSERT_CHARGE = text(
    "INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference, notes)"
    " VALUES (:r, 'DEBIT', :amount, :due, :ref, :notes)"
    " ON CONFLICT (retailer_id, type, reference) DO NOTHING RETURNING id"
)

EXISTING_CHARGE = text(
    "SELECT id, amount FROM credit_transactions WHERE retailer_id = :r AND type = 'DEBIT' AND reference = :ref"
)


async def debit_order(
    conn: AsyncConnection, retailer_id: int, order_id: int, amount: Decimal, due: date, *, actor: str
) -> tuple[int | None, list[DebitAllocation]]:
    """A credit order's DEBIT (unique per order), available credit by the rule, then any credit
    balance spent on it. The retailer's row is locked by the caller. (debit id or None if the
    order has one already, what the balance cleared)"""
    reference = f"order:{order_id}"
    debit_id = await conn.scalar(
        INSERT_ORDER_DEBIT,
        {
            "r": retailer_id,
            "amount": amount,
            "due": due,
            "o": order_id,
            "reference": reference,
            "notes": f"credit order {order_id}",
        },
    )
    await conn.execute(REFRESH_AVAILABLE, {"r": retailer_id})
    return debit_id, await apply_credit_balance(conn, retailer_id, actor=actor, reference=reference)


@dataclass
class Charge:
    debit_id: int
    amount: Decimal
    duplicate: bool
    cleared: list[DebitAllocation]


async def charge(
    conn: AsyncConnection,
    retailer_id: int,
    amount: Decimal,
    *,
    due: date,
    reference: str,
    notes: str,
    actor: str,
    reason: str,
) -> Charge:
    """A DEBIT that is not an order's (an admin's charge), audited `debit_adjustment`; any credit
    balance clears it. Idempotent by (retailer, reference): a repeat returns the first one.
    Takes the retailer's lock; `UnknownRetailer` if there is none."""
    await lock_retailer(conn, retailer_id)
    debit_id = await conn.scalar(
        INSERT_CHARGE, {"r": retailer_id, "amount": amount, "due": due, "ref": reference, "notes": notes}
    )
    if debit_id is None:
        existing = (await conn.execute(EXISTING_CHARGE, {"r": retailer_id, "ref": reference})).one()
        return Charge(existing.id, existing.amount, True, [])
    await conn.execute(REFRESH_AVAILABLE, {"r": retailer_id})
    await audit(
        conn,
        retailer_id,
        "debit_adjustment",
        actor=actor,
        reference=reference,
        new={"debit_id": debit_id, "amount": str(amount)},
        reason=reason,
    )
    cleared = await apply_credit_balance(conn, retailer_id, actor=actor, reference=reference)
    return Charge(debit_id, amount, False, cleared)


INSERT_IMPORTED_DEBIT = text(
    """
INSERT INTO credit_transactions
    (retailer_id, type, amount, cleared_amount, status, cleared_at, due_date, reference, notes)
VALUES (:r, 'DEBIT', :amount, :cleared,
        CASE WHEN :cleared >= :amount THEN 'CLEARED' WHEN :cleared > 0 THEN 'PARTIALLY_PAID' ELSE 'OPEN' END,
        CASE WHEN :cleared >= :amount THEN now() END, :due, :ref, :notes)
ON CONFLICT (retailer_id, type, reference) DO NOTHING
RETURNING id
"""
)

EXISTING_IMPORTED_DEBIT = text(
    "SELECT id, amount, cleared_amount, due_date FROM credit_transactions"
    " WHERE retailer_id = :r AND type = 'DEBIT' AND reference = :ref"
)


@dataclass(frozen=True)
class ImportedDebit:
    debit_id: int
    duplicate: bool
    amount: Decimal
    cleared_amount: Decimal
    due: date


async def import_debit(
    conn: AsyncConnection,
    retailer_id: int,
    amount: Decimal,
    *,
    cleared: Decimal,
    due: date,
    reference: str,
    notes: str,
    actor: str,
) -> ImportedDebit:
    """An opening DEBIT from another system's books (`jobctl import credit_transactions`): `amount`
    of which `cleared` was paid there, due on `due`. Available credit by the rule, audited
    `debit_imported`; any credit balance clears what is still owed. Idempotent by (retailer,
    reference): a repeat writes nothing and returns the first one (the caller compares). Takes
    the retailer's lock; `UnknownRetailer` if there is none."""
    await lock_retailer(conn, retailer_id)
    params = {"r": retailer_id, "ref": reference}
    debit_id = await conn.scalar(
        INSERT_IMPORTED_DEBIT, params | {"amount": amount, "cleared": cleared, "due": due, "notes": notes}
    )
    if debit_id is None:
        existing = (await conn.execute(EXISTING_IMPORTED_DEBIT, params)).one()
        return ImportedDebit(existing.id, True, existing.amount, existing.cleared_amount, existing.due_date)
    await conn.execute(REFRESH_AVAILABLE, {"r": retailer_id})
    await audit(
        conn,
        retailer_id,
        "debit_imported",
        actor=actor,
        reference=reference,
        new={"debit_id": debit_id, "amount": str(amount), "cleared_amount": str(cleared), "due_date": str(due)},
        reason=notes,
    )
    if cleared < amount:
        await apply_credit_balance(conn, retailer_id, actor=actor, reference=reference)
    return ImportedDebit(debit_id, False, amount, cleared, due)


# --------------------------------------------------------------------------- a failed order's reversal

# The retailer's row is locked by the caller (activities/orders.py locks the order and its
# retailer together), so no other ledger write of the retailer runs between this read and the
# recomputation of its available credit.
ORDER_DEBIT_FOR_REVERSAL = text(
    """
SELECT d.id, d.retailer_id, d.amount, d.amount - d.cleared_amount AS outstanding, d.cleared_amount AS paid,
       ca.available_credit
FROM credit_transactions d LEFT JOIN credit_accounts ca ON ca.retailer_id = d.retailer_id
WHERE d.order_id = :id AND d.type = 'DEBIT'
FOR UPDATE OF d
"""
)

INSERT_REVERSAL = text(
    """
INSERT INTO credit_transactions
    (retailer_id, type, amount, cleared_amount, status, cleared_at, order_id, reference, notes)
VALUES (:retailer_id, 'CREDIT', :amount, :released,
        CASE WHEN CAST(:released AS numeric) >= CAST(:amount AS numeric) THEN 'CLEARED'
             WHEN CAST(:released AS numeric) > 0 THEN 'PARTIALLY_PAID' ELSE 'OPEN' END,
        CASE WHEN CAST(:released AS numeric) >= CAST(:amount AS numeric) THEN now() END,
        :order_id, :reference, :notes)
ON CONFLICT DO NOTHING
RETURNING id
"""
)

CLOSE_REVERSED_DEBIT = text(
    "UPDATE credit_transactions SET status = 'CLEARED', cleared_amount = amount, cleared_at = now(),"
    " notes = concat_ws('; ', notes, 'reversed: order failed') WHERE id = :id"
)


@dataclass
class Reversal:
    amount: Decimal
    """What the debit still owed: released to available credit."""
    returned: Decimal
    """What had been paid on the debit (payments, the credit balance): back on the credit balance."""
    available_before: Decimal | None
    available_after: Decimal | None
    cleared: list[DebitAllocation]
    """Other open debits the returned money cleared at once (no credit balance sits beside a debit)."""


async def reverse_order_debit(conn: AsyncConnection, order_id: int, *, actor: str) -> Reversal | None:
    """Undo a failed order's DEBIT, once, giving back all it took: a CREDIT of the whole debit,
    of which the part still owed is spent closing the debit (released to available credit) and
    the part already paid stays unspent (back on the credit balance, which then clears the
    retailer's other open debits, oldest first, as any credit balance does). None when the order
    has no debit or it was reversed already. The caller holds the retailer's row lock and audits."""
    debit = (await conn.execute(ORDER_DEBIT_FOR_REVERSAL, {"id": order_id})).first()
    if debit is None:
        return None
    reference = f"order-failed:{order_id}"
    inserted = await conn.scalar(
        INSERT_REVERSAL,
        {
            "retailer_id": debit.retailer_id,
            "amount": debit.amount,
            "released": debit.outstanding,
            "order_id": order_id,
            "reference": reference,
            "notes": f"reversal of the debit of failed order {order_id}",
        },
    )
    if inserted is None:
        return None  # reversed already
    await conn.execute(CLOSE_REVERSED_DEBIT, {"id": debit.id})
    cleared = await apply_credit_balance(conn, debit.retailer_id, actor=actor, reference=reference)
    after = await refresh_available(conn, debit.retailer_id)
    return Reversal(debit.outstanding, debit.paid, debit.available_credit, after, cleared)


# --------------------------------------------------------------------------- refunds and disputes of Stripe payments


class RefundExceedsPayment(ApplicationError):
    """A refund (or lost dispute) that would give back more than the payment brought: refused, nothing written."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type="RefundExceedsPayment", non_retryable=True)


PAYMENT_OF_INTENT = text(
    "SELECT id, retailer_id FROM credit_transactions"
    " WHERE type = 'CREDIT' AND stripe_payment_intent_id = :intent ORDER BY id LIMIT 1"
)

LOCK_PAYMENT = text(
    "SELECT id, retailer_id, reference, amount, cleared_amount, refunded_amount, disputed_at, dispute_id"
    " FROM credit_transactions WHERE id = :id FOR UPDATE"
)

BOOKED_RETURNS = text(
    "SELECT COALESCE(sum(amount), 0) FROM payment_returns"
    " WHERE credit_id = :credit AND kind = :kind AND stripe_id = :sid"
)

INSERT_RETURN = text(
    """
INSERT INTO payment_returns
    (retailer_id, credit_id, kind, reference, stripe_id, amount, from_balance, reopened, owed_again)
VALUES (:r, :credit, :kind, :reference, :sid, :amount, :from_balance, :reopened, :owed_again)
ON CONFLICT (retailer_id, reference) DO NOTHING
RETURNING id
"""
)

# The payment's allocations still standing, the most recently made first and, of one allocation
# (one transaction, one created_at), the latest due first: the oldest debit is reopened last. (By
# allocation id alone, a payment's own order was RETURNING's, which is no order at all.) A debit
# closed by its order's failure is left alone (the reversal already gave its paid part back).
STANDING_ALLOCATIONS = text(
    """
SELECT a.id, a.debit_id, a.amount - a.reopened_amount AS standing
FROM credit_allocations a JOIN credit_transactions d ON d.id = a.debit_id
WHERE a.credit_id = :credit AND a.amount > a.reopened_amount
  AND NOT (d.order_id IS NOT NULL AND EXISTS (
      SELECT 1 FROM credit_transactions r
      WHERE r.order_id = d.order_id AND r.type = 'CREDIT' AND r.reference LIKE 'order-failed:%'))
ORDER BY a.created_at DESC, d.due_date DESC, d.id DESC, a.id DESC
FOR UPDATE OF a, d
"""
)

REOPEN_DEBIT = text(
    """
UPDATE credit_transactions
SET cleared_amount = cleared_amount - :x,
    status = CASE WHEN cleared_amount - :x > 0 THEN 'PARTIALLY_PAID' ELSE 'OPEN' END,
    cleared_at = NULL
WHERE id = :id
RETURNING cleared_amount + :x AS cleared_before, cleared_amount, status
"""
)

MARK_REOPENED = text("UPDATE credit_allocations SET reopened_amount = reopened_amount + :x WHERE id = :id")

ADD_REFUNDED = text(
    "UPDATE credit_transactions SET refunded_amount = refunded_amount + :amount WHERE id = :id"
    " RETURNING refunded_amount"
)


@dataclass
class PaymentReturned:
    """What a refund or lost dispute did to the ledger (`refund_payment`)."""

    retailer_id: int
    payment_reference: str
    reference: str
    amount: Decimal
    """Booked now: the cumulative amount at Stripe minus what was booked before (0: nothing new)."""
    from_balance: Decimal = Decimal("0")
    reopened: list[DebitAllocation] | None = None
    owed_again: Decimal = Decimal("0")
    refunded_total: Decimal = Decimal("0")
    duplicate: bool = False


async def payment_of_intent(conn: AsyncConnection, intent_id: str) -> tuple[int, int] | None:
    """(CREDIT id, retailer id) of the payment recorded for this Stripe PaymentIntent, or None."""
    row = (await conn.execute(PAYMENT_OF_INTENT, {"intent": intent_id})).first()
    return None if row is None else (row.id, row.retailer_id)


async def refund_payment(
    conn: AsyncConnection,
    credit_id: int,
    retailer_id: int,
    *,
    kind: str,
    stripe_id: str,
    total: Decimal,
    actor: str,
    today: date,
) -> PaymentReturned:
    """Give back what Stripe says left the payment: `total` is Stripe's cumulative amount for
    `stripe_id` (a charge's `amount_refunded`, a lost dispute's amount), so only the difference
    from what was booked before is booked now, under reference `{kind}:{stripe_id}:{total}`, and a
    late or repeated event books nothing.

    Where it comes from, in this order (docs/ARCHITECTURE.md, "Refunds and disputes"):
    1. the payment's own unspent part (its credit balance): money not yet used goes first;
    2. the debits the payment cleared, the most recently cleared first (the oldest stay paid):
       each is reopened by what is taken (OPEN or PARTIALLY_PAID again, due as before);
    3. anything neither holds (a debit it cleared was reversed since) is owed again: a new DEBIT
       due today.
    Then any other credit balance the retailer has clears the reopened debits at once, and
    available credit follows the rule. More than the payment brought is refused
    (`RefundExceedsPayment`) before anything is written. Takes the retailer's lock; audited."""
    await lock_retailer(conn, retailer_id)
    payment = (await conn.execute(LOCK_PAYMENT, {"id": credit_id})).one()
    booked = Decimal(await conn.scalar(BOOKED_RETURNS, {"credit": credit_id, "kind": kind, "sid": stripe_id}))
    delta = total - booked
    reference = f"{kind}:{stripe_id}:{total}"
    result = PaymentReturned(
        retailer_id, payment.reference, reference, Decimal("0"), refunded_total=payment.refunded_amount
    )
    if delta <= 0:  # booked already (a repeat), or a late event behind a newer one
        result.duplicate = True
        return result
    if payment.refunded_amount + delta > payment.amount:
        raise RefundExceedsPayment(
            f"{kind} {stripe_id} of {total} would give back more than payment {payment.reference} brought"
            f" ({payment.amount}, of which {payment.refunded_amount} given back already): nothing booked"
        )
    available_before = await available_credit(conn, retailer_id)
    from_balance = min(delta, payment.amount - payment.cleared_amount)
    if from_balance > 0:
        await conn.execute(SPEND_CREDIT, {"id": credit_id, "spent": from_balance})
    rest, reopened = delta - from_balance, []
    for allocation in (await conn.execute(STANDING_ALLOCATIONS, {"credit": credit_id})).all():
        if rest <= 0:
            break
        x = min(rest, allocation.standing)
        row = (await conn.execute(REOPEN_DEBIT, {"id": allocation.debit_id, "x": x})).one()
        await conn.execute(MARK_REOPENED, {"id": allocation.id, "x": x})
        await audit(
            conn,
            retailer_id,
            "debit_reopened",
            actor=actor,
            reference=reference,
            old={"debit_id": allocation.debit_id, "cleared_amount": row.cleared_before},
            new={"debit_id": allocation.debit_id, "cleared_amount": row.cleared_amount, "status": row.status},
            reason=f"{x} of payment {payment.reference} given back ({kind} {stripe_id})",
        )
        reopened.append(DebitAllocation(debit_id=allocation.debit_id, allocated=x, status=row.status))
        rest -= x
    owed_again = rest
    if owed_again > 0:
        await conn.execute(
            INSERT_CHARGE,
            {
                "r": retailer_id,
                "amount": owed_again,
                "due": today,
                "ref": f"{reference}:owed",
                "notes": f"{kind} of payment {payment.reference} that no debit it cleared could take back",
            },
        )
    refunded_total = await conn.scalar(ADD_REFUNDED, {"id": credit_id, "amount": delta})
    inserted = await conn.scalar(
        INSERT_RETURN,
        {
            "r": retailer_id,
            "credit": credit_id,
            "kind": kind,
            "reference": reference,
            "sid": stripe_id,
            "amount": delta,
            "from_balance": from_balance,
            "reopened": delta - from_balance - owed_again,
            "owed_again": owed_again,
        },
    )
    if inserted is None:  # cannot happen under the retailer's lock unless written outside this module
        raise RuntimeError(f"{reference}: a return appeared while the retailer was locked")
    await conn.execute(REFRESH_AVAILABLE, {"r": retailer_id})
    cleared = await apply_credit_balance(conn, retailer_id, actor=actor, reference=reference)
    after = await refresh_available(conn, retailer_id)
    await audit(
        conn,
        retailer_id,
        "payment_refunded" if kind == "refund" else "payment_dispute_lost",
        actor=actor,
        reference=reference,
        old={"refunded_amount": payment.refunded_amount, "available_credit": available_before},
        new={
            "payment": payment.reference,
            "credit_transaction_id": credit_id,
            "amount": delta,
            "refunded_amount": refunded_total,
            "from_balance": from_balance,
            "reopened": [{"debit_id": r.debit_id, "amount": r.allocated} for r in reopened],
            "owed_again": owed_again,
            "cleared_by_balance": [{"debit_id": c.debit_id, "amount": c.allocated} for c in cleared],
            "available_credit": after,
        },
        reason=f"{kind} {stripe_id} at Stripe: {total} in all",
    )
    return PaymentReturned(
        retailer_id,
        payment.reference,
        reference,
        delta,
        from_balance=from_balance,
        reopened=reopened,
        owed_again=owed_again,
        refunded_total=refunded_total,
    )


SET_DISPUTE = text(
    "UPDATE credit_transactions SET disputed_at = COALESCE(disputed_at, now()), dispute_id = :dispute WHERE id = :id"
)
CLEAR_DISPUTE = text("UPDATE credit_transactions SET disputed_at = NULL WHERE id = :id")
PAUSE_FOR_DISPUTE = text(
    "UPDATE retailers SET credit_status = 'PAUSED', credit_paused_at = now(), credit_pause_reason = :reason,"
    " paused_by = :by WHERE id = :r AND credit_status = 'ACTIVE' RETURNING id"
)
DISPUTE_PAUSER = "stripe-dispute"
"""`paused_by` of a dispute's pause: not `system`, so the guardrails never lift it; a person does."""


async def flag_dispute(
    conn: AsyncConnection, credit_id: int, retailer_id: int, dispute_id: str, *, actor: str, pause: bool
) -> tuple[bool, bool]:
    """Mark the payment disputed (audited `payment_disputed`) and, with `pause`, pause an ACTIVE
    retailer (audited `credit_paused`, `paused_by` `stripe-dispute`, lifted by a person). Once per
    dispute: (flagged now, paused now)."""
    await lock_retailer(conn, retailer_id)
    payment = (await conn.execute(LOCK_PAYMENT, {"id": credit_id})).one()
    if payment.disputed_at is not None and payment.dispute_id == dispute_id:
        return False, False
    await conn.execute(SET_DISPUTE, {"id": credit_id, "dispute": dispute_id})
    await audit(
        conn,
        retailer_id,
        "payment_disputed",
        actor=actor,
        reference=f"dispute:{dispute_id}",
        old={"disputed": payment.disputed_at is not None, "dispute_id": payment.dispute_id},
        new={
            "disputed": True,
            "dispute_id": dispute_id,
            "payment": payment.reference,
            "credit_transaction_id": credit_id,
        },
        reason=f"dispute {dispute_id} opened at Stripe on payment {payment.reference}",
    )
    paused = False
    if pause:
        reason = f"payment {payment.reference} disputed at Stripe ({dispute_id})"
        paused = await conn.scalar(PAUSE_FOR_DISPUTE, {"r": retailer_id, "reason": reason, "by": DISPUTE_PAUSER})
        if paused:
            await audit(
                conn,
                retailer_id,
                "credit_paused",
                actor=actor,
                reference=f"dispute:{dispute_id}",
                old={"credit_status": "ACTIVE", "paused_by": None},
                new={"credit_status": "PAUSED", "paused_by": DISPUTE_PAUSER},
                reason=reason,
            )
    return True, bool(paused)


async def close_dispute(
    conn: AsyncConnection, credit_id: int, retailer_id: int, dispute_id: str, status: str, *, actor: str
) -> bool:
    """Clear the payment's dispute flag once the dispute closed (`won` or `lost`), audited
    `payment_dispute_closed`; a lost one's money goes through `refund_payment` first. False: the
    flag was not this dispute's (closed before, or never seen open)."""
    await lock_retailer(conn, retailer_id)
    payment = (await conn.execute(LOCK_PAYMENT, {"id": credit_id})).one()
    if payment.disputed_at is None or payment.dispute_id != dispute_id:
        return False
    await conn.execute(CLEAR_DISPUTE, {"id": credit_id})
    await audit(
        conn,
        retailer_id,
        "payment_dispute_closed",
        actor=actor,
        reference=f"dispute:{dispute_id}",
        old={"disputed": True, "dispute_id": dispute_id},
        new={"disputed": False, "dispute_id": dispute_id, "status": status, "payment": payment.reference},
        reason=f"dispute {dispute_id} {status} at Stripe",
    )
    return True
