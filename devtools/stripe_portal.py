"""Stripe Billing's customer portal, as much as jobctl uses: `POST /v1/billing_portal/sessions`
and a tiny dev page at the session's URL (localstripe has no portal).

A session names a live customer (an unknown or deleted one is Stripe's 400 `resource_missing`);
its `url` is `{sandbox}/portal/{id}`, which shows the customer and a link back to `return_url`.
Sessions live in memory: Stripe's are short-lived, and nothing reads one back.
"""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from devtools.stripe_checkout import ErrorResponse, _page, _public_base, api_key_of, parse_stripe_form


class BillingPortal:
    def __init__(self, error: ErrorResponse, customer_exists: Callable[[web.Request, str], Any]) -> None:
        self._error = error
        self._customer_exists = customer_exists
        self.sessions: dict[str, dict[str, Any]] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/billing_portal/sessions", self.create)
        app.router.add_get("/portal/{id}", self.page)
        app.router.add_get("/membership/{company_id}", self.company_page)

    async def create(self, request: web.Request) -> web.Response:
        if api_key_of(request.headers.get("Authorization")) is None:
            return self._error(401, "invalid_request_error", "You did not provide an API key.")
        params = parse_stripe_form(await request.text())
        customer = params.get("customer")
        if not customer:
            return self._error(400, "invalid_request_error", "Missing required param: customer.", param="customer")
        if not await self._customer_exists(request, str(customer)):
            return self._error(
                400,
                "invalid_request_error",
                f"No such customer: '{customer}'",
                code="resource_missing",
                param="customer",
            )
        session_id = "bps_" + secrets.token_hex(12)
        session = {
            "id": session_id,
            "object": "billing_portal.session",
            "livemode": False,
            "created": int(time.time()),
            "customer": customer,
            "return_url": params.get("return_url"),
            "configuration": "bpc_sandbox",
            "locale": params.get("locale"),
            "on_behalf_of": None,
            "flow": None,
            "url": f"{_public_base(request)}/portal/{session_id}",
        }
        self.sessions[session_id] = session
        return web.json_response(session)

    async def company_page(self, request: web.Request) -> web.Response:
        """The dev stack's CHURN_MANAGE_URL: a company's own membership page, for members Stripe
        does not know (a real deployment points CHURN_MANAGE_URL at the company's account page)."""
        company = html.escape(request.match_info["company_id"])
        return _page("Manage your membership (sandbox)", f"<p>{company}'s membership page: sign in to manage it.</p>")

    async def page(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return _page("This link has expired", "<p>Ask for a new link to manage your membership.</p>", status=404)
        back = session.get("return_url")
        customer = html.escape(str(session["customer"]))
        body = f"<p>Customer <code>{customer}</code>: update the card, undo a cancellation.</p>"
        if back:
            body += f'<p><a href="{html.escape(str(back), quote=True)}">Return</a></p>'
        return _page("Manage your membership (sandbox)", body)
