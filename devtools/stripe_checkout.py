"""Checkout Sessions for the Stripe sandbox: what localstripe 1.15 lacks, done in the front.

Real Stripe's hosted payment page is a Checkout Session (``mode=payment``): created with line
items and metadata, it has a ``url`` the payer opens, a ``status`` open → complete (paid) or
expired (``POST .../expire``, or ``expires_at`` passed), and on payment Stripe sends the signed
``checkout.session.completed`` event. This module implements that subset
(https://docs.stripe.com/api/checkout/sessions) so reminders can carry a link a person can pay:

- ``POST /v1/checkout/sessions``  (mode=payment, customer, line_items[][price_data], metadata,
  expires_at, success_url, client_reference_id); ``GET /v1/checkout/sessions[/{id}]`` (list
  filters: customer, status, limit, starting_after); ``POST /v1/checkout/sessions/{id}/expire``;
  ``GET /v1/checkout/sessions/{id}/line_items``. The customer must exist at localstripe: a
  missing one is Stripe's 400 ``resource_missing`` (param ``customer``).
- ``GET /pay/{id}``: the dev pay page (plain HTML): "Pay" pays ``amount_total``, "Pay partially"
  pays the amount typed. ``POST /pay/{id}`` completes the session and delivers
  ``checkout.session.completed``, signed like Stripe (``Stripe-Signature: t=..,v1=HMAC-SHA256``),
  to every registered webhook before answering (retried briefly on failure). Paying a session that
  is complete (409) or expired (410) is refused and sends nothing. Paying makes a real
  localstripe PaymentIntent (the sandbox's test card, the session's customer, no metadata, as
  Stripe's own) and so a charge that can be refunded and disputed (``devtools/stripe_money.py``).
- "Pay by bank debit" on the page (``action=delayed``): a delayed method. The session completes
  with ``payment_status`` unpaid and its PaymentIntent ``processing``, and
  ``checkout.session.completed`` goes out; ``POST /_sandbox/checkout/sessions/{id}/async_payment``
  ``{"outcome": "succeeded"|"failed"}`` later pays it (``checkout.session.async_payment_succeeded``)
  or fails it (``.async_payment_failed``, the intent back to ``requires_payment_method``).
  Dev-only deviation: real Checkout cannot be paid partially; here a partial payment completes the
  session with ``amount_total`` set to what was paid (``amount_requested`` keeps the original).

Idempotency comes from the sandbox's middleware, as for localstripe's routes. With a
``data_dir`` the sessions and the webhook registrations are saved to ``checkout.json`` after each
change and loaded at start, so a restarted dev stack still knows the links it handed out.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl

import aiohttp
import structlog
from aiohttp import web

from schemas.money import STRIPE_ZERO_DECIMAL, format_money

log = structlog.get_logger(__name__)

MAX_EXPIRY_S: Final = 24 * 3600  # Stripe: expires_at between 30 minutes and 24 hours after creation
MIN_EXPIRY_S: Final = 30 * 60
DELIVERY_ATTEMPTS: Final = 5
ZERO_DECIMAL: Final = STRIPE_ZERO_DECIMAL  # Stripe's list, the one the gateway uses
_BRACKETS: Final = re.compile(r"\[([^\]]*)\]")

ErrorResponse = Callable[..., web.Response]
BackendCall = Callable[[str, str, dict[str, str] | None], Awaitable[tuple[int, dict[str, Any]]]]
"""(method, path, form) → (status, JSON body) from localstripe, with the sandbox's own key."""
SANDBOX_CARD: Final = "pm_card_visa"


def api_key_of(authorization: str | None) -> str | None:
    """The secret key from ``Bearer sk_...`` or HTTP basic ``sk_...:``, as localstripe reads it."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(value, validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None


def parse_stripe_form(body: str) -> dict[str, Any]:
    """``a[b][0][c]=1`` (Stripe's form encoding) → ``{"a": {"b": [{"c": "1"}]}}``."""
    root: dict[str, Any] = {}
    for name, value in parse_qsl(body, keep_blank_values=True):
        head, _, rest = name.partition("[")
        path = [head, *_BRACKETS.findall("[" + rest)] if rest else [head]
        node: Any = root
        for i, part in enumerate(path):
            last = i == len(path) - 1
            nxt: Any = value if last else ([] if path[i + 1].isdigit() or path[i + 1] == "" else {})
            if isinstance(node, list):
                index = int(part) if part.isdigit() else len(node)
                while len(node) <= index:
                    node.append(None)
                if node[index] is None or last:
                    node[index] = nxt
                node = node[index]
            else:
                if part not in node or last:
                    node[part] = nxt
                node = node[part]
    return root


def _minor_to_text(minor: int, currency: str) -> str:
    return str(minor) if currency in ZERO_DECIMAL else f"{Decimal(minor).scaleb(-2):.2f}"


def _shown(minor: int, currency: str, locale: str | None) -> str:
    """As Checkout shows it: CLDR for the session's locale (`auto`, none: English)."""
    exponent = 0 if currency in ZERO_DECIMAL else 2
    return format_money(Decimal(minor).scaleb(-exponent), currency, None if locale in (None, "auto") else locale)


def _text_to_minor(text: str, currency: str) -> int | None:
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount <= 0:
        return None
    minor = amount if currency in ZERO_DECIMAL else amount.scaleb(2)
    return int(minor) if minor == minor.to_integral_value() else None


@dataclass
class Webhook:
    url: str
    secret: str
    events: list[str] | None = None


@dataclass
class CheckoutStore:
    """Sessions (insertion order = creation order) and webhooks; saved to ``path`` when given."""

    path: Path | None = None
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    line_items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    webhooks: dict[str, Webhook] = field(default_factory=dict)
    intent_status: dict[str, str] = field(default_factory=dict)
    """PaymentIntent id → the status Stripe would show that localstripe cannot (a delayed
    method's ``processing``; ``requires_payment_method`` after it failed)."""
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.path is not None and self.path.exists():
            saved = json.loads(self.path.read_text())
            self.sessions = saved.get("sessions", {})
            self.line_items = saved.get("line_items", {})
            self.webhooks = {k: Webhook(**v) for k, v in saved.get("webhooks", {}).items()}
            self.intent_status = saved.get("intent_status", {})
            self.disputes = saved.get("disputes", {})

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "sessions": self.sessions,
            "line_items": self.line_items,
            "webhooks": {k: w.__dict__ for k, w in self.webhooks.items()},
            "intent_status": self.intent_status,
            "disputes": self.disputes,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.sessions.clear()
        self.line_items.clear()
        self.intent_status.clear()
        self.disputes.clear()
        self.save()

    def get(self, session_id: str) -> dict[str, Any] | None:
        """The session, expired first if its ``expires_at`` has passed."""
        session = self.sessions.get(session_id)
        if session is not None and session["status"] == "open" and self.clock() >= session["expires_at"]:
            session["status"] = "expired"
            self.save()
        return session


CHECKOUT: Final = web.AppKey("stripe_sandbox_checkout", CheckoutStore)


class Checkout:
    """The routes; ``error`` builds Stripe's error body, ``customer_exists`` asks localstripe."""

    def __init__(
        self,
        store: CheckoutStore,
        error: ErrorResponse,
        customer_exists: Callable[[web.Request, str], Any],
        backend: BackendCall | None = None,
    ) -> None:
        self.store = store
        self._error = error
        self._customer_exists = customer_exists
        self._backend = backend

    def routes(self, app: web.Application) -> None:
        app[CHECKOUT] = self.store
        r = app.router
        r.add_post("/v1/checkout/sessions", self.create)
        r.add_get("/v1/checkout/sessions", self.list)
        r.add_get("/v1/checkout/sessions/{id}", self.retrieve)
        r.add_post("/v1/checkout/sessions/{id}/expire", self.expire)
        r.add_get("/v1/checkout/sessions/{id}/line_items", self.list_line_items)
        r.add_get("/pay/{id}", self.pay_page)
        r.add_post("/pay/{id}", self.pay)
        r.add_post("/_sandbox/checkout/sessions/{id}/async_payment", self.async_payment)

    # -- API ----------------------------------------------------------------------------------

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if api_key_of(request.headers.get("Authorization")) is None:
            return self._error(401, "invalid_request_error", "You did not provide an API key.")
        return None

    async def create(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        params = parse_stripe_form(await request.text())
        if params.get("mode") != "payment":
            return self._error(400, "invalid_request_error", "The sandbox supports mode=payment only.", param="mode")
        items = params.get("line_items") or []
        if not isinstance(items, list) or not items:
            return self._error(
                400, "invalid_request_error", "line_items is required in payment mode.", param="line_items"
            )
        lines, currency, total = [], None, 0
        for i, item in enumerate(items):
            data = (item or {}).get("price_data") or {}
            try:
                unit, quantity = int(data["unit_amount"]), int(item.get("quantity", 1))
                item_currency = str(data["currency"]).lower()
                name = str((data.get("product_data") or {})["name"])
            except (KeyError, TypeError, ValueError):
                return self._error(
                    400,
                    "invalid_request_error",
                    "each line item needs price_data[currency], price_data[unit_amount],"
                    " price_data[product_data][name] and a quantity",
                    param=f"line_items[{i}]",
                )
            if unit < 0 or quantity < 1 or (currency is not None and item_currency != currency):
                return self._error(
                    400, "invalid_request_error", "bad amount, quantity or currency", param=f"line_items[{i}]"
                )
            currency = item_currency
            total += unit * quantity
            lines.append(
                {
                    "id": "li_" + secrets.token_hex(8),
                    "object": "item",
                    "description": name,
                    "quantity": quantity,
                    "currency": currency,
                    "amount_subtotal": unit * quantity,
                    "amount_total": unit * quantity,
                    "price": {"object": "price", "unit_amount": unit, "currency": currency, "product": name},
                }
            )
        customer = params.get("customer")
        if customer and not await self._customer_exists(request, str(customer)):
            return self._error(
                400,
                "invalid_request_error",
                f"No such customer: '{customer}'",
                code="resource_missing",
                param="customer",
            )
        now = int(self.store.clock())
        expires_at = int(params.get("expires_at") or now + MAX_EXPIRY_S)
        if not now + MIN_EXPIRY_S <= expires_at <= now + MAX_EXPIRY_S:
            return self._error(
                400, "invalid_request_error", "expires_at must be 30 minutes to 24 hours from now", param="expires_at"
            )
        session_id = "cs_test_" + secrets.token_hex(12)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "livemode": False,
            "status": "open",
            "payment_status": "unpaid",
            "created": now,
            "expires_at": expires_at,
            "url": f"{_public_base(request)}/pay/{session_id}",
            "currency": currency,
            "locale": params.get("locale") or None,
            "amount_total": total,
            "amount_subtotal": total,
            "customer": customer or None,
            "metadata": params.get("metadata") or {},
            "client_reference_id": params.get("client_reference_id"),
            "success_url": params.get("success_url"),
            "payment_intent": None,
        }
        self.store.sessions[session_id] = session
        self.store.line_items[session_id] = lines
        self.store.save()
        log.info("stripe_sandbox.checkout_created", session_id=session_id, amount_total=total, lines=len(lines))
        return web.json_response(session)

    async def retrieve(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        session = self.store.get(request.match_info["id"])
        if session is None:
            return self._missing(request.match_info["id"])
        return web.json_response(session)

    async def list(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        q = request.query
        limit = max(1, min(int(q.get("limit", "10")), 100))
        ids = [sid for sid in reversed(self.store.sessions)]  # newest first, as Stripe lists
        if after := q.get("starting_after"):
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        matching = [
            s
            for s in (self.store.get(sid) for sid in ids)
            if s is not None and q.get("customer") in (None, s["customer"]) and q.get("status") in (None, s["status"])
        ]
        return web.json_response(
            {
                "object": "list",
                "url": "/v1/checkout/sessions",
                "data": matching[:limit],
                "has_more": len(matching) > limit,
            }
        )

    async def list_line_items(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        sid = request.match_info["id"]
        if self.store.get(sid) is None:
            return self._missing(sid)
        lines = self.store.line_items.get(sid, [])
        return web.json_response(
            {"object": "list", "url": f"/v1/checkout/sessions/{sid}/line_items", "data": lines, "has_more": False}
        )

    async def expire(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        sid = request.match_info["id"]
        session = self.store.get(sid)
        if session is None:
            return self._missing(sid)
        if session["status"] != "open":  # as Stripe: only an open session can be expired
            return self._error(
                400,
                "invalid_request_error",
                'Only Checkout Sessions with a status in ["open"] can be expired.'
                f' This Checkout Session has a status of "{session["status"]}".',
            )
        session["status"] = "expired"
        self.store.save()
        asyncio.get_running_loop().create_task(self._deliver("checkout.session.expired", session))
        log.info("stripe_sandbox.checkout_expired", session_id=sid)
        return web.json_response(session)

    def _missing(self, session_id: str) -> web.Response:
        return self._error(
            404,
            "invalid_request_error",
            f"No such checkout.session: '{session_id}'",
            code="resource_missing",
            param="session",
        )

    # -- the pay page -------------------------------------------------------------------------

    async def pay_page(self, request: web.Request) -> web.Response:
        session = self.store.get(request.match_info["id"])
        if session is None:
            return _page("Unknown payment link", "<p>This payment link does not exist.</p>", status=404)
        if session["status"] != "open":
            return _page(
                "Link closed",
                f"<p>This payment link is {html.escape(session['status'])}: it can no longer be paid.</p>",
                status=410 if session["status"] == "expired" else 409,
            )
        currency, locale = session["currency"], session.get("locale")
        rows = "".join(
            f"<tr><td>{html.escape(li['description'])}</td>"
            f'<td class="amount">{html.escape(_shown(li["amount_total"], currency, locale))}</td></tr>'
            for li in self.store.line_items.get(session["id"], [])
        )
        total = html.escape(_shown(session["amount_total"], currency, locale))
        action = f"/pay/{html.escape(session['id'])}"
        body = (
            f'<table><thead><tr><th>Invoice</th><th class="amount">Amount ({currency.upper()})</th></tr></thead>'
            f"<tbody>{rows}</tbody>"
            f'<tfoot><tr><td>Total</td><td class="amount">{total}</td></tr></tfoot></table>'
            f'<form method="post" action="{action}"><input type="hidden" name="action" value="pay">'
            f'<button type="submit" name="pay" class="primary">Pay</button>'
            f' <span class="note">{total}</span></form>'
            f'<form method="post" action="{action}" class="partial"><input type="hidden" name="action" value="partial">'
            f'<label>Amount <input name="amount" inputmode="decimal" placeholder="0.00" required></label> '
            f'<button type="submit" name="pay_partially">Pay partially</button></form>'
            f'<form method="post" action="{action}"><input type="hidden" name="action" value="delayed">'
            f'<button type="submit" name="pay_by_bank_debit">Pay by bank debit</button>'
            f' <span class="note">a delayed method: the session completes unpaid (processing) until'
            f" <code>POST /_sandbox/checkout/sessions/{{id}}/async_payment</code> succeeds or fails it</span></form>"
            f'<p class="note">Stripe sandbox: no money moves. Paying completes Checkout Session'
            f" <code>{html.escape(session['id'])}</code> and sends <code>checkout.session.completed</code>"
            " to the registered webhooks.</p>"
        )
        return _page("Pay your invoices (Stripe sandbox)", body)

    async def pay(self, request: web.Request) -> web.Response:
        session = self.store.get(request.match_info["id"])
        if session is None:
            return _page("Unknown payment link", "<p>This payment link does not exist.</p>", status=404)
        if session["status"] != "open":
            return _page(
                "Payment refused",
                f"<p>This payment link is {html.escape(session['status'])}: nothing was charged.</p>",
                status=410 if session["status"] == "expired" else 409,
            )
        form = await request.post()
        currency, requested = session["currency"], session["amount_total"]
        paid = requested
        if form.get("action") == "partial":
            minor = _text_to_minor(str(form.get("amount", "")), currency)
            if minor is None or minor > requested:
                return _page(
                    "Payment refused",
                    f"<p>Enter an amount above 0 and at most {_minor_to_text(requested, currency)}.</p>",
                    status=400,
                )
            paid = minor
        delayed = form.get("action") == "delayed"
        intent = await self._payment_intent(session, paid, confirm=not delayed)
        if intent is None:
            return _page("Payment failed", "<p>The sandbox could not charge the card.</p>", status=502)
        if delayed:
            self.store.intent_status[intent] = "processing"
        session.update(
            status="complete",
            payment_status="unpaid" if delayed else "paid",
            amount_total=paid,
            amount_subtotal=paid,
            amount_requested=requested,
            payment_intent=intent,
        )
        self.store.save()
        log.info(
            "stripe_sandbox.checkout_paid", session_id=session["id"], amount=paid, requested=requested, delayed=delayed
        )
        delivered = await self._deliver("checkout.session.completed", session)
        shown = html.escape(_shown(paid, currency, session.get("locale")))
        return _page(
            "Processing" if delayed else "Paid",
            (f"<p>Bank debit of {shown} submitted: processing.</p>" if delayed else f"<p>Paid {shown}. Thank you.</p>")
            + ("" if delivered else "<p>(no webhook received the event)</p>"),
        )

    async def _payment_intent(self, session: dict[str, Any], amount: int, *, confirm: bool) -> str | None:
        """The session's PaymentIntent at localstripe, so its charge can be refunded and disputed:
        paid with the sandbox's card now, or (a delayed method) confirmed when its async payment
        succeeds. Like Stripe's, it carries no metadata of the session's."""
        if self._backend is None:  # a front without localstripe (unit use): an id only
            return "pi_sandbox_" + secrets.token_hex(10)
        form = {"amount": str(amount), "currency": session["currency"], "payment_method": SANDBOX_CARD}
        if session.get("customer"):
            form["customer"] = session["customer"]
        if confirm:
            form["confirm"] = "true"
        status, intent = await self._backend("POST", "/v1/payment_intents", form)
        if status != 200 or (confirm and intent.get("status") != "succeeded"):
            log.warning("stripe_sandbox.checkout_intent_failed", status=status, body=str(intent)[:300])
            return None
        return str(intent["id"])

    async def async_payment(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/checkout/sessions/{id}/async_payment`` ``{"outcome": "succeeded"|"failed"}``:
        what a bank debit does days later. The session must be complete, unpaid and processing;
        ``checkout.session.async_payment_succeeded`` (the session now paid, its PaymentIntent
        confirmed) or ``.async_payment_failed`` (its PaymentIntent back to
        ``requires_payment_method``) goes to the webhooks before the answer."""
        sid = request.match_info["id"]
        session = self.store.get(sid)
        if session is None:
            return self._missing(sid)
        try:
            outcome = str((await request.json()).get("outcome"))
        except (ValueError, AttributeError):
            outcome = ""
        if outcome not in ("succeeded", "failed"):
            return self._error(400, "invalid_request_error", 'outcome must be "succeeded" or "failed"', param="outcome")
        intent = session.get("payment_intent")
        if session["status"] != "complete" or self.store.intent_status.get(str(intent)) != "processing":
            return self._error(409, "invalid_request_error", "the session has no delayed payment processing")
        if outcome == "succeeded":
            if self._backend is not None:
                status, body = await self._backend("POST", f"/v1/payment_intents/{intent}/confirm", None)
                if status != 200:
                    return self._error(502, "api_error", f"localstripe refused the confirmation: {str(body)[:200]}")
            del self.store.intent_status[str(intent)]
            session["payment_status"] = "paid"
        else:
            self.store.intent_status[str(intent)] = "requires_payment_method"
        self.store.save()
        log.info("stripe_sandbox.checkout_async_payment", session_id=sid, outcome=outcome)
        await self._deliver(f"checkout.session.async_payment_{outcome}", session)
        return web.json_response(session)

    # -- events -------------------------------------------------------------------------------

    async def deliver(self, event_type: str, obj: dict[str, Any]) -> bool:
        """Send a signed event of ``event_type`` about ``obj`` to the registered webhooks (the
        refunds and disputes of ``devtools/stripe_money.py`` use it too)."""
        return await self._deliver(event_type, obj)

    async def _deliver(self, event_type: str, obj: dict[str, Any]) -> bool:
        """POST the signed event to each registered webhook (a few tries each); True if one took it."""
        created = int(self.store.clock())
        event = {
            "id": "evt_" + secrets.token_hex(12),
            "object": "event",
            "type": event_type,
            "created": created,
            "livemode": False,
            "pending_webhooks": 1,
            "api_version": "2024-06-20",
            "data": {"object": dict(obj)},
        }
        payload = json.dumps(event, sort_keys=True).encode()
        delivered = False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for webhook in list(self.store.webhooks.values()):
                if webhook.events is not None and event_type not in webhook.events:
                    continue
                signature = hmac.new(webhook.secret.encode(), b"%d.%s" % (created, payload), hashlib.sha256).hexdigest()
                headers = {"Content-Type": "application/json", "Stripe-Signature": f"t={created},v1={signature}"}
                for attempt in range(DELIVERY_ATTEMPTS):
                    try:
                        async with http.post(webhook.url, data=payload, headers=headers) as response:
                            if response.status < 300:
                                delivered = True
                                break
                            log.warning("stripe_sandbox.webhook_refused", event_type=event_type, status=response.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        log.warning("stripe_sandbox.webhook_failed", event_type=event_type, error=repr(exc))
                    await asyncio.sleep(0.2 * 2**attempt)
        return delivered


def _public_base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


_STYLE: Final = (
    "body{font:16px/1.5 system-ui,sans-serif;color:#1a1a2e;background:#f4f5f7;margin:0;padding:40px 16px}"
    "main{max-width:560px;margin:0 auto;background:#fff;border:1px solid #dde;border-radius:8px;padding:24px 32px}"
    "h1{font-size:22px;margin:0 0 16px}table{width:100%;border-collapse:collapse;margin-bottom:20px}"
    "th,td{padding:8px 4px;border-bottom:1px solid #e5e5ee;text-align:left}th{font-size:13px;color:#667}"
    ".amount{text-align:right;font-variant-numeric:tabular-nums}tfoot td{font-weight:700;border-bottom:none}"
    "form{margin:12px 0}button{font:inherit;padding:8px 18px;border-radius:6px;border:1px solid #635bff;"
    "background:#fff;color:#635bff;cursor:pointer}button.primary{background:#635bff;color:#fff;padding:10px 28px}"
    "input{font:inherit;width:110px;padding:6px 8px;border:1px solid #ccd;border-radius:6px}"
    ".partial{padding-top:12px;border-top:1px solid #e5e5ee}.note{color:#667;font-size:13px}code{font-size:12px}"
)


def _page(title: str, body: str, *, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        content_type="text/html",
        text=f'<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>",
    )
