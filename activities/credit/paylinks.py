"""Stable pay links: what a reminder sends (`{PUBLIC_BASE_URL}/pay/{token}`) and what a click does.

Why not a Checkout Session in the message: a session lives at most 24 hours at Stripe, and the
cadence's steps are days apart, so every step needed a Stripe call to check the old one and make a
new one (2 calls per reminder). Why not a Stripe Payment Link (which never expires): it is paid
with a Price (one Price and one Payment Link per retailer and amount, 2 calls before the first
send), it cannot name the customer, it stays payable after it was paid (one link, many payments)
unless deactivated, and a partial payment would need a new Price and a new link, i.e. a new URL.
See docs/ARCHITECTURE.md, "Pay links".

So the message carries a capability of ours: a random `token` on the retailer's `payment_links`
row. Sending it costs no Stripe call. Opening it (`open_pay_link`, the HTTP API's `GET
/pay/{token}`) computes what the link's debits still owe *now*, and creates the Checkout Session
then (or reuses the stored one while it is open and charges the same amounts), then the route
redirects (303) there. Payment arrives, as before, as `checkout.session.completed` at the webhook.
A session completed with a delayed method (a bank debit: `payment_status` unpaid) says "pending"
while its PaymentIntent is on its way and offers a new session once Stripe says it failed.

- No connection is held while Stripe answers. Concurrent clicks compute the same key, so Stripe
  gives them the same session; the session is stored only if the row is as the click read it
  (`session_count`, `token`), and a click that lost to a change expires what it made and reads again.
- A session's idempotency key is `paylink:{retailer}:{generation}:{session n}:{amounts fingerprint}`:
  a retry of the same create gets the same session; a new session for the same link (the old one
  expired or the amounts changed) gets a new n.
- Before a session is replaced (the amounts changed) it is expired at Stripe, so at most one
  payable session exists per link.
- When the reminders replace a link (its debits changed), the old token is kept in
  `retired_payment_links` and its open session (if it was clicked) is expired: an old message's
  link then says "replaced", never pays the old debits twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Literal, TypeVar

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError

from activities.payments.gateway import StripeGateway
from schemas.payments import CheckoutSession, CheckoutSessionLine, CheckoutSessionRequest

log = structlog.get_logger(__name__)

T = TypeVar("T")

TOKEN_BYTES = 32  # 256 random bits, URL-safe base64: 43 characters
TOKEN_MAX_LENGTH = 128
# Per Stripe call (about 8 s of back-off in all): its 429 and 5xx are retried here, paced, not by
# failing a page or a click.
STRIPE_ATTEMPTS = 6
STRIPE_FIRST_DELAY_S = 0.25
STRIPE_MAX_DELAY_S = 4.0


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def pay_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/pay/{token}"


def well_formed(token: str) -> bool:
    return 0 < len(token) <= TOKEN_MAX_LENGTH and all(c.isalnum() or c in "-_" for c in token)


@dataclass(frozen=True)
class LinkDebit:
    debit_id: int
    outstanding: Decimal
    due_date: date


def debits_fingerprint(debit_ids: list[int], currency: str) -> str:
    """Which debits a link pays: the same debits → the same link (the same URL), whatever is left on them."""
    canonical = currency + "|" + ",".join(str(d) for d in sorted(debit_ids))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def amounts_fingerprint(debits: list[LinkDebit], currency: str) -> str:
    """What a session charges: the same debits with the same amounts left → the same session."""
    canonical = (
        currency + "|" + ",".join(f"{d.debit_id}:{d.outstanding:.2f}" for d in sorted(debits, key=lambda d: d.debit_id))
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def session_key(retailer_id: int, generation: int, n: int, fingerprint: str) -> str:
    return f"paylink:{retailer_id}:{generation}:{n}:{fingerprint}"


async def paced(call: Callable[[], Awaitable[T]], *, attempts: int = STRIPE_ATTEMPTS) -> T:
    """One Stripe call, retried on Stripe's transient answers (429, 409, 5xx, no answer) with
    jittered exponential back-off; the same idempotency key each time. After the last attempt the
    retryable error is raised."""
    delay = STRIPE_FIRST_DELAY_S
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except ApplicationError as error:
            if error.non_retryable or attempt == attempts:
                raise
            log.info("stripe.call_retried", attempt=attempt, error_type=error.type, delay_s=round(delay, 2))
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, STRIPE_MAX_DELAY_S)
    raise AssertionError("unreachable")


async def expire_session(stripe: StripeGateway, session_id: str, retailer_id: int) -> None:
    """Expire a link's session (paced); one Stripe no longer has, or already closed, is fine."""
    try:
        await paced(lambda: stripe.expire_checkout_session(session_id, retailer_id))
    except ApplicationError as error:
        if error.type != "StripeInvalidRequest":
            raise
        log.warning("paylink.session_missing", retailer_id=retailer_id, checkout_session_id=session_id)


class SessionCache:
    """Each Checkout Session as Stripe last said it, for `ttl_s` seconds (the API process's one).

    A link opened over and over (a leaked link, a script) must not spend the account's shared
    Stripe rate limit: within `ttl_s` of a retrieve the link is answered from it, and concurrent
    opens wait for the one retrieve in flight. What it may cost: a payer who paid on Stripe's page
    and opens the link again within `ttl_s` is sent back to that (completed) page. A session this
    process expires or creates is never answered from here."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: OrderedDict[str, tuple[float, CheckoutSession]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    def _fresh(self, session_id: str) -> CheckoutSession | None:
        entry = self._entries.get(session_id)
        return entry[1] if entry is not None and time.monotonic() - entry[0] < self.ttl_s else None

    async def get(self, session_id: str, retrieve: Callable[[], Awaitable[CheckoutSession]]) -> CheckoutSession:
        if self.ttl_s <= 0:
            return await retrieve()
        if (hit := self._fresh(session_id)) is not None:
            return hit
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        try:
            async with lock:
                if (hit := self._fresh(session_id)) is not None:
                    return hit
                session = await retrieve()
                self._entries.pop(session_id, None)
                self._entries[session_id] = (time.monotonic(), session)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
                return session
        finally:
            if not lock.locked():
                self._locks.pop(session_id, None)

    def forget(self, session_id: str) -> None:
        self._entries.pop(session_id, None)


# --- opening a link ----------------------------------------------------------------------------

PayState = Literal["redirect", "paid", "processing", "pending", "replaced", "unknown", "unavailable"]


@dataclass(frozen=True)
class PayOutcome:
    state: PayState
    url: str | None = None  # the Checkout page, for "redirect"
    amount: Decimal | None = None
    currency: str | None = None
    created: bool = False  # a session was made by this click
    locale: str | None = None
    """The retailer's (BCP 47): how the page writes the amount (`schemas.money.format_money`)."""


LINK = text(
    "SELECT l.retailer_id, l.token, l.checkout_session_id, l.session_fingerprint, l.session_count, l.generation,"
    " l.currency, l.debit_ids, r.locale"
    " FROM payment_links l JOIN retailers r ON r.id = l.retailer_id WHERE l.token = :t"
)
RECORDED = text(
    "SELECT 1 FROM credit_transactions WHERE retailer_id = :r AND type = 'CREDIT' AND reference = :reference"
)
RETIRED = text("SELECT 1 FROM retired_payment_links WHERE token = :t")
OWED = text(
    """
SELECT id, amount - cleared_amount AS outstanding, due_date FROM credit_transactions
WHERE retailer_id = :r AND id = ANY(CAST(:ids AS bigint[])) AND type = 'DEBIT' AND status <> 'CLEARED'
ORDER BY id
"""
)
# Only if nobody stored a session (or replaced the token) since we read the row.
STORE_SESSION = text(
    "UPDATE payment_links SET checkout_session_id = :session, session_fingerprint = :fingerprint,"
    " session_count = :n, amount = :amount, updated_at = now()"
    " WHERE retailer_id = :r AND token = :t AND session_count = :n - 1 RETURNING 1"
)
CURRENT = text("SELECT token, checkout_session_id FROM payment_links WHERE retailer_id = :r")
ATTEMPTS = 3  # reads of the row when a concurrent click or reminder changed it meanwhile


async def open_pay_link(
    engine: AsyncEngine, stripe: StripeGateway | None, token: str, cache: SessionCache | None = None
) -> PayOutcome:
    """What `GET /pay/{token}` does: the Checkout page for what the link's debits owe now.

    No connection is held while Stripe answers (a click may wait seconds on a 429's back-off, and
    the Stripe calls use the pool themselves): the row is read, Stripe called under idempotency
    keys, and the session stored only if the row is as it was read; otherwise it is read again."""
    if not well_formed(token):
        return PayOutcome("unknown")
    retailer_id = None
    for _ in range(ATTEMPTS):
        async with engine.connect() as conn:
            link = (await conn.execute(LINK, {"t": token})).first()
            if link is None:
                return PayOutcome("replaced" if await conn.scalar(RETIRED, {"t": token}) else "unknown")
            retailer_id = link.retailer_id
            owed = [
                LinkDebit(*row)
                for row in (await conn.execute(OWED, {"r": link.retailer_id, "ids": list(link.debit_ids)})).all()
            ]
        if stripe is None:
            return PayOutcome("paid") if not owed else PayOutcome("unavailable")
        try:
            outcome = await _checkout(engine, stripe, link, owed, cache)
        except ApplicationError as error:
            log.warning(
                "paylink.stripe_unavailable",
                retailer_id=link.retailer_id,
                error_type=error.type,
                retryable=not error.non_retryable,
            )
            return PayOutcome("unavailable")
        if outcome is not None:
            return replace(outcome, locale=link.locale)
    log.warning("paylink.contended", retailer_id=retailer_id)
    return PayOutcome("unavailable")


async def _checkout(
    engine: AsyncEngine, stripe: StripeGateway, link, owed: list[LinkDebit], cache: SessionCache | None = None
) -> PayOutcome | None:
    """The outcome, or None: the row changed meanwhile, read it again."""
    retailer_id, currency = link.retailer_id, link.currency
    fingerprint = amounts_fingerprint(owed, currency) if owed else None
    if link.checkout_session_id:
        current = await _session(stripe, link.checkout_session_id, retailer_id, cache)
        if current is not None and current.status == "complete":
            # Paid at Stripe. Until the webhook's payment is recorded the debits still look open:
            # "processing", never a second session for money already paid. Once recorded, what is
            # left (after a partial payment) gets a new session below.
            async with engine.connect() as conn:
                recorded = await conn.scalar(RECORDED, {"r": retailer_id, "reference": link.checkout_session_id})
            if not recorded and current.payment_status == "paid":
                return PayOutcome("processing", amount=current.amount, currency=currency)
            if not recorded and await _delayed_payment_pending(stripe, current.payment_intent_id):
                # A delayed method (a bank debit) on its way: "pending", never a second session.
                return PayOutcome("pending", amount=current.amount, currency=currency)
            # Otherwise the delayed payment failed: a new session for what is owed, below.
        if current is not None and current.status == "open":
            if owed and link.session_fingerprint == fingerprint:
                log.info(
                    "paylink.session_reused", retailer_id=retailer_id, checkout_session_id=current.checkout_session_id
                )
                return PayOutcome("redirect", url=current.url, amount=current.amount, currency=currency)
            await expire_session(stripe, link.checkout_session_id, retailer_id)  # the amounts changed, or all paid
            if cache is not None:
                cache.forget(link.checkout_session_id)
    if not owed:
        return PayOutcome("paid", currency=currency)
    assert fingerprint is not None
    n = link.session_count + 1
    amount = sum((d.outstanding for d in owed), Decimal("0"))
    ids = ",".join(str(d.debit_id) for d in owed)
    request = CheckoutSessionRequest(
        retailer_id=retailer_id,
        amount=amount,
        currency=currency,
        idempotency_key=session_key(retailer_id, link.generation, n, fingerprint),
        description=f"{len(owed)} invoice(s)",
        locale=link.locale,
        lines=[
            CheckoutSessionLine(description=f"Invoice {d.debit_id} (due {d.due_date})", amount=d.outstanding)
            for d in owed
        ],
        metadata={
            "debit_ids": ids if len(ids) <= 500 else ids[: ids.rindex(",", 0, 496)] + ",...",
            "fingerprint": fingerprint,
        },
    )
    session = await paced(lambda: stripe.create_checkout_session(request))
    async with engine.begin() as conn:
        stored = await conn.scalar(
            STORE_SESSION,
            {
                "session": session.checkout_session_id,
                "fingerprint": fingerprint,
                "n": n,
                "amount": amount,
                "r": retailer_id,
                "t": link.token,
            },
        )
        now = None if stored else (await conn.execute(CURRENT, {"r": retailer_id})).first()
    if stored or (
        now is not None and now.token == link.token and now.checkout_session_id == session.checkout_session_id
    ):
        # Ours, or a concurrent click's with the same key: the same session.
        log.info(
            "paylink.session_created", retailer_id=retailer_id, checkout_session_id=session.checkout_session_id, n=n
        )
        return PayOutcome("redirect", url=session.url, amount=amount, currency=currency, created=bool(stored))
    # The row changed while Stripe answered (a reminder replaced the token, or a click stored
    # another session): ours must not stay payable beside it.
    assert session.checkout_session_id
    await expire_session(stripe, session.checkout_session_id, retailer_id)
    if now is None or now.token != link.token:
        return PayOutcome("replaced")
    return None


PENDING_INTENT_STATUSES = frozenset({"processing", "requires_capture", "requires_action"})
"""A completed, unpaid session's PaymentIntent in one of these is still on its way; after a
failure Stripe puts it back to `requires_payment_method` (or it is `canceled`)."""


async def _delayed_payment_pending(stripe: StripeGateway, intent_id: str | None) -> bool:
    """Whether a completed but unpaid session's delayed payment is still on its way (Stripe's
    word on its PaymentIntent now; the webhook's async_payment_failed is not waited for)."""
    if not intent_id:
        return True  # Stripe names the intent once the payer confirmed: nothing failed yet
    intent = await paced(lambda: stripe.payment_intent(intent_id))
    return intent.status in PENDING_INTENT_STATUSES


async def _session(stripe: StripeGateway, session_id: str, retailer_id: int, cache: SessionCache | None = None):
    def retrieve() -> Awaitable[CheckoutSession]:
        return paced(lambda: stripe.checkout_session(session_id, retailer_id))

    try:
        return await (cache.get(session_id, retrieve) if cache is not None else retrieve())
    except ApplicationError as error:
        if error.type != "StripeInvalidRequest":  # 404: Stripe no longer has it; make a new one
            raise
        log.warning("paylink.session_missing", retailer_id=retailer_id, checkout_session_id=session_id)
        return None
