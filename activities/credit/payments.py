"""Recording a payment: one CREDIT transaction, allocated to the oldest open debits first.

One DB transaction locks the retailer's row (payments of one retailer allocate one at a time),
inserts the CREDIT under its unique (retailer, type, reference) key (a second recording of the
same reference changes nothing), clears debits oldest due date first (a partial payment leaves
PARTIALLY_PAID with `cleared_amount`), recomputes `available_credit`, and writes the audit rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from schemas.credit import DebitAllocation, PaymentRecorded, RecordPayment

LOCK_RETAILER = text("SELECT id FROM retailers WHERE id = :r FOR UPDATE")

INSERT_CREDIT = text(
    """
INSERT INTO credit_transactions (retailer_id, type, amount, cleared_amount, status, cleared_at, reference, notes)
VALUES (:r, 'CREDIT', :amount, :amount, 'CLEARED', now(), :reference, :notes)
ON CONFLICT (retailer_id, type, reference) DO NOTHING
RETURNING id
"""
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
SET available_credit = ca.credit_limit - COALESCE(
        (SELECT sum(amount - cleared_amount) FROM credit_transactions
         WHERE retailer_id = :r AND type = 'DEBIT' AND status <> 'CLEARED'), 0)
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


async def record_payment(engine: AsyncEngine, payment: RecordPayment) -> PaymentRecorded:
    async with engine.begin() as conn:
        if await conn.scalar(LOCK_RETAILER, {"r": payment.retailer_id}) is None:
            raise UnknownRetailer(payment.retailer_id)
        params = {"r": payment.retailer_id, "amount": payment.amount, "reference": payment.reference}
        credit_id = await conn.scalar(INSERT_CREDIT, params | {"notes": f"payment recorded by {payment.actor}"})
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
        await conn.execute(REFRESH_AVAILABLE, {"r": payment.retailer_id})
        allocated = sum((row.allocated for row in rows), Decimal("0"))
        audit = {"r": payment.retailer_id, "reference": payment.reference, "actor": payment.actor}
        await conn.execute(
            AUDIT,
            audit
            | {
                "action": "payment_recorded",
                "old": None,
                "new": _json({"amount": payment.amount, "allocated": allocated, "credit_transaction_id": credit_id}),
                "reason": None,
            },
        )
        for row in rows:
            await conn.execute(
                AUDIT,
                audit
                | {
                    "action": "debit_cleared" if row.status == "CLEARED" else "debit_partially_paid",
                    "old": _json({"debit_id": row.id, "cleared_amount": row.cleared_before}),
                    "new": _json({"debit_id": row.id, "cleared_amount": row.cleared_amount, "status": row.status}),
                    "reason": f"allocated {row.allocated} of payment {payment.reference}",
                },
            )
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
