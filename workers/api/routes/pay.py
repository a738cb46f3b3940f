"""`GET /pay/{token}`: the link every payment reminder carries (`activities/credit/paylinks.py`).

No API key: the token is the capability (random, 256 bits), and the route only ever sends the
payer to Stripe's page for what the link's debits owe now. It makes (or reuses) the Checkout
Session and answers 303 to it. A link already paid, being recorded, paid by a bank debit still on
its way ("pending"), replaced by a newer one,
unknown, or Stripe unavailable gets a clear page: HTML for a browser, problem+json (or a small
JSON state) for anything else; never a 500. Stripe is the API process's one gateway (`Stack.stripe`,
opened by the app's lifespan with PAY_PAGE_BASE_URL as the sessions' success URL).

A link is a URL anyone holding it can open as often as they like, and each open may cost a Stripe
request on the account's shared rate limit: opens are throttled per token and per client address
(429 with Retry-After), and a session's retrieve is reused for PAY_LINK_STRIPE_CACHE_SECONDS.
"""

from __future__ import annotations

import html
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

from activities.credit.paylinks import TOKEN_MAX_LENGTH, PayOutcome, SessionCache, open_pay_link
from config.settings import Settings
from workers.api.limits import RateLimiter, retry_after
from workers.api.problems import problem_response, responses
from workers.api.routes import StackDep

api = APIRouter(tags=["pay"])

Token = Annotated[
    str, Path(min_length=1, max_length=TOKEN_MAX_LENGTH, description="the link's token, from the reminder")
]
RETRY_AFTER_S = 30
# The token is a capability: no cache keeps the answer, no Referer carries the URL elsewhere.
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


class PayLinkLimits:
    """The API process's throttles and Stripe cache for `/pay/{token}` (settings PAY_LINK_*)."""

    def __init__(self, settings: Settings) -> None:
        self.by_token = RateLimiter(settings.pay_link_token_per_minute)
        self.by_address = RateLimiter(settings.pay_link_address_per_minute)
        self.sessions = SessionCache(settings.pay_link_stripe_cache_seconds)

    def wait(self, token: str, address: str) -> float:
        """0: this open may go on; otherwise the seconds to wait (one of the two throttles said no)."""
        return self.by_address.take(address) or self.by_token.take(token)


class PayLinkState(BaseModel):
    """A link that needs no payment now."""

    state: Literal["paid", "processing", "pending"]
    detail: str


_CODES = {
    "replaced": "pay_link_replaced",
    "unknown": "unknown_pay_link",
    "throttled": "rate_limited",
    "unavailable": "unavailable",
}
"""The problem code of each state that is not a payment page (`workers.api.problems.CODES`)."""

_PAGES: dict[str, tuple[int, str, str]] = {
    "paid": (200, "Already paid", "Everything this link was for has been paid. Thank you!"),
    "processing": (
        200,
        "Payment received",
        "Your payment was received and is being recorded. Nothing more to pay here.",
    ),
    "pending": (
        200,
        "Payment processing",
        "Your payment is on its way: a bank debit can take a few days. Nothing more to pay here;"
        " if it fails, this link lets you pay again.",
    ),
    "replaced": (
        410,
        "This link was replaced",
        "What you owe changed, so we sent you a newer link: please use the link in your latest reminder.",
    ),
    "unknown": (
        404,
        "Unknown payment link",
        "This payment link does not exist. Please use the link in your latest reminder.",
    ),
    "throttled": (
        429,
        "Too many requests",
        "This link was opened too often just now. Please try again in a minute.",
    ),
    "unavailable": (
        503,
        "Payments are briefly unavailable",
        "We could not reach the payment provider. Please try again in a minute.",
    ),
}


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _html(status: int, title: str, detail: str, outcome: PayOutcome, headers: dict[str, str] | None) -> HTMLResponse:
    amount = ""
    if outcome.amount is not None and outcome.amount > Decimal("0"):
        shown = f"{outcome.amount:,.2f} {(outcome.currency or '').upper()}"
        amount = f"<p>{html.escape(shown)}</p>"
    body = (
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title></head>"
        "<body style='font-family:sans-serif;max-width:32em;margin:3em auto'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p>{amount}</body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=headers)


@api.get(
    "/pay/{token}",
    response_model=PayLinkState,
    summary="Open a payment reminder's link",
    responses={
        303: {"description": "to the Stripe Checkout page for what the link's debits owe now"},
        **responses(404, 410, 422, 429, 503),
    },
    operation_id="openPayLink",
)
async def open_link(token: Token, request: Request, stack: StackDep) -> Response:
    """The Checkout Session is made on the first click (or reused while it is open and the amounts
    are unchanged; a partial payment meanwhile gets a session for what is left) and the answer is
    303 to Stripe's page. Two clicks at once make one session. Opened too often (per link, per
    client address): 429 with Retry-After."""
    limits: PayLinkLimits = request.app.state.pay_limits
    wait = limits.wait(token, request.client.host if request.client else "-")
    outcome = (
        PayOutcome("throttled")  # type: ignore[arg-type]  # a state of this page, not of the link
        if wait
        else await open_pay_link(stack.engine, stack.stripe, token, limits.sessions)
    )
    if outcome.state == "redirect":
        assert outcome.url
        return RedirectResponse(outcome.url, status_code=303, headers=HEADERS)
    status, title, detail = _PAGES[outcome.state]
    headers = dict(HEADERS)
    if outcome.state == "unavailable":
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if outcome.state == "throttled":
        headers["Retry-After"] = retry_after(wait)
    if _wants_html(request):
        return _html(status, title, detail, outcome, headers)
    if status == 200:
        return JSONResponse(PayLinkState(state=outcome.state, detail=detail).model_dump(), headers=headers)  # type: ignore[arg-type]
    return problem_response(status, detail, headers=headers, code=_CODES[outcome.state])
