"""Stable manage links: what a churn nudge carries (`{PUBLIC_BASE_URL}/manage/{token}`) and what a
click does (the HTTP API's `GET /manage/{token}`).

Why not a Stripe customer-portal session in the message: a portal session is short-lived (it
expires within minutes if nobody opens it), and a member reads an SMS or a WhatsApp message hours
later. So, as for the pay links (`activities/credit/paylinks.py`), the message carries a link of
ours, and the session is made when the member clicks, through the API process's one Stripe gateway.

The token needs no table: `{membership id}.{issue date YYYYMMDD}.{signature}`, the signature an
HMAC-SHA256 (128 bits kept, URL-safe base64) over the membership id, its company id and the issue
date, keyed by MANAGE_LINK_SECRET (else ACTOR_HASH_KEY, else a dev-only key). A token is valid
MANAGE_LINK_DAYS from its issue date; a membership moved to another company invalidates its links.
Sending costs no Stripe call, and the text is the same on every retry (the issue date is the day
the send activity was first scheduled).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError

from activities.credit.paylinks import paced

if TYPE_CHECKING:
    from activities.payments.gateway import StripeGateway
    from config.settings import Settings

log = structlog.get_logger(__name__)

DEV_MANAGE_LINK_SECRET = "jobctl-dev-only-manage-link-secret"
"""Used when neither MANAGE_LINK_SECRET nor ACTOR_HASH_KEY is set (settings refuse production without
ACTOR_HASH_KEY, so production never signs with it)."""
TOKEN_MAX_LENGTH = 64
_SIGNATURE_BYTES = 16


def manage_secret(settings: Settings) -> bytes:
    for key in (settings.manage_link_secret, settings.actor_hash_key):
        if key is not None and key.get_secret_value():
            return key.get_secret_value().encode()
    return DEV_MANAGE_LINK_SECRET.encode()


def _signature(secret: bytes, membership_id: int, company_id: str, issued: date) -> str:
    message = f"manage-link|{membership_id}|{company_id}|{issued:%Y%m%d}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(secret: bytes, membership_id: int, company_id: str, issued: date) -> str:
    return f"{membership_id}.{issued:%Y%m%d}.{_signature(secret, membership_id, company_id, issued)}"


def manage_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/manage/{token}"


def parse(token: str) -> tuple[int, date, str] | None:
    """(membership id, issue date, signature) of a well-formed token; None otherwise."""
    parts = token.split(".")
    if len(token) > TOKEN_MAX_LENGTH or len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    try:
        issued = datetime.strptime(parts[1], "%Y%m%d").date()
    except ValueError:
        return None
    return int(parts[0]), issued, parts[2]


def company_url(template: str | None, company_id: str) -> str | None:
    return template.format(company_id=quote(company_id, safe="")) if template else None


ManageState = Literal["portal", "fallback", "unknown", "expired", "no_page", "unavailable"]


@dataclass(frozen=True)
class ManageOutcome:
    state: ManageState
    url: str | None = None


async def open_manage_link(
    engine: AsyncEngine, stripe: StripeGateway | None, settings: Settings, token: str, *, today: date | None = None
) -> ManageOutcome:
    """What a click on a manage link gets: a new customer-portal session (`portal`), the company's
    CHURN_MANAGE_URL for a member without a Stripe customer or one Stripe no longer knows
    (`fallback`), or a state for a page: unknown (malformed, forged, no such membership), expired,
    no_page (no customer and no CHURN_MANAGE_URL), unavailable (Stripe did not answer)."""
    parsed = parse(token)
    if parsed is None:
        return ManageOutcome("unknown")
    membership_id, issued, signature = parsed
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT company_id, stripe_customer_id FROM memberships WHERE id = :i"), {"i": membership_id}
            )
        ).first()
    if row is None:
        return ManageOutcome("unknown")
    company_id, customer = str(row[0]), row[1]
    if not hmac.compare_digest(signature, _signature(manage_secret(settings), membership_id, company_id, issued)):
        return ManageOutcome("unknown")
    today = today or datetime.now(UTC).date()
    if today > issued + timedelta(days=settings.manage_link_days):
        return ManageOutcome("expired")
    fallback = company_url(settings.churn_manage_url, company_id)
    if customer and stripe is not None:
        return_url = company_url(settings.manage_return_url, company_id) or fallback
        # A key per click (kept across the SDK's and `paced`'s retries): a session replayed from an
        # earlier click may have expired already.
        key = f"manage-link:{membership_id}:{uuid.uuid4().hex}"
        try:
            url = await paced(lambda: stripe.billing_portal_session(membership_id, return_url=return_url, key=key))
        except ApplicationError as error:
            if not error.non_retryable:
                log.warning("manage_link.stripe_unavailable", membership_id=membership_id, error_type=error.type)
                return ManageOutcome("unavailable")
            log.warning("manage_link.portal_refused", membership_id=membership_id, error_type=error.type)
            url = None
        if url is not None:
            return ManageOutcome("portal", url)
    return ManageOutcome("fallback", fallback) if fallback else ManageOutcome("no_page")
