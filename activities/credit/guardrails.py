"""Credit guardrails: pause retailers past their limits, lift the pauses the system made.

One statement per run decides, changes and audits (docs/ARCHITECTURE.md §5): a retailer with a debit
overdue more than `max_outstanding_days`, or outstanding above `credit_limit`, goes from ACTIVE to
PAUSED; a retailer the *system* paused whose conditions no longer hold goes back to ACTIVE. Admin
pauses and blocks are never in scope. The audit row is written by the same statement as the change
(its INSERT is the credit ledger's `audit_rows`).

The activity returns every change carrying its reference (this run's, or this payment's), not just
the ones this attempt made: a retry after a lost completion still messages each retailer once (the
audit row's id is the message's idempotency key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity

from activities.credit.ledger import audit_rows
from schemas.credit import GuardrailChange, GuardrailsCheck
from schemas.errors import Refused

APPLY_GUARDRAILS = text(
    f"""
WITH scope AS (
    SELECT r.id, ca.credit_limit, ca.max_outstanding_days,
           COALESCE(sum(d.amount - d.cleared_amount), 0) AS outstanding,
           max(CAST(:day AS date) - d.due_date) AS max_days_overdue
    FROM retailers r
    JOIN credit_accounts ca ON ca.retailer_id = r.id
    LEFT JOIN credit_transactions d ON d.retailer_id = r.id AND d.type = 'DEBIT' AND d.status <> 'CLEARED'
    WHERE (r.credit_status = 'ACTIVE' OR (r.credit_status = 'PAUSED' AND r.paused_by = 'system'))
      AND (CAST(:ids AS bigint[]) IS NULL OR r.id = ANY(CAST(:ids AS bigint[])))
    GROUP BY r.id, ca.retailer_id
), decided AS (
    SELECT id, outstanding,
           CASE WHEN max_days_overdue > max_outstanding_days
                     THEN 'a debit is ' || max_days_overdue || ' days overdue (limit ' || max_outstanding_days || ')'
                WHEN outstanding > credit_limit THEN 'outstanding above the credit limit'
           END AS reason
    FROM scope
), changed AS (
    UPDATE retailers r
    SET credit_status = CASE WHEN d.reason IS NULL THEN 'ACTIVE' ELSE 'PAUSED' END,
        credit_paused_at = CASE WHEN d.reason IS NULL THEN NULL ELSE now() END,
        credit_pause_reason = d.reason,
        paused_by = CASE WHEN d.reason IS NULL THEN NULL ELSE 'system' END
    FROM decided d
    WHERE r.id = d.id
      AND ((d.reason IS NOT NULL AND r.credit_status = 'ACTIVE')
           OR (d.reason IS NULL AND r.credit_status = 'PAUSED' AND r.paused_by = 'system'))
    RETURNING r.id, r.credit_status, d.reason, d.outstanding
)
{
        audit_rows(
            "changed",
            retailer_id="id",
            action="CASE credit_status WHEN 'PAUSED' THEN 'credit_paused' ELSE 'credit_resumed' END",
            reference=":reference",
            old="jsonb_build_object('credit_status', CASE credit_status WHEN 'PAUSED' THEN 'ACTIVE' ELSE 'PAUSED' END)",
            new="jsonb_build_object('credit_status', credit_status, 'outstanding', outstanding)",
            performed_by="'system'",
            reason="COALESCE(reason, 'no pause condition holds any more')",
        )
    }
"""
)

CHANGES_OF = text(
    """
SELECT id, retailer_id, action, reason, CAST(new_value ->> 'outstanding' AS numeric) AS outstanding
FROM audit_log
WHERE reference = :reference AND action IN ('credit_paused', 'credit_resumed') AND performed_by = 'system'
  AND (CAST(:ids AS bigint[]) IS NULL OR retailer_id = ANY(CAST(:ids AS bigint[])))
ORDER BY id
"""
)


def run_reference(check: GuardrailsCheck) -> str:
    return check.reference or f"guardrails:{check.check_date.isoformat()}"


async def apply_guardrails(conn: AsyncConnection, day: date, reference: str, retailer_ids: list[int] | None) -> None:
    await conn.execute(APPLY_GUARDRAILS, {"day": day, "ids": retailer_ids, "reference": reference})


@dataclass
class GuardrailActivities:
    engine: AsyncEngine

    @activity.defn(name="credit_apply_guardrails")
    async def apply(self, check: GuardrailsCheck) -> list[GuardrailChange]:
        reference = run_reference(check)
        async with self.engine.begin() as conn:
            await apply_guardrails(conn, check.check_date, reference, check.retailer_ids)
            rows = (await conn.execute(CHANGES_OF, {"reference": reference, "ids": check.retailer_ids})).all()
        return [
            GuardrailChange(
                retailer_id=row.retailer_id,
                change="paused" if row.action == "credit_paused" else "resumed",
                audit_id=row.id,
                reason=row.reason if row.action == "credit_paused" else None,
                amount_due=row.outstanding or Decimal("0"),
            )
            for row in rows
        ]


# --- placing an order --------------------------------------------------------------------------


class PlacementRefused(Refused):
    """Why an order cannot be placed this way; the message is for the retailer's screen."""


@dataclass(frozen=True)
class CreditPosition:
    credit_status: str
    available_credit: Decimal
    max_order_value: Decimal | None
    currency: str = "USD"
    """The account's (ISO 4217): a refusal's amounts are written in it, for the retailer's screen."""
    locale: str | None = None

    def money(self, amount: Decimal) -> str:
        """`amount` as the retailer reads it (`₹1,00,000.00`, `1.234,56 €`)."""
        from schemas.money import format_money

        return format_money(amount, self.currency, self.locale)


def validate_order_placement(position: CreditPosition, amount: Decimal, payment_mode: str) -> None:
    """The seed's rules: COD always (even while paused); CREDIT only when ACTIVE and within limits.

    Raises `PlacementRefused` with the reason; returns None when the order may be placed.
    """
    if amount <= 0:
        raise PlacementRefused("the order amount must be positive", code="validation_error")
    if payment_mode == "COD":
        if position.credit_status == "BLOCKED":
            raise PlacementRefused("this account is blocked", code="account_blocked")
        return
    if payment_mode != "CREDIT":
        raise PlacementRefused(f"unknown payment mode {payment_mode!r} (CREDIT or COD)", code="validation_error")
    if position.credit_status == "PAUSED":
        raise PlacementRefused(
            "credit is paused: pay cash on delivery, or settle overdue invoices to reopen credit", code="credit_paused"
        )
    if position.credit_status == "BLOCKED":
        raise PlacementRefused("this account is blocked", code="account_blocked")
    if position.max_order_value is not None and amount > position.max_order_value:
        raise PlacementRefused(
            f"the order exceeds the maximum order value of {position.money(position.max_order_value)}",
            code="over_max_order_value",
        )
    if amount > position.available_credit:
        raise PlacementRefused(
            f"the order exceeds the available credit of {position.money(position.available_credit)}",
            code="over_credit_limit",
        )


async def credit_position(engine: AsyncEngine, retailer_id: int) -> CreditPosition | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT r.credit_status, ca.available_credit, ca.max_order_value, ca.currency, r.locale"
                    " FROM retailers r"
                    " JOIN credit_accounts ca ON ca.retailer_id = r.id WHERE r.id = :r"
                ),
                {"r": retailer_id},
            )
        ).first()
    if row is None:
        return None
    return CreditPosition(
        row.credit_status, row.available_credit, row.max_order_value, currency=row.currency, locale=row.locale
    )
