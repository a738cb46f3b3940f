"""Recording a payment: one CREDIT transaction, allocated to the oldest open debits first.

One DB transaction locks the retailer's row (payments of one retailer allocate one at a time),
inserts the CREDIT under its unique (retailer, type, reference) key (a second recording of the
same reference changes nothing), clears debits oldest due date first (a partial payment leaves
PARTIALLY_PAID with `cleared_amount`), recomputes `available_credit`, and writes the audit rows.

The credit balance is the ledger itself: a CREDIT's `cleared_amount` is how much of it has been
applied to debits, so a CREDIT not yet CLEARED holds money paid ahead (an overpayment, a second
payment, a return). `apply_credit_balance` spends those, oldest first, on open debits; whoever
writes a DEBIT calls it in the same transaction, so the balance clears the next debits as they
arrive. Open debits and an unspent balance therefore never sit side by side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from schemas.credit import DebitAllocation, PaymentRecorded, RecordPayment

LOCK_RETAILER = text("SELECT id FROM retailers WHERE id = :r FOR UPDATE")

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

REFRESH_AVAILABLE = text(
    """
UPDATE credit_accounts ca
SET available_credit = ca.credit_limit
        - COALESCE((SELECT sum(amount - cleared_amount) FROM credit_transactions
                    WHERE retailer_id = :r AND type = 'DEBIT' AND status <> 'CLEARED'), 0),
    updated_at = now()
WHERE ca.retailer_id = :r
"""
)

AUDIT = text(
    """
INSERT INTO audit_log (retailer_id, action, reference, old_value, new_value, performed_by, reason)
VALUES (:r, :action, :reference, CAST(:old AS jsonb), CAST(:new AS jsonb), :actor, :reason)
"""
)


class UnknownRetailer(ApplicationError):
    def __init__(self, retailer_id: int) -> None:
        super().__init__(f"no retailer {retailer_id}", type="UnknownRetailer", non_retryable=True)


def _json(value: dict) -> str:
    return json.dumps(value, default=str)


async def _audit_allocations(conn: AsyncConnection, rows: list[Any], audit: dict[str, Any], source: str) -> None:
    for row in rows:
        await conn.execute(
            AUDIT,
            audit
            | {
                "action": "debit_cleared" if row.status == "CLEARED" else "debit_partially_paid",
                "old": _json({"debit_id": row.id, "cleared_amount": row.cleared_before}),
                "new": _json({"debit_id": row.id, "cleared_amount": row.cleared_amount, "status": row.status}),
                "reason": f"allocated {row.allocated} of {source}",
            },
        )


async def apply_credit_balance(conn: AsyncConnection, retailer_id: int, *, actor: str, reference: str) -> list[DebitAllocation]:
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
        audit = {"r": retailer_id, "reference": reference, "actor": actor}
        await _audit_allocations(conn, rows, audit, f"the credit balance ({credit.reference})")
        cleared += [DebitAllocation(debit_id=row.id, allocated=row.allocated, status=row.status) for row in rows]
    if cleared:
        await conn.execute(REFRESH_AVAILABLE, {"r": retailer_id})
    return cleared


async def credit_balance(conn: AsyncConnection, retailer_id: int) -> Decimal:
    return Decimal(await conn.scalar(CREDIT_BALANCE, {"r": retailer_id}))


async def record_payment(engine: AsyncEngine, payment: RecordPayment) -> PaymentRecorded:
    async with engine.begin() as conn:
        return await record_credit(conn, payment, notes=f"payment recorded by {payment.actor}", action="payment_recorded")


async def record_credit(
    conn: AsyncConnection, payment: RecordPayment, *, notes: str, action: str, reason: str | None = None
) -> PaymentRecorded:
    """A CREDIT (a payment, or an adjustment in the retailer's favour) allocated oldest debits first;
    what is left stays on the CREDIT as credit balance. Idempotent by (retailer, reference)."""
    if await conn.scalar(LOCK_RETAILER, {"r": payment.retailer_id}) is None:
        raise UnknownRetailer(payment.retailer_id)
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
    audit = {"r": payment.retailer_id, "reference": payment.reference, "actor": payment.actor}
    await conn.execute(
        AUDIT,
        audit
        | {
            "action": action,
            "old": None,
            "new": _json({
                "amount": payment.amount, "allocated": allocated, "credit_balance_added": payment.amount - allocated,
                "credit_transaction_id": credit_id,
            }),
            "reason": reason,
        },
    )
    await _audit_allocations(conn, rows, audit, f"payment {payment.reference}")
    return PaymentRecorded(
        retailer_id=payment.retailer_id,
        reference=payment.reference,
        amount=payment.amount,
        credit_transaction_id=credit_id,
        allocations=[DebitAllocation(debit_id=row.id, allocated=row.allocated, status=row.status) for row in rows],
        unallocated=payment.amount - allocated,
    )


@dataclass
class PaymentRecordingActivities:
    engine: AsyncEngine

    @activity.defn(name="credit_record_payment")
    async def record(self, payment: RecordPayment) -> PaymentRecorded:
        return await record_payment(self.engine, payment)
