"""Recording a payment: one CREDIT transaction, allocated to the oldest open debits first.

One DB transaction locks the retailer's row (payments of one retailer allocate one at a time),
inserts the CREDIT under its unique (retailer, type, reference) key (a second recording of the
same reference changes nothing), clears debits oldest due date first (a partial payment leaves
PARTIALLY_PAID with `cleared_amount`), recomputes `available_credit`, and writes the audit rows:
`ledger.record_credit`, which an adjustment in the retailer's favour uses too.

The credit balance is the ledger itself: a CREDIT's `cleared_amount` is how much of it has been
applied to debits, so a CREDIT not yet CLEARED holds money paid ahead (an overpayment, a second
payment, a return). `ledger.apply_credit_balance` spends those, oldest first, on open debits;
whoever writes a DEBIT calls it in the same transaction, so the balance clears the next debits as
they arrive. Open debits and an unspent balance therefore never sit side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from activities.credit import ledger
from schemas.credit import PaymentRecorded, RecordPayment


async def record_payment(engine: AsyncEngine, payment: RecordPayment) -> PaymentRecorded:
    async with engine.begin() as conn:
        return await ledger.record_credit(
            conn, payment, notes=f"payment recorded by {payment.actor}", action="payment_recorded"
        )


@dataclass
class PaymentRecordingActivities:
    engine: AsyncEngine

    @activity.defn(name="credit_record_payment")
    async def record(self, payment: RecordPayment) -> PaymentRecorded:
        return await record_payment(self.engine, payment)
