"""`GET /manage/{token}`: the stable link a churn nudge carries (`activities/churn/managelinks.py`).

No API key: the signed token is the capability, and the route only ever sends the member to their
own Stripe customer-portal session (made on the click, through the API process's one Stripe
gateway) or to the company's CHURN_MANAGE_URL, with a 303. A malformed, forged or expired link, a
member with nowhere to go, or Stripe unavailable gets a clear page: HTML for a browser,
problem+json for anything else; never a 500. Opens are throttled per token and per client address
like the pay links' (PAY_LINK_TOKEN_PER_MINUTE, PAY_LINK_ADDRESS_PER_MINUTE; 429 with Retry-After).
"""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from activities.churn.managelinks import TOKEN_MAX_LENGTH, open_manage_link
from workers.api.limits import retry_after
from workers.api.problems import problem_response, responses
from workers.api.routes import StackDep
from workers.api.routes.pay import HEADERS, RETRY_AFTER_S, PayLinkLimits

api = APIRouter(tags=["manage"])

Token = Annotated[
    str, Path(min_length=1, max_length=TOKEN_MAX_LENGTH, description="the link's token, from the churn nudge")
]

_PAGES: dict[str, tuple[int, str, str, str]] = {
    "unknown": (
        404,
        "unknown_manage_link",
        "Unknown link",
        "This membership link is not valid. Please use the link in your latest message from us.",
    ),
    "expired": (
        410,
        "manage_link_expired",
        "This link has expired",
        "This membership link is too old. Please use the link in your latest message, or contact us.",
    ),
    "no_page": (
        404,
        "no_manage_page",
        "Nothing to manage online",
        "Your membership cannot be managed online. Please contact us to update it.",
    ),
    "throttled": (
        429,
        "rate_limited",
        "Too many requests",
        "This link was opened too often just now. Please try again in a minute.",
    ),
    "unavailable": (
        503,
        "unavailable",
        "Briefly unavailable",
        "We could not reach the payment provider. Please try again in a minute.",
    ),
}


def _html(status: int, title: str, detail: str, headers: dict[str, str]) -> HTMLResponse:
    body = (
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title></head>"
        "<body style='font-family:sans-serif;max-width:32em;margin:3em auto'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=headers)


@api.get(
    "/manage/{token}",
    summary="Open a churn nudge's membership link",
    responses={
        303: {
            "description": "to a new Stripe customer-portal session for the member, or to the company's"
            " CHURN_MANAGE_URL for a member without a Stripe customer"
        },
        **responses(404, 410, 422, 429, 503, codes=("unknown_manage_link", "manage_link_expired", "no_manage_page")),
    },
    status_code=303,
    response_class=Response,
    operation_id="openManageLink",
)
async def open_link(token: Token, request: Request, stack: StackDep) -> Response:
    """A customer-portal session is made on each click (a session lives minutes, so none is made
    ahead) and the answer is 303 to it; a member without a Stripe customer (or one Stripe no longer
    knows) goes to CHURN_MANAGE_URL. A link is valid MANAGE_LINK_DAYS (then 410). Opened too often
    (per link, per client address): 429 with Retry-After."""
    limits: PayLinkLimits = request.app.state.manage_limits
    wait = limits.wait(token, request.client.host if request.client else "-")
    if wait:
        state = "throttled"
    else:
        outcome = await open_manage_link(stack.engine, stack.stripe, stack.settings, token)
        if outcome.url is not None:
            return RedirectResponse(outcome.url, status_code=303, headers=HEADERS)
        state = outcome.state
    status, code, title, detail = _PAGES[state]
    headers = dict(HEADERS)
    if state == "unavailable":
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if state == "throttled":
        headers["Retry-After"] = retry_after(wait)
    if "text/html" in request.headers.get("accept", ""):
        return _html(status, title, detail, headers)
    return problem_response(status, detail, headers=headers, code=code)
