"""Refunds and disputes for the Stripe sandbox: what localstripe 1.15 lacks, done in the front.

localstripe refunds a charge (``POST /v1/refunds``, ``amount_refunded`` on the charge) but sends
no event for it, and it has no disputes. Real Stripe sends ``charge.refunded`` after a refund and
``charge.dispute.created`` / ``charge.dispute.closed`` as a dispute opens and closes (its test
cards open one on a charge). The front adds, signed like every sandbox event
(``Checkout.deliver``):

- ``POST /v1/refunds``: forwarded to localstripe; once it answered 2xx, ``charge.refunded`` (the
  charge as localstripe has it now, ``amount_refunded`` cumulative) goes to the webhooks before the
  answer. A replay of the same ``Idempotency-Key`` is answered by the idempotency middleware and
  sends nothing again.
- ``POST /_sandbox/charges/{id}/dispute`` ``{"amount": minor (default: the charge's), "reason": ...}``:
  opens a dispute (``needs_response``) on a charge localstripe has (or a PaymentIntent's latest
  charge, given ``pi_...``); ``charge.dispute.created``.
- ``POST /_sandbox/disputes/{id}/close`` ``{"outcome": "won"|"lost"}``: closes it;
  ``charge.dispute.closed``.
- ``GET /v1/disputes/{id}``: the dispute now. ``GET /v1/charges/{id}`` gets ``disputed`` (a
  dispute is open or was lost) from here; ``GET /v1/payment_intents/{id}`` gets the status Stripe
  would show and localstripe cannot (a delayed method's ``processing``, ``requires_payment_method``
  after it failed: ``CheckoutStore.intent_status``).

Disputes are kept in the front's store (``checkout.json`` with a data dir), like the sessions.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiohttp import web

from devtools.stripe_checkout import BackendCall, Checkout, ErrorResponse

log = structlog.get_logger(__name__)

Forward = Callable[[web.Request], Awaitable[web.Response]]
OPEN_STATUSES: Final = frozenset({"warning_needs_response", "needs_response", "under_review", "warning_under_review"})


class Money:
    """The routes; ``forward`` sends a request on to localstripe as it came, ``backend`` asks it."""

    def __init__(self, checkout: Checkout, error: ErrorResponse, forward: Forward, backend: BackendCall) -> None:
        self.checkout = checkout
        self.store = checkout.store
        self._error = error
        self._forward = forward
        self._backend = backend

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/refunds", self.refund)
        r.add_get("/v1/charges/{id}", self.charge)
        r.add_get("/v1/payment_intents/{id}", self.payment_intent)
        r.add_get("/v1/disputes/{id}", self.dispute)
        r.add_post("/_sandbox/charges/{id}/dispute", self.open_dispute)
        r.add_post("/_sandbox/disputes/{id}/close", self.close_dispute)

    # -- the API ------------------------------------------------------------------------------

    async def refund(self, request: web.Request) -> web.Response:
        response = await self._forward(request)
        if response.status >= 300 or not isinstance(response.body, bytes):
            return response
        refund = json.loads(response.body)
        status, charge = await self._backend("GET", f"/v1/charges/{refund['charge']}", None)
        if status == 200:
            log.info("stripe_sandbox.refunded", charge_id=charge["id"], amount=refund["amount"])
            await self.checkout.deliver("charge.refunded", self._with_dispute(charge))
        return response

    async def charge(self, request: web.Request) -> web.Response:
        return await self._patched(request, self._with_dispute)

    async def payment_intent(self, request: web.Request) -> web.Response:
        def overlay(intent: dict[str, Any]) -> dict[str, Any]:
            status = self.store.intent_status.get(str(intent.get("id")))
            return {**intent, "status": status} if status else intent

        return await self._patched(request, overlay)

    async def dispute(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") is None:
            return self._error(401, "invalid_request_error", "You did not provide an API key.")
        found = self.store.disputes.get(request.match_info["id"])
        if found is None:
            return self._missing(request.match_info["id"])
        return web.json_response(found)

    async def _patched(self, request: web.Request, change: Callable[[dict[str, Any]], dict[str, Any]]) -> web.Response:
        response = await self._forward(request)
        if response.status != 200 or not isinstance(response.body, bytes):
            return response
        return web.json_response(change(json.loads(response.body)))

    def _with_dispute(self, charge: dict[str, Any]) -> dict[str, Any]:
        mine = [d for d in self.store.disputes.values() if d["charge"] == charge.get("id")]
        disputed = any(d["status"] in OPEN_STATUSES or d["status"] == "lost" for d in mine)
        return {**charge, "disputed": disputed, "dispute": mine[-1]["id"] if mine else None}

    # -- the control endpoints ----------------------------------------------------------------

    async def open_dispute(self, request: web.Request) -> web.Response:
        """What a disputing cardholder does: a dispute on the charge, ``charge.dispute.created``."""
        charge_id = request.match_info["id"]
        params = await _json(request)
        if charge_id.startswith("pi_"):  # a PaymentIntent's id (what the credit profile shows): its charge
            _, intent = await self._backend("GET", f"/v1/payment_intents/{charge_id}", None)
            latest = intent.get("latest_charge")
            charge_id = str((latest.get("id") if isinstance(latest, dict) else latest) or charge_id)
        status, charge = await self._backend("GET", f"/v1/charges/{charge_id}", None)
        if status != 200:
            return self._error(404, "invalid_request_error", f"No such charge: '{charge_id}'", code="resource_missing")
        if any(d["charge"] == charge_id and d["status"] in OPEN_STATUSES for d in self.store.disputes.values()):
            return self._error(409, "invalid_request_error", f"charge {charge_id} has an open dispute already")
        amount = int(params.get("amount") or charge["amount"])
        if not 0 < amount <= charge["amount"]:
            return self._error(400, "invalid_request_error", "amount must be above 0 and at most the charge's")
        dispute = {
            "id": "dp_" + secrets.token_hex(12),
            "object": "dispute",
            "amount": amount,
            "currency": charge["currency"],
            "charge": charge_id,
            "payment_intent": charge.get("payment_intent"),
            "reason": str(params.get("reason") or "fraudulent"),
            "status": "needs_response",
            "created": int(self.store.clock()),
            "livemode": False,
            "is_charge_refundable": False,
            "metadata": {},
        }
        self.store.disputes[dispute["id"]] = dispute
        self.store.save()
        log.info("stripe_sandbox.dispute_opened", dispute_id=dispute["id"], charge_id=charge_id, amount=amount)
        await self.checkout.deliver("charge.dispute.created", dispute)
        return web.json_response(dispute)

    async def close_dispute(self, request: web.Request) -> web.Response:
        """The card network's decision: ``won`` (the money stays) or ``lost`` (it goes back)."""
        dispute = self.store.disputes.get(request.match_info["id"])
        if dispute is None:
            return self._missing(request.match_info["id"])
        outcome = str((await _json(request)).get("outcome"))
        if outcome not in ("won", "lost"):
            return self._error(400, "invalid_request_error", 'outcome must be "won" or "lost"', param="outcome")
        if dispute["status"] not in OPEN_STATUSES:
            return self._error(409, "invalid_request_error", f"dispute {dispute['id']} is {dispute['status']} already")
        dispute["status"] = outcome
        self.store.save()
        log.info("stripe_sandbox.dispute_closed", dispute_id=dispute["id"], outcome=outcome)
        await self.checkout.deliver("charge.dispute.closed", dispute)
        return web.json_response(dispute)

    def _missing(self, dispute_id: str) -> web.Response:
        return self._error(
            404, "invalid_request_error", f"No such dispute: '{dispute_id}'", code="resource_missing", param="dispute"
        )


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
