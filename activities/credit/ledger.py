"""The credit ledger: every write of money and every audit row of the credit domain.

Here, and nowhere else, money is written (a reminder's marks on a debit, `reminder_count` and
`reminder_sent_at`, stay with the reminders):
- `credit_transactions`: a credit order's DEBIT (`debit_order`), an admin's charge (`charge`), a
  payment's or a favourable adjustment's CREDIT and its allocation to the oldest open debits
  (`record_credit`), the spending of a credit balance on new debits (`apply_credit_balance`), and
  the reversal of a failed order's debit (`reverse_order_debit`);
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
recomputing it must not overlap. `record_credit` and `charge` take the lock themselves; the other
writes are called by paths that took it first (a credit order's placement, a failed order).
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
INSERT INTO credit_transactions (retailer_id, type, amount, cleared_amount, status, reference, notes)
VALUES (:r, 'CREDIT', :amount, 0, 'OPEN', :reference, :notes)
ON CONFLICT (retailer_id, type, reference) DO NOTHING
RETURNING id
"""
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
    credit_id = await conn.scalar(INSERT_CREDIT, params | {"notes": notes})
    if credit_id is None:
        existing = (await conn.execute(EXISTING_CREDIT, params)).one()
        return PaymentRecorded(
            retailer_id=payment.retailer_id,
            reference=payment.reference,
            amount=existing.amount,
            credit_transaction_id=existing.id,
            duplicate=True,
        )
    rows = (await conn.execute(ALLOCATE, params)).all()
    allocated = sum((row.allocated for row in rows), Decimal("0"))
    await conn.execute(SPEND_CREDIT, {"id": credit_id, "spent": allocated})
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
