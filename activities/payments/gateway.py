"""The Stripe gateway: the only code that calls Stripe (customers, Checkout Sessions, trial
extensions, cancellations, PaymentIntent status, and the re-reads of the money events: a
PaymentIntent, a Charge, a Dispute).

A process builds one ``StripeGateway`` (``open_stripe_gateway``: the worker, the webhook receiver
and the HTTP API, each at startup) around the one ``stripe.StripeClient`` that
``activities/payments/client.py`` makes, and closes it when it stops. The Temporal activities
(``activities.py``), the pay route (``activities/credit/paylinks.py``), the reminders and the
webhook's handlers all call it; none of them holds a client.

Retries. Temporal retries the activities (and the pay links pace their own retries); Stripe must
not see a retry as a new request. Every mutating call carries an ``Idempotency-Key`` built from
business ids only, and the parameters of a retried call are the same as the first attempt's, so
Stripe (and the dev/test sandbox, ``devtools/stripe_sandbox.py``) replays the first answer instead
of creating a second object:

- ``customer:{owner_type}:{owner_id}``                  customer creation (metadata {owner_type, owner_id})
- ``customer:{owner_type}:{owner_id}:replaces:{stale id}``  re-creating a customer Stripe lost
- ``payment-link:{request key}``                       a Checkout Session (a pay link's, when clicked)
- ``payment-link-expire:{session id}``                 expiring a Checkout Session that was replaced
- ``subscription-extend:{membership_id}:{request key}``  a trial extension
- ``subscription-cancel:{membership_id}:{request key}``  a cancellation (now, or at period end)
- ``manage-link:{membership_id}:{click uuid}``       a customer-portal session, when a nudge's link is opened

A customer-portal session (``billing_portal_session``) is made when the member opens the stable
manage link of a churn nudge (``GET /manage/{token}``), one per click: the session is short-lived,
so it is never made at send time, and a replayed one (same key) may already have expired.

Stripe keeps keys for 24 h, far longer than any retry schedule we use. The Stripe customer id is
stored on the owner's row once created, so later calls never create again.

Checkout Sessions. A pay link's session is a Stripe Checkout Session in payment mode: one line
item per debit, the retailer and debit ids in metadata, ``url`` the Stripe-hosted page,
``checkout.session.completed`` the signed event once paid. (The keys above keep their
``payment-link`` prefix: Stripe holds them for 24 h, so a rename would make a retry across a
deploy a second session.) Real Stripe and the dev sandbox both do it (localstripe 1.15 has no
Checkout, so the sandbox front implements the subset, ``devtools/stripe_checkout.py``, pay page
included). A session lives at most 24
hours at Stripe (its default expiry, left as is so a retry sends the same parameters); who reuses,
replaces and expires sessions is the pay links' business (``activities/credit/paylinks.py``:
the session is made when the retailer opens jobctl's ``/pay/{token}``).
A stored customer Stripe no longer knows (404 ``resource_missing``, e.g. a dev sandbox that lost
its data, or a customer deleted in the dashboard) is created again once, under a key naming the
stale id, and the new id replaces the old on the owner's row.

Trial extension ("coupon or trial extension"): ``trial_end`` moves by N days from the current trial
end, or from the end of the paid period when the subscription is not in a trial (the member keeps
what they paid for and gets N free days after it). Coupons are not supported: localstripe answers
500 to a coupon on a subscription. Outside a trial the update also sends
``proration_behavior=none`` (real Stripe would otherwise credit the unused paid time); inside a
trial there is nothing to prorate and the parameter is left out, which is also all localstripe
accepts (it answers 500 to ``proration_behavior`` on an update, so in dev only subscriptions in a
trial can be extended). A retry after Stripe already applied the extension must not extend twice:
the update records the key in the subscription's metadata (real Stripe), and a retry whose newly
computed ``trial_end`` differs from the first attempt's gets Stripe's ``idempotency_error`` for
the key, which here means "this extension was applied already" (localstripe ignores metadata on
subscription updates, so in dev that is how a retry is recognised).

Errors (``stripe_errors``). ``stripe.CardError`` → non-retryable ``CardDeclined``; InvalidRequest /
Authentication / Permission / Idempotency errors → non-retryable ``StripeInvalidRequest`` / ``StripeAuthentication``
/ ``StripePermission`` / ``IdempotencyKeyReused``; connection errors, rate limits and other API
errors (409 in-flight conflicts, 5xx) → retryable ``StripeUnavailable``. Bad amounts →
``InvalidAmount``. Nothing sent to Stripe or put in a payload, result or error names a person:
customers are created with metadata only, so Stripe's messages cannot echo a name or e-mail either.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

import stripe
import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError

from activities.errors import permanent
from activities.payments.client import close_stripe_client, stripe_client
from activities.tracing import provider_call
from schemas.money import STRIPE_THREE_DECIMAL, STRIPE_ZERO_DECIMAL, stripe_checkout_locale
from schemas.payments import (
    CancelSubscription,
    CheckoutSession,
    CheckoutSessionLine,
    CheckoutSessionRequest,
    ExtendSubscription,
    OwnerType,
    PaymentIntentState,
    PaymentIntentStatus,
    StripeCharge,
    StripeCustomer,
    StripeDispute,
    StripePaymentIntent,
    SubscriptionCancellation,
    SubscriptionPeriod,
    SubscriptionState,
    SubscriptionStateRequest,
)
from schemas.tables import Company, Customer, Membership, Retailer

if TYPE_CHECKING:
    from stripe.params import RefundListParams, SubscriptionUpdateParams
    from stripe.params.checkout import SessionCreateParams, SessionCreateParamsLineItem

    from config.settings import Settings

log = structlog.get_logger(__name__)

# Stripe's decimals per currency: one table, `schemas/money.py`.
ZERO_DECIMAL_CURRENCIES: Final = STRIPE_ZERO_DECIMAL
THREE_DECIMAL_CURRENCIES: Final = STRIPE_THREE_DECIMAL
MAX_MINOR_UNITS: Final = 99_999_999  # Stripe's maximum charge amount (8 digits of minor units)
DAY_S: Final = 86_400
EXTENSION_KEY_META: Final = "jobctl_extension_key"
EXTENSION_END_META: Final = "jobctl_extension_trial_end"
COUNTED_REFUND_STATUSES: Final = frozenset({"succeeded", "pending", "requires_action"})

_OWNER_TABLES: Final[dict[str, type[Retailer] | type[Membership] | type[Customer]]] = {
    "retailer": Retailer,
    "member": Membership,
    "customer": Customer,
}


# --- errors ------------------------------------------------------------------------------------


def _translate(exc: stripe.StripeError, operation: str) -> ApplicationError:
    """A Stripe SDK error as the ApplicationError Temporal's retry policy understands."""
    details: dict[str, Any] = {
        "operation": operation,
        "http_status": exc.http_status,
        "code": exc.code,
        "request_id": exc.request_id,
    }
    summary = f"{operation}: Stripe answered {exc.http_status or 'nothing'}"
    reason = exc.user_message or type(exc).__name__
    if isinstance(exc, stripe.CardError):
        decline_code = getattr(exc.error, "decline_code", None) if exc.error else None
        message = f"{operation}: card declined ({exc.code})"
        return permanent("CardDeclined", message, **details, decline_code=decline_code)
    if isinstance(exc, stripe.IdempotencyError):
        return permanent("IdempotencyKeyReused", f"{summary}: {reason}", **details)
    if isinstance(exc, stripe.InvalidRequestError):
        param = getattr(exc, "param", None)
        return permanent("StripeInvalidRequest", f"{summary}: {reason}", **details, param=param)
    if isinstance(exc, stripe.AuthenticationError):
        return permanent("StripeAuthentication", f"{summary}: the API key was refused", **details)
    if isinstance(exc, stripe.PermissionError):
        return permanent("StripePermission", f"{summary}: the API key may not do this", **details)
    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)):
        return ApplicationError(f"{summary}: {type(exc).__name__}: {reason}", details, type="StripeUnavailable")
    # Anything else the SDK might add: 4xx are the request's fault, the rest may pass.
    if exc.http_status is not None and 400 <= exc.http_status < 500 and exc.http_status not in (409, 429):
        return permanent("StripeError", f"{summary}: {reason}", **details)
    return ApplicationError(f"{summary}: {type(exc).__name__}: {reason}", details, type="StripeUnavailable")


@asynccontextmanager
async def stripe_errors(operation: str, **log_ids: Any) -> AsyncIterator[None]:
    """Turn ``stripe.StripeError`` raised inside into the matching ``ApplicationError``; the call is one
    span (`stripe <operation>`, its HTTP status and error type on failure; never its parameters)."""
    with provider_call("stripe", operation) as span:
        try:
            yield
        except stripe.StripeError as exc:
            if exc.http_status is not None:
                span.set_attribute("http.response.status_code", exc.http_status)
            raise _stripe_failure(exc, operation, log_ids) from None


def _stripe_failure(exc: stripe.StripeError, operation: str, log_ids: dict[str, Any]) -> ApplicationError:
    """The ``ApplicationError`` for `exc`, logged."""
    error = _translate(exc, operation)
    log.warning(
        "stripe.call_failed",
        operation=operation,
        error_type=error.type,
        retryable=not error.non_retryable,
        http_status=exc.http_status,
        code=exc.code,
        request_id=exc.request_id,
        **log_ids,
    )
    return error


# --- money -------------------------------------------------------------------------------------


def currency_exponent(currency: str) -> int:
    if currency in THREE_DECIMAL_CURRENCIES:
        raise permanent("UnsupportedCurrency", f"currency {currency} (three decimals) is not supported")
    return 0 if currency in ZERO_DECIMAL_CURRENCIES else 2


def to_minor_units(amount: Decimal, currency: str) -> int:
    """``Decimal("150.25")`` usd → 15025, exactly; anything that would need rounding is refused."""
    exponent = currency_exponent(currency)
    try:
        if not amount.is_finite():
            raise InvalidOperation
        minor = amount.scaleb(exponent)
        exact = minor == minor.to_integral_value()
    except (InvalidOperation, AttributeError):
        raise permanent("InvalidAmount", "the amount is not a finite decimal number") from None
    if amount <= 0:
        raise permanent("InvalidAmount", f"the amount must be greater than 0, not {amount}")
    if not exact:
        raise permanent("InvalidAmount", f"{amount} {currency} has more than {exponent} decimal places")
    if minor > MAX_MINOR_UNITS:
        raise permanent("InvalidAmount", f"{amount} {currency} is above Stripe's maximum amount")
    return int(minor)


def from_minor_units(minor: int, currency: str) -> Decimal:
    exponent = 0 if currency in ZERO_DECIMAL_CURRENCIES else 2
    return Decimal(minor).scaleb(-exponent) if exponent else Decimal(minor)


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` or None: ``StripeObject`` is not a dict (no ``.get``) since stripe 13."""
    if obj is None:
        return None
    try:
        return obj[key]
    except KeyError:
        return None


def _timestamp(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _period_end(subscription: Any) -> int | None:
    """``current_period_end``: on the subscription (older API versions, localstripe) or, since
    API 2025-03-31, on its items."""
    end = _field(subscription, "current_period_end")
    if end:
        return int(end)
    data = _field(_field(subscription, "items"), "data") or []
    ends = [int(_field(item, "current_period_end")) for item in data if _field(item, "current_period_end")]
    return max(ends) if ends else None


# --- the gateway -------------------------------------------------------------------------------


def open_stripe_gateway(settings: Settings, engine: AsyncEngine) -> StripeGateway | None:
    """The process's one gateway (the sandbox when STRIPE_API_BASE is set), or None when
    STRIPE_SECRET_KEY is not; the caller closes it (``await gateway.close()``) when it stops."""
    if not settings.stripe_secret_key:
        return None
    client = stripe_client(settings.stripe_secret_key.get_secret_value(), settings.stripe_api_base)
    return StripeGateway(client, engine, success_url=settings.pay_page_base_url)


class StripeGateway:
    """Stripe through one injected ``stripe.StripeClient`` (``activities.payments.client.stripe_client``),
    and the Stripe ids we keep on our rows (customers, a membership's period end).

    ``success_url`` (setting ``PAY_PAGE_BASE_URL``, optional): where Stripe sends the payer after
    paying a Checkout Session; without it Stripe's page ends the flow.
    """

    def __init__(self, client: stripe.StripeClient, engine: AsyncEngine, *, success_url: str | None = None) -> None:
        self._client = client
        self._engine = engine
        self._success_url = success_url.rstrip("/") if success_url else None

    async def close(self) -> None:
        """Close the client's HTTP session (once the process no longer calls Stripe)."""
        await close_stripe_client(self._client)

    # -- customers ------------------------------------------------------------------------------

    async def ensure_customer(self, owner_type: OwnerType, owner_id: int) -> StripeCustomer:
        """The owner's Stripe customer, created (once, under ``customer:{owner_type}:{owner_id}``) if
        none is stored on its row. Checkout Sessions call this themselves."""
        customer_id, created, _ = await self._ensure_customer(owner_type, owner_id)
        return StripeCustomer(owner_type=owner_type, owner_id=owner_id, stripe_customer_id=customer_id, created=created)

    async def _owner(self, owner_type: OwnerType, owner_id: int) -> tuple[str | None, str | None]:
        """(stored Stripe customer id, Connect account) of the owner; UnknownOwner when missing."""
        table = _OWNER_TABLES[owner_type]
        async with self._engine.connect() as conn:
            if owner_type == "member":
                row = (
                    await conn.execute(
                        select(Membership.stripe_customer_id, Company.stripe_account_id)
                        .join(Company, Company.id == Membership.company_id)
                        .where(Membership.id == owner_id)
                    )
                ).first()
                found = None if row is None else (row[0], row[1])
            else:
                stored = (await conn.execute(select(table.stripe_customer_id).where(table.id == owner_id))).first()
                found = None if stored is None else (stored[0], None)
        if found is None:
            raise permanent("UnknownOwner", f"no {owner_type} {owner_id}", owner_type=owner_type, owner_id=owner_id)
        return found

    async def _ensure_customer(self, owner_type: OwnerType, owner_id: int) -> tuple[str, bool, str | None]:
        """(Stripe customer id, created now, Connect account)."""
        stored, account = await self._owner(owner_type, owner_id)
        if stored:
            return stored, False, account
        key = f"customer:{owner_type}:{owner_id}"
        async with stripe_errors("ensure_customer", owner_type=owner_type, owner_id=owner_id):
            customer = await self._client.v1.customers.create_async(
                {"metadata": {"owner_type": owner_type, "owner_id": str(owner_id)}}, _options(key, account)
            )
        table = _OWNER_TABLES[owner_type]
        async with self._engine.begin() as conn:
            kept = await conn.scalar(
                update(table)
                .where(table.id == owner_id, table.stripe_customer_id.is_(None))
                .values(stripe_customer_id=customer.id)
                .returning(table.stripe_customer_id)
            )
            if kept is None:  # stored meanwhile (a concurrent call: the same customer, by the key)
                kept = await conn.scalar(select(table.stripe_customer_id).where(table.id == owner_id))
        if kept != customer.id:
            log.warning(
                "stripe.customer_already_stored",
                owner_type=owner_type,
                owner_id=owner_id,
                stored=kept,
                created=customer.id,
            )
            return str(kept), False, account
        replayed = _replayed(customer)
        log.info(
            "stripe.customer_ensured",
            owner_type=owner_type,
            owner_id=owner_id,
            stripe_customer_id=customer.id,
            replayed=replayed,
        )
        return customer.id, not replayed, account

    async def _replace_customer(self, owner_type: OwnerType, owner_id: int, stale: str) -> str:
        """Stripe answered 404 for the stored customer: create it again, once, and store the new id.

        The key names the stale id, so every retry (and a concurrent attempt) gets the one new
        customer; the row changes only while it still holds the stale id."""
        key = f"customer:{owner_type}:{owner_id}:replaces:{stale}"
        _, account = await self._owner(owner_type, owner_id)
        async with stripe_errors("ensure_customer", owner_type=owner_type, owner_id=owner_id):
            customer = await self._client.v1.customers.create_async(
                {"metadata": {"owner_type": owner_type, "owner_id": str(owner_id)}}, _options(key, account)
            )
        table = _OWNER_TABLES[owner_type]
        async with self._engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.id == owner_id, table.stripe_customer_id == stale)
                .values(stripe_customer_id=customer.id)
            )
            kept = await conn.scalar(select(table.stripe_customer_id).where(table.id == owner_id))
        log.warning(
            "stripe.customer_recreated",
            owner_type=owner_type,
            owner_id=owner_id,
            stale_customer_id=stale,
            stripe_customer_id=kept,
            replayed=_replayed(customer),
        )
        return str(kept)

    # -- Checkout Sessions ----------------------------------------------------------------------

    async def create_checkout_session(self, request: CheckoutSessionRequest) -> CheckoutSession:
        """A Checkout Session (payment mode) for the retailer: one line item per request line."""
        minor = to_minor_units(request.amount, request.currency)
        lines = request.lines or [
            CheckoutSessionLine(description=request.description or "Payment", amount=request.amount)
        ]
        line_items: list[SessionCreateParamsLineItem] = [
            {
                "quantity": 1,
                "price_data": {
                    "currency": request.currency,
                    "unit_amount": to_minor_units(line.amount, request.currency),
                    "product_data": {"name": line.description},
                },
            }
            for line in lines
        ]
        if sum(item["price_data"]["unit_amount"] for item in line_items) != minor:
            raise permanent("InvalidAmount", f"the lines do not add up to {request.amount} {request.currency}")
        customer_id, _, account = await self._ensure_customer("retailer", request.retailer_id)
        metadata = {
            **request.metadata,
            "retailer_id": str(request.retailer_id),
            "payment_link_key": request.idempotency_key,
        }
        if request.description:
            metadata["description"] = request.description
        key = f"payment-link:{request.idempotency_key}"

        # No expires_at: Stripe's default (24 h after creation) keeps a retry's parameters the same.
        params: SessionCreateParams = {
            "mode": "payment",
            "customer": customer_id,
            "line_items": line_items,
            "metadata": metadata,
            "client_reference_id": f"retailer-{request.retailer_id}",
        }
        if self._success_url:
            params["success_url"] = self._success_url
        if request.locale:
            params["locale"] = stripe_checkout_locale(request.locale)
        async with stripe_errors("create_payment_link", retailer_id=request.retailer_id, idempotency_key=key):
            try:
                session = await self._client.v1.checkout.sessions.create_async(params, _options(key, account))
            except stripe.InvalidRequestError as exc:
                if exc.code != "resource_missing" or getattr(exc, "param", None) != "customer":
                    raise
                customer_id = await self._replace_customer("retailer", request.retailer_id, customer_id)
                session = await self._client.v1.checkout.sessions.create_async(
                    {**params, "customer": customer_id}, _options(key, account)
                )
        log.info(
            "stripe.payment_link_created",
            retailer_id=request.retailer_id,
            checkout_session_id=session.id,
            amount_minor=minor,
            currency=request.currency,
            idempotency_key=key,
            replayed=_replayed(session),
        )
        return _session(session, customer_id)

    async def checkout_session(self, session_id: str, retailer_id: int) -> CheckoutSession:
        """The retailer's Checkout Session as Stripe has it now (open, complete or expired)."""
        _, account = await self._owner("retailer", retailer_id)
        sessions = self._client.v1.checkout.sessions
        async with stripe_errors("payment_link_status", checkout_session_id=session_id):
            session = await sessions.retrieve_async(session_id, options=_options(None, account))
        return _session(session, str(_field(session, "customer") or ""))

    async def expire_checkout_session(self, session_id: str, retailer_id: int) -> CheckoutSession:
        """Expire an open session (it can no longer be paid); one already complete or expired is left."""
        _, account = await self._owner("retailer", retailer_id)
        key = f"payment-link-expire:{session_id}"
        sessions = self._client.v1.checkout.sessions
        async with stripe_errors("expire_payment_link", checkout_session_id=session_id, idempotency_key=key):
            try:
                session = await sessions.expire_async(session_id, options=_options(key, account))
            except stripe.InvalidRequestError:
                session = await sessions.retrieve_async(session_id, options=_options(None, account))
                if session.status == "open":
                    raise
        log.info(
            "stripe.payment_link_expired",
            retailer_id=retailer_id,
            checkout_session_id=session_id,
            status=session.status,
        )
        return _session(session, str(_field(session, "customer") or ""))

    # -- customer portal ------------------------------------------------------------------------

    async def billing_portal_session(self, membership_id: int, *, return_url: str | None, key: str) -> str | None:
        """The URL of a new Stripe Billing customer-portal session for the member, where they update
        their card or undo a cancellation; None when the member has no Stripe customer (no call).
        Made when the member opens a nudge's manage link (`activities/churn/managelinks.py`), under
        the idempotency key `key` (one per click: a session lives minutes)."""
        customer, account = await self._owner("member", membership_id)
        if not customer:
            return None
        params: dict[str, Any] = {"customer": customer}
        if return_url:
            params["return_url"] = return_url
        async with stripe_errors("billing_portal_session", membership_id=membership_id, idempotency_key=key):
            session = await self._client.v1.billing_portal.sessions.create_async(
                params,  # type: ignore[arg-type]
                options=_options(key, account),
            )
        return str(session.url)

    # -- subscriptions --------------------------------------------------------------------------

    async def _subscription_of(self, membership_id: int) -> tuple[str, str | None]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(Membership.stripe_subscription_id, Company.stripe_account_id)
                    .join(Company, Company.id == Membership.company_id)
                    .where(Membership.id == membership_id)
                )
            ).first()
        if row is None:
            raise permanent("UnknownOwner", f"no member {membership_id}", owner_type="member", owner_id=membership_id)
        if not row[0]:
            raise permanent("NoSubscription", f"member {membership_id} has no Stripe subscription")
        return row[0], row[1]

    async def _retrieve_subscription(self, subscription_id: str, account: str | None, operation: str) -> Any:
        async with stripe_errors(operation, subscription_id=subscription_id):
            return await self._client.v1.subscriptions.retrieve_async(subscription_id, options=_options(None, account))

    async def subscription_state(self, request: SubscriptionStateRequest) -> SubscriptionState:
        """Read-only: the subscription now, so no late or stale event decides an irreversible step."""
        subscription_id, account = await self._subscription_of(request.membership_id)
        subscription = await self._retrieve_subscription(subscription_id, account, "subscription_state")
        return SubscriptionState(
            subscription_id=subscription_id,
            status=subscription.status,
            cancel_at_period_end=bool(_field(subscription, "cancel_at_period_end")),
            current_period_end=_timestamp(_period_end(subscription)),
        )

    async def extend_subscription(self, request: ExtendSubscription) -> SubscriptionPeriod:
        subscription_id, account = await self._subscription_of(request.membership_id)
        op = "extend_subscription"
        subscription = await self._retrieve_subscription(subscription_id, account, op)
        if subscription.status in ("canceled", "incomplete_expired"):
            raise permanent(
                "SubscriptionNotActive",
                f"subscription {subscription_id} is {subscription.status}: it cannot be extended",
                status=subscription.status,
            )
        metadata = _field(subscription, "metadata")
        already = _field(metadata, EXTENSION_KEY_META) == request.idempotency_key
        if not already:
            now = int(time.time())
            trial_end = _field(subscription, "trial_end")
            in_trial = bool(trial_end) and int(trial_end) > now
            base = int(trial_end) if in_trial else max(_period_end(subscription) or now, now)
            target = base + request.days * DAY_S
            params: SubscriptionUpdateParams = {
                "trial_end": target,
                "metadata": {EXTENSION_KEY_META: request.idempotency_key, EXTENSION_END_META: str(target)},
            }
            if not in_trial:
                params["proration_behavior"] = "none"
            key = f"subscription-extend:{request.membership_id}:{request.idempotency_key}"
            async with stripe_errors(op, subscription_id=subscription_id, idempotency_key=key):
                try:
                    subscription = await self._client.v1.subscriptions.update_async(
                        subscription_id, params, _options(key, account)
                    )
                except stripe.IdempotencyError:
                    # Same key, another trial_end: an earlier attempt moved the trial end already.
                    already = True
            if already:
                subscription = await self._retrieve_subscription(subscription_id, account, op)
            else:
                already = _replayed(subscription)
        period = _subscription_period(subscription, already)
        await self._store_period_end(request.membership_id, period.current_period_end)
        log.info(
            "stripe.subscription_extended",
            membership_id=request.membership_id,
            subscription_id=subscription_id,
            days=request.days,
            trial_end=period.trial_end.isoformat() if period.trial_end else None,
            already_applied=already,
        )
        return period

    async def _store_period_end(self, membership_id: int, period_end: datetime | None) -> None:
        if period_end is None:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                update(Membership).where(Membership.id == membership_id).values(current_period_end=period_end)
            )

    async def cancel_subscription(self, request: CancelSubscription) -> SubscriptionCancellation:
        subscription_id, account = await self._subscription_of(request.membership_id)
        op = "cancel_subscription"
        subscription = await self._retrieve_subscription(subscription_id, account, op)
        already = subscription.status == "canceled" or (
            request.at_period_end and bool(_field(subscription, "cancel_at_period_end"))
        )
        if not already:
            if request.at_period_end:
                key = f"subscription-cancel-at-period-end:{request.membership_id}:{request.idempotency_key}"
                async with stripe_errors(op, subscription_id=subscription_id, idempotency_key=key):
                    subscription = await self._client.v1.subscriptions.update_async(
                        subscription_id, {"cancel_at_period_end": True}, _options(key, account)
                    )
            else:
                key = f"subscription-cancel:{request.membership_id}:{request.idempotency_key}"
                try:
                    async with stripe_errors(op, subscription_id=subscription_id, idempotency_key=key):
                        subscription = await self._client.v1.subscriptions.cancel_async(
                            subscription_id, options=_options(key, account)
                        )
                except ApplicationError as error:
                    # A concurrent attempt may have cancelled it between our read and our call.
                    if error.type != "StripeInvalidRequest":
                        raise
                    subscription = await self._retrieve_subscription(subscription_id, account, op)
                    if subscription.status != "canceled":
                        raise
                    already = True
        log.info(
            "stripe.subscription_cancelled",
            membership_id=request.membership_id,
            subscription_id=subscription_id,
            at_period_end=request.at_period_end,
            status=subscription.status,
            already_cancelled=already,
        )
        return SubscriptionCancellation(
            subscription_id=subscription_id,
            status=subscription.status,
            cancel_at_period_end=bool(_field(subscription, "cancel_at_period_end")),
            canceled_at=_timestamp(_field(subscription, "canceled_at") or _field(subscription, "ended_at")),
            already_cancelled=already,
        )

    # -- PaymentIntents -------------------------------------------------------------------------

    async def payment_intent_status(self, request: PaymentIntentStatus) -> PaymentIntentState:
        op = "payment_intent_status"
        async with stripe_errors(op, payment_intent_id=request.id):
            intent = await self._client.v1.payment_intents.retrieve_async(request.id)
            refunded_minor = 0
            params: RefundListParams = {"payment_intent": request.id, "limit": 100}
            while True:
                page = await self._client.v1.refunds.list_async(params)
                refunded_minor += sum(r.amount for r in page.data if r.status in COUNTED_REFUND_STATUSES)
                if not page.has_more or not page.data:
                    break
                params = {**params, "starting_after": page.data[-1].id}
        currency = intent.currency
        return PaymentIntentState(
            id=intent.id,
            status=intent.status,
            amount=from_minor_units(intent.amount, currency),
            amount_refunded=from_minor_units(refunded_minor, currency),
            currency=currency,
            refunded=refunded_minor > 0,
            fully_refunded=refunded_minor > 0 and refunded_minor >= intent.amount,
        )

    # -- what the money events re-read (issue #32) ----------------------------------------------
    # A webhook event is only a hint: a refund, a dispute or an intent's success is acted on as
    # Stripe has it now, so a late or forged event can never undo a newer state.

    async def payment_intent(self, intent_id: str) -> StripePaymentIntent:
        """The PaymentIntent now (read-only)."""
        async with stripe_errors("payment_intent", payment_intent_id=intent_id):
            intent = await self._client.v1.payment_intents.retrieve_async(intent_id)
        charge = _field(intent, "latest_charge")
        return StripePaymentIntent(
            id=intent.id,
            status=str(intent.status),
            amount=int(_field(intent, "amount") or 0),
            amount_received=int(_field(intent, "amount_received") or 0),
            currency=str(_field(intent, "currency") or ""),
            customer=_id_of(_field(intent, "customer")),
            metadata=_metadata(intent),
            latest_charge=_id_of(charge),
        )

    async def charge(self, charge_id: str) -> StripeCharge:
        """The Charge now (read-only): what has been refunded of it in all, and whether it is disputed."""
        async with stripe_errors("charge", charge_id=charge_id):
            charge = await self._client.v1.charges.retrieve_async(charge_id)
        return StripeCharge(
            id=charge.id,
            amount=int(_field(charge, "amount") or 0),
            amount_refunded=int(_field(charge, "amount_refunded") or 0),
            currency=str(_field(charge, "currency") or ""),
            payment_intent=_id_of(_field(charge, "payment_intent")),
            refunded=bool(_field(charge, "refunded")),
            disputed=bool(_field(charge, "disputed")),
            status=str(_field(charge, "status") or ""),
        )

    async def dispute(self, dispute_id: str) -> StripeDispute:
        """The Dispute now (read-only): its status decides, not the event's."""
        async with stripe_errors("dispute", dispute_id=dispute_id):
            dispute = await self._client.v1.disputes.retrieve_async(dispute_id)
        return StripeDispute(
            id=dispute.id,
            charge=str(_id_of(_field(dispute, "charge")) or ""),
            payment_intent=_id_of(_field(dispute, "payment_intent")),
            amount=int(_field(dispute, "amount") or 0),
            currency=str(_field(dispute, "currency") or ""),
            status=str(_field(dispute, "status") or ""),
        )


def _id_of(value: Any) -> str | None:
    """An expandable field: an id, or the object (localstripe expands some) whose id it is."""
    if value is None or isinstance(value, str):
        return value or None
    found = _field(value, "id")
    return str(found) if found else None


def _session(session: Any, customer_id: str) -> CheckoutSession:
    currency = str(_field(session, "currency") or "usd")
    return CheckoutSession(
        url=str(session.url or ""),
        checkout_session_id=session.id,
        payment_intent_id=_field(session, "payment_intent"),
        amount=from_minor_units(int(_field(session, "amount_total") or 0), currency),
        currency=currency,
        stripe_customer_id=customer_id,
        status=str(_field(session, "status") or "open"),
        payment_status=str(_field(session, "payment_status") or "unpaid"),
        metadata=_metadata(session),
    )


def _metadata(obj: Any) -> dict[str, str]:
    metadata = _field(obj, "metadata") or {}
    if hasattr(metadata, "to_dict"):  # a StripeObject
        metadata = metadata.to_dict()
    return {str(k): str(v) for k, v in metadata.items()}


def _options(idempotency_key: str | None, account: str | None) -> stripe.RequestOptions:
    options: stripe.RequestOptions = {}
    if idempotency_key is not None:
        options["idempotency_key"] = idempotency_key
    if account:
        options["stripe_account"] = account
    return options


def _replayed(obj: Any) -> bool:
    response = getattr(obj, "last_response", None)
    return bool(response is not None and response.headers.get("Idempotent-Replayed") == "true")


def _subscription_period(subscription: Any, already: bool) -> SubscriptionPeriod:
    trial_end = _field(subscription, "trial_end")
    ends = [int(v) for v in (_period_end(subscription), trial_end) if v]
    return SubscriptionPeriod(
        subscription_id=subscription.id,
        status=subscription.status,
        trial_end=_timestamp(trial_end),
        current_period_end=_timestamp(max(ends)) if ends else None,
        already_applied=already,
    )
