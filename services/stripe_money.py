"""Every Stripe event that moves a retailer's money reaches the one credit ledger (issue #32).

An event is only a hint: each handler re-reads the object at Stripe through the one gateway and
acts on Stripe's current word, so a late, repeated or forged event never undoes a newer state
and never books twice (the ledger's references make each write once).

- `checkout.session.completed`, `.async_payment_succeeded`, `.async_payment_failed`: one rule.
  The session paid at Stripe → the payment is recorded (`RecordPaymentWorkflow`, reference the
  session id, so a completed + async_payment_succeeded pair records once). Completed but unpaid
  (a delayed method such as a bank debit) or failed → nothing is booked; the pay link reads the
  session's PaymentIntent itself and says "processing", or offers a new session after a failure.
- `payment_intent.succeeded`: a pay link's PaymentIntent of before the Checkout Sessions. Booked
  only if jobctl made it (our metadata: `retailer_id` and `payment_link_key`; the retailer's
  Stripe customer), it succeeded and is in the retailer's account currency. An intent without a
  `retailer_id` (a Checkout Session's own, a loyalty order's) is none of the credit's business.
- `charge.refunded`: the charge's cumulative `amount_refunded` is given back
  (`ledger.refund_payment`), then the retailer's guardrails run again (a refund can put it back
  past its limits); a fully refunded loyalty order's points are reversed.
- `charge.dispute.created` / `.closed` (one rule, by the dispute's status now): open → the
  payment is flagged (and the retailer paused, PAUSE_ON_DISPUTE); won → the flag cleared; lost →
  the disputed amount given back as a refund is, then the flag cleared and the guardrails run.

An event about something jobctl never made (a charge of no payment we recorded, a session or
intent Stripe does not know, a claim Stripe contradicts), in another currency than the retailer's
credit account's (`credit_accounts.currency`), or with a negative amount is refused:
`StripeEventRefused`, which the receiver records as failed and answers 2xx (Stripe stops
retrying), with a log line saying why. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError

from activities.credit import returns
from activities.credit.ledger import PaymentReturned, RefundExceedsPayment
from activities.loyalty import ledger as loyalty_ledger
from activities.loyalty.queue import order_of_payment_intent
from activities.payments.gateway import StripeGateway, from_minor_units
from config.settings import Settings
from schemas.credit import RecordPayment
from schemas.errors import Refused
from schemas.payments import StripeCharge
from services import StripeHandler

log = structlog.get_logger(__name__)

CLOSED_WON = frozenset({"won", "warning_closed"})
ACCOUNT_CURRENCY = text("SELECT lower(currency) FROM credit_accounts WHERE retailer_id = :r")
"""A dispute that closed in the retailer's favour (or an inquiry that ended): nothing was taken."""
LOYALTY_CUSTOMER_META, LOYALTY_ORDER_META = "loyalty_customer_id", "loyalty_order_id"
"""What a shop's checkout puts on a loyalty order's PaymentIntent (or the order is found in the
loyalty reconciliation queue by its intent)."""


class StripeEventRefused(Refused):
    """A signed event jobctl must not act on: recorded as failed, answered 2xx, nothing written."""


def _refuse(event: str, message: str, **ids: Any) -> StripeEventRefused:
    log.warning(event, reason=message, **ids)
    return StripeEventRefused(message)


async def _at_stripe(read: Any, what: str, **ids: Any) -> Any:
    """A gateway read; a 404 or other permanent answer is a refusal, anything else a 5xx (Stripe retries)."""
    try:
        return await read
    except ApplicationError as error:
        if not error.non_retryable:
            raise
        raise _refuse("credit.stripe_object_unknown", f"{what} is unknown at Stripe ({error.type})", **ids) from None


StartPayment = Callable[[RecordPayment], Awaitable[str]]
"""Starts (or joins) `payment/{retailer}/{reference}`; its workflow id."""
StartRecheck = Callable[[int, str], Awaitable[str]]
"""(retailer id, reference): starts that retailer's guardrails check; its workflow id."""


def stripe_money_handlers(
    settings: Settings,
    *,
    stripe: StripeGateway | None,
    engine: AsyncEngine | None,
    start_payment: StartPayment,
    start_recheck: StartRecheck,
) -> dict[str, StripeHandler]:
    """The credit family's Stripe handlers (`services.credit.stripe_handlers` passes how a payment
    and a guardrails check start). Without `engine` (a caller that only records Checkout Sessions'
    payments) the PaymentIntent, refund and dispute handlers are left out: each reads our database."""
    currency = settings.credit_currency

    def gateway() -> StripeGateway:
        if stripe is None:  # a 5xx: Stripe delivers again once the receiver can ask it
            raise RuntimeError("STRIPE_SECRET_KEY is not set: a Stripe event cannot be verified")
        return stripe

    def today() -> date:
        return datetime.now(ZoneInfo(settings.business_timezone)).date()

    async def check_currency(in_currency: str, retailer_id: int, what: str, **ids: Any) -> None:
        """The retailer's credit account's currency (issue #35; CREDIT_CURRENCY without an account)."""
        expected = currency
        if engine is not None:
            async with engine.connect() as conn:
                stored = await conn.scalar(ACCOUNT_CURRENCY, {"r": retailer_id})
            expected = stored or currency
        if in_currency != expected:
            raise _refuse("credit.stripe_currency_refused", f"{what} is in {in_currency!r}, not {expected!r}", **ids)

    async def amount_of(minor: int, in_currency: str, retailer_id: int, what: str, **ids: Any) -> Decimal:
        await check_currency(in_currency, retailer_id, what, **ids)
        if minor < 0:
            raise _refuse("credit.stripe_amount_refused", f"{what} has a negative amount ({minor})", **ids)
        return from_minor_units(minor, in_currency)

    async def record(retailer_id: int, amount: Decimal, reference: str, intent_id: str | None, kind: str) -> None:
        payment = RecordPayment(
            retailer_id=retailer_id,
            amount=amount,
            reference=reference,
            actor="stripe",
            business_timezone=settings.business_timezone,
            messaging_task_queue=settings.messaging_task_queue,
            stripe_payment_intent_id=intent_id,
        )
        workflow_id = await start_payment(payment)
        log.info("credit.payment_started", workflow_id=workflow_id, retailer_id=retailer_id, kind=kind)

    async def recheck(retailer_id: int, reference: str) -> None:
        workflow_id = await start_recheck(retailer_id, reference)
        log.info("credit.guardrails_recheck_started", workflow_id=workflow_id, retailer_id=retailer_id)

    # -- payments ----------------------------------------------------------------------------

    async def checkout_event(event: dict[str, Any]) -> None:
        session = event.get("data", {}).get("object", {})
        session_id, claimed = str(session.get("id")), str((session.get("metadata") or {}).get("retailer_id", ""))
        if session.get("mode") != "payment" or not claimed.isdigit() or int(claimed) < 1:
            log.info("credit.checkout_not_for_a_retailer", checkout_session_id=session_id)
            return
        ids = {"checkout_session_id": session_id, "event_type": event.get("type")}
        current = await _at_stripe(gateway().checkout_session(session_id, int(claimed)), "the session", **ids)
        if current.metadata.get("retailer_id") != claimed:
            raise _refuse("credit.checkout_retailer_mismatch", "Stripe's session names another retailer", **ids)
        if current.payment_status == "paid":
            await check_currency(current.currency, int(claimed), "the session", **ids)
            amount = current.amount
            if amount <= 0:
                raise _refuse("credit.payment_without_amount", "a paid session without an amount", **ids)
            await record(int(claimed), amount, session_id, current.payment_intent_id, "checkout_session")
        elif current.status == "complete":  # a delayed method: processing, or failed; nothing to book
            log.info("credit.checkout_not_paid_yet", payment_status=current.payment_status, **ids)
        else:
            log.warning("credit.checkout_not_paid_at_stripe", status=current.status, **ids)

    async def payment_succeeded(event: dict[str, Any]) -> None:
        intent_id = str(event.get("data", {}).get("object", {}).get("id"))
        claimed = str((event.get("data", {}).get("object", {}).get("metadata") or {}).get("retailer_id", ""))
        if not claimed:  # a Checkout Session's own intent, a loyalty order's: not a pay link's
            log.info("credit.payment_intent_not_a_pay_link", payment_intent_id=intent_id)
            return
        ids = {"payment_intent_id": intent_id}
        intent = await _at_stripe(gateway().payment_intent(intent_id), "the PaymentIntent", **ids)
        retailer = intent.metadata.get("retailer_id", "")
        if retailer != claimed or not retailer.isdigit() or "payment_link_key" not in intent.metadata:
            raise _refuse("credit.payment_intent_not_ours", "not a PaymentIntent jobctl made", **ids)
        if intent.status != "succeeded":
            log.warning("credit.payment_intent_not_succeeded", status=intent.status, **ids)
            return
        assert engine is not None  # registered only with one
        exists, customer = await returns.retailer_customer(engine, int(retailer))
        if not exists:
            raise _refuse("credit.payment_intent_not_ours", f"retailer {retailer} is unknown", **ids)
        if not customer or intent.customer != customer:
            raise _refuse("credit.payment_intent_not_ours", "the intent's customer is not the retailer's", **ids)
        amount = await amount_of(
            intent.amount_received or intent.amount, intent.currency, int(retailer), "the PaymentIntent", **ids
        )
        if amount <= 0:
            raise _refuse("credit.payment_without_amount", "a succeeded intent without an amount", **ids)
        await record(int(retailer), amount, intent_id, intent_id, "payment_intent")

    handlers: dict[str, StripeHandler] = {
        "checkout.session.completed": checkout_event,
        "checkout.session.async_payment_succeeded": checkout_event,
        "checkout.session.async_payment_failed": checkout_event,
    }
    if engine is None:
        return handlers
    handlers["payment_intent.succeeded"] = payment_succeeded  # checks the retailer's customer in our database

    # -- refunds -----------------------------------------------------------------------------

    async def loyalty_order(charge: StripeCharge) -> tuple[int, str] | None:
        assert charge.payment_intent
        found = await order_of_payment_intent(engine, charge.payment_intent)
        if found is not None:
            return found
        intent = await _at_stripe(
            gateway().payment_intent(charge.payment_intent), "the PaymentIntent", charge_id=charge.id
        )
        customer, order = intent.metadata.get(LOYALTY_CUSTOMER_META, ""), intent.metadata.get(LOYALTY_ORDER_META)
        return (int(customer), order) if customer.isdigit() and order else None

    async def give_back(
        payment: returns.Payment, kind: str, stripe_id: str, total: Decimal, **ids: Any
    ) -> PaymentReturned:
        try:
            return await returns.book_refund(
                engine, payment, kind=kind, stripe_id=stripe_id, total=total, today=today()
            )
        except RefundExceedsPayment as error:
            raise _refuse(
                "credit.refund_exceeds_payment", error.message, retailer_id=payment.retailer_id, **ids
            ) from None

    async def charge_refunded(event: dict[str, Any]) -> None:
        charge_id = str(event.get("data", {}).get("object", {}).get("id"))
        ids = {"charge_id": charge_id}
        charge: StripeCharge = await _at_stripe(gateway().charge(charge_id), "the charge", **ids)
        if charge.amount < 0 or charge.amount_refunded < 0:
            raise _refuse("credit.stripe_amount_refused", "the charge has a negative amount", **ids)
        if not charge.payment_intent:
            raise _refuse("credit.charge_not_ours", "a charge of no PaymentIntent jobctl knows", **ids)
        payment = await returns.find_payment(engine, charge.payment_intent)
        if payment is not None:
            total = await amount_of(charge.amount_refunded, charge.currency, payment.retailer_id, "the refund", **ids)
            if total == 0:
                log.info("credit.refund_nothing_refunded", **ids)
                return
            booked = await give_back(payment, "refund", charge.id, total, **ids)
            await recheck(payment.retailer_id, booked.reference)
            return
        order = await loyalty_order(charge)
        if order is None:
            raise _refuse("credit.charge_not_ours", "no payment or loyalty order jobctl knows was paid by it", **ids)
        if not charge.refunded:
            log.info("loyalty.partial_refund_keeps_points", customer_id=order[0], order_id=order[1], **ids)
            return
        try:
            await loyalty_ledger.reverse_points_on_refund(engine, order[0], order[1])
        except ApplicationError as error:
            if not error.non_retryable:
                raise
            raise _refuse("loyalty.refund_reversal_refused", error.message, customer_id=order[0], **ids) from None

    # -- disputes ----------------------------------------------------------------------------

    async def dispute_event(event: dict[str, Any]) -> None:
        dispute_id = str(event.get("data", {}).get("object", {}).get("id"))
        ids = {"dispute_id": dispute_id, "event_type": event.get("type")}
        dispute = await _at_stripe(gateway().dispute(dispute_id), "the dispute", **ids)
        intent = dispute.payment_intent
        if not intent and dispute.charge:
            intent = (await _at_stripe(gateway().charge(dispute.charge), "the charge", **ids)).payment_intent
        payment = await returns.find_payment(engine, intent) if intent else None
        if payment is None:
            raise _refuse("credit.dispute_not_ours", "a dispute of no payment jobctl recorded", **ids)
        disputed = await amount_of(dispute.amount, dispute.currency, payment.retailer_id, "the dispute", **ids)
        if dispute.status in CLOSED_WON:
            await returns.close_dispute(engine, payment, dispute.id, dispute.status)
        elif dispute.status == "lost":
            booked = await give_back(payment, "dispute_lost", dispute.id, disputed, **ids)
            await returns.close_dispute(engine, payment, dispute.id, dispute.status)
            await recheck(payment.retailer_id, booked.reference)
        else:
            await returns.flag_dispute(engine, payment, dispute.id, pause=settings.pause_on_dispute)

    handlers |= {
        "charge.refunded": charge_refunded,
        "charge.dispute.created": dispute_event,
        "charge.dispute.closed": dispute_event,
    }
    return handlers
