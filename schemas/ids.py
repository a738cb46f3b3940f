"""Workflow ids: the business key of each durable job, built in one place.

The starter, the signaller, the sweep that asks whether a clock is running and the tests must
agree on an id to the character, so each kind has one function here. Scheduled runs get their ids
from their schedule (`workers/families/`): Temporal appends the scheduled time.
"""

from __future__ import annotations

from datetime import date


def pending_order(order_id: int) -> str:
    """An order's 24-hour clock (docs/ARCHITECTURE.md §4)."""
    return f"pending-order/{order_id}"


def loyalty_reconcile(item_id: int) -> str:
    """The reconciliation of one failed points application (a queue item)."""
    return f"loyalty-reconcile/{item_id}"


def loyalty_audit(audit_date: date) -> str:
    """An audit run by hand for a day; a second run of the same day joins it."""
    return f"loyalty-audit/{audit_date.isoformat()}"


def churn_case(case_id: int) -> str:
    """A churn case, started with signal-with-start semantics."""
    return f"churn-case/{case_id}"


def payment(retailer_id: int, reference: str) -> str:
    """A recorded payment: references are unique per retailer, so the same retailer and reference
    twice records once, and another retailer's same reference is its own payment."""
    return f"payment/{retailer_id}/{reference}"


def guardrails_recheck(retailer_id: int, reference: str) -> str:
    """One retailer's guardrails re-checked after an adjustment (`reference`); a repeat joins it."""
    return f"credit-guardrails/{retailer_id}/{reference}"


def credit_admin_notice(audit_id: int) -> str:
    """The message telling a retailer of an admin's pause, unpause or block: one per audit row,
    so a repeated start (a retried request) joins or finds the first and sends nothing twice."""
    return f"credit-admin-notice/{audit_id}"


def insights(insight_date: date) -> str:
    """An insight regeneration started by hand for a date."""
    return f"insights/{insight_date.isoformat()}"


def event_delivery(subscription_id: int) -> str:
    """One outbound-event subscription's delivery run (long-lived, continues as new)."""
    return f"event-delivery/{subscription_id}"
