"""The console's pages: sign-in, home and Credit (the risk dashboard, a retailer's page and its
actions). Every write goes through the functions the API routes and `jobctl credit` call
(`services.credit_admin`, `services.credit.record_payment`), with the signed-in user as the actor;
reads through `activities.credit.admin` and `activities.credit.history`.

A form is a plain POST (works without JavaScript) answered by a redirect to the page with the
result shown (post/redirect/get), or by the page again with the refusal beside the field, status
422, and nothing changed.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import TypeAdapter, ValidationError
from temporalio.service import RPCError

from activities.credit import admin, history
from schemas.credit import RecordPayment
from schemas.errors import Refused
from schemas.money import AmountIn, format_money
from schemas.text import Reason
from services import credit_admin, loyalty
from services.credit import record_payment
from workers.api.limits import retry_after
from workers.api.routes import Stack
from workers.console import users
from workers.console.charts import Bar, bar_chart
from workers.console.session import Session

log = structlog.get_logger(__name__)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["role_names"] = users.ROLE_NAMES

PAGE = 25
SIGN_IN_PER_USERNAME = 5  # attempts a minute
SIGN_IN_PER_ADDRESS = 30
STATUS_ACTIONS: dict[str, admin.AdminAction] = {"pause": "pause", "unpause": "unpause", "block": "block"}
FIRST_FIELD = {
    "payment": "amount",
    "adjust": "amount",
    "limits": "credit_limit",
    "pause": "reason",
    "unpause": "reason",
    "block": "reason",
}
SAY_WHY = "Say why (1-500 characters): it goes in the audit log."
REFERENCE = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{2,99}$"
_amount = TypeAdapter(AmountIn)
_reason = TypeAdapter(Reason)
router = APIRouter(prefix="/console", include_in_schema=False)


def money(amount: Decimal | int | str | None, currency: str = "USD", locale: str | None = None) -> str:
    return "—" if amount is None else format_money(amount, currency, locale)


templates.env.filters["money"] = money


def _stack(request: Request) -> Stack:
    return request.app.state.stack


def _session(request: Request) -> Session:
    session = getattr(request.state, "console_session", None)
    if session is None:
        session = request.state.console_session = Session(_stack(request).settings, request)
    return session


async def _user(request: Request) -> users.User | None:
    uid = _session(request).user_id
    return await users.load_user(_stack(request).engine, uid) if uid is not None else None


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    session = _session(request)
    started = getattr(request.state, "console_started", None)
    context = {"csrf": session.csrf_token, "flash": session.pop_flash(), **context}
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    if started is not None:
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return session.save(response)


def redirect(request: Request, url: str) -> Response:
    return _session(request).save(RedirectResponse(url, status_code=303))


async def _signed_in(request: Request, permission: str | None = None) -> users.User | Response:
    """The user, or the answer instead: the sign-in page for nobody, 403 for a role without `permission`."""
    request.state.console_started = time.perf_counter()
    user = await _user(request)
    if user is None:
        return redirect(request, "/console/login?next=" + quote(request.url.path))
    if permission and not user.may(permission):
        log.info("console.denied", user_id=user.id, role=user.role, permission=permission)
        return render(request, "denied.html", {"user": user, "permission": permission}, status=403)
    return user


async def _form(request: Request) -> dict[str, str] | Response:
    """The POST's fields, or 403 when its CSRF token is missing or not this session's."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not _session(request).csrf_ok(fields.get("csrf")):
        return HTMLResponse(
            "<!doctype html><title>Form expired</title><p>This form expired or came from another site:"
            ' nothing was changed. <a href="/console">Reload the console</a> and try again.</p>',
            status_code=403,
        )
    return fields


# --- sign-in ------------------------------------------------------------------------------------


def _next(url: str | None) -> str:
    return url if url and url.startswith("/console") and not url.startswith("//") else "/console"


def _sign_in_context(request: Request, next: str | None, errors: dict[str, str], username: str) -> dict[str, Any]:
    """The sign-in page's: the local form unless CONSOLE_LOCAL_LOGIN=false, the provider's button
    when CONSOLE_OIDC_ISSUER is set (named CONSOLE_OIDC_NAME, else the issuer's host)."""
    settings = _stack(request).settings
    oidc_name = None
    if settings.console_oidc_issuer:
        oidc_name = settings.console_oidc_name or urlsplit(settings.console_oidc_issuer).hostname
    return {
        "next": _next(next),
        "errors": errors,
        "username": username,
        "local_login": settings.console_local_login,
        "oidc_name": oidc_name,
    }


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", _sign_in_context(request, next, {}, ""))


@router.post("/login")
async def login(request: Request) -> Response:
    if not _stack(request).settings.console_local_login:
        return redirect(request, "/console/login")  # OIDC only: no password is checked here
    fields = await _form(request)
    if isinstance(fields, Response):
        return fields
    username = fields.get("username", "").strip().lower()[:64]
    by_username, by_address = request.app.state.console_sign_in
    address = request.client.host if request.client else "-"
    wait = by_address.take(address) or by_username.take(username)
    if wait:
        log.info("console.sign_in_throttled")
        errors = {"password": f"Too many sign-in attempts: wait {retry_after(wait)} seconds, then try again."}
        context = _sign_in_context(request, fields.get("next"), errors, username)
        response = render(request, "login.html", context, status=429)
        response.headers["Retry-After"] = retry_after(wait)
        return response
    user = await users.authenticate(_stack(request).engine, username, fields.get("password", ""))
    if user is None:
        log.info("console.sign_in_refused")
        errors = {"password": "Wrong username or password. Check both and try again."}
        context = _sign_in_context(request, fields.get("next"), errors, username)
        return render(request, "login.html", context, status=401)
    _session(request).sign_in(user.id)
    log.info("console.signed_in", user_id=user.id, role=user.role)
    return redirect(request, _next(fields.get("next")))


@router.post("/logout")
async def logout(request: Request) -> Response:
    fields = await _form(request)
    if isinstance(fields, Response):
        return fields
    _session(request).sign_out()
    return redirect(request, "/console/login")


@router.get("")
async def home(request: Request) -> Response:
    user = await _signed_in(request)
    if isinstance(user, Response):
        return user
    return render(request, "home.html", {"user": user})


# --- credit: the risk dashboard -----------------------------------------------------------------


def _offset(value: str | None) -> int:
    return int(value) if value and value.isdigit() and int(value) <= 1_000_000 else 0


@router.get("/credit")
async def risk(request: Request, q: str = "", offset: str | None = None) -> Response:
    user = await _signed_in(request, "credit:read")
    if isinstance(user, Response):
        return user
    stack = _stack(request)
    at = _offset(offset)
    today = datetime.now(stack.settings.tz).date()
    view = await admin.risk_view(stack.engine, today)
    currency = stack.settings.credit_currency
    chart = bar_chart(
        [Bar(b["bucket"], b["outstanding"], money(b["outstanding"], currency)) for b in view.buckets],
        title="Outstanding by days overdue",
    )
    query = q.strip()[:100]
    if query:
        rows = await history.search_retailers(stack.engine, query, limit=PAGE, offset=at)
        listing = "search"
    else:
        rows = view.at_risk[at : at + PAGE + 1]
        found = await history.names(stack.engine, [r["retailer_id"] for r in rows])
        rows = [{**r, "id": r["retailer_id"], "name": found.get(r["retailer_id"], "")} for r in rows]
        listing = "at_risk"
    context = {
        "user": user,
        "today": today,
        "buckets": view.buckets,
        "currency": currency,
        "chart": chart,
        "q": query,
        "listing": listing,
        "rows": rows[:PAGE],
        "offset": at,
        "next_offset": at + PAGE if len(rows) > PAGE else None,
        "prev_offset": max(at - PAGE, 0) if at else None,
    }
    return render(request, "risk.html", context)


# --- credit: a retailer -------------------------------------------------------------------------


async def _retailer_page(
    request: Request,
    user: users.User,
    retailer_id: int,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
    ledger_offset: int = 0,
    audit_offset: int = 0,
) -> Response:
    stack = _stack(request)
    today = datetime.now(stack.settings.tz).date()
    if not 0 < retailer_id <= BIGINT:  # no such retailer: never a query PostgreSQL refuses (a 500)
        return render(request, "not_found.html", {"user": user, "what": f"retailer {retailer_id}"}, status=404)
    try:
        profile = await admin.profile(stack.engine, retailer_id, today)
    except admin.CreditRefused:
        return render(request, "not_found.html", {"user": user, "what": f"retailer {retailer_id}"}, status=404)
    ledger = await history.ledger_page(stack.engine, retailer_id, limit=PAGE, offset=ledger_offset)
    audit = await history.audit_page(stack.engine, retailer_id, limit=PAGE, offset=audit_offset)
    found = await history.names(stack.engine, [retailer_id])
    context = {
        "user": user,
        "retailer_id": retailer_id,
        "name": found.get(retailer_id, ""),
        "p": profile,
        "cur": profile["currency"],
        "loc": profile["locale"],
        "ledger": ledger[:PAGE],
        "ledger_offset": ledger_offset,
        "ledger_next": ledger_offset + PAGE if len(ledger) > PAGE else None,
        "audit": audit[:PAGE],
        "audit_offset": audit_offset,
        "audit_next": audit_offset + PAGE if len(audit) > PAGE else None,
        "messages": await history.recent_messages(stack.engine, retailer_id),
        "failed_orders": await history.failed_orders(stack.engine, retailer_id),
        "errors": errors or {},
        "values": values or {},
        "open_form": next((key.split(".")[0] for key in (errors or {})), None),
        "nonce": secrets.token_urlsafe(12),
    }
    return render(request, "retailer.html", context, status=status)


@router.get("/credit/retailers/{retailer_id}")
async def retailer(request: Request, retailer_id: int, ledger: str | None = None, audit: str | None = None) -> Response:
    user = await _signed_in(request, "credit:read")
    if isinstance(user, Response):
        return user
    return await _retailer_page(request, user, retailer_id, ledger_offset=_offset(ledger), audit_offset=_offset(audit))


def _check(errors: dict[str, str], key: str, adapter: TypeAdapter[Any], value: str, message: str) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        errors[key] = message
        return None


ACTIONS = ("payment", "adjust", "limits", "pause", "unpause", "block")
BIGINT = 2**63 - 1
"""The largest id PostgreSQL stores: a path id beyond it is no retailer (404), not a database error."""


@router.post("/credit/retailers/{retailer_id}/{action}")
async def act(request: Request, retailer_id: int, action: str) -> Response:
    user = await _signed_in(request, "credit:write")
    if isinstance(user, Response):
        return user
    fields = await _form(request)
    if isinstance(fields, Response):
        return fields
    if action not in ACTIONS or not 0 < retailer_id <= BIGINT:
        what = f"retailer {retailer_id}" if action in ACTIONS else f"the action {action!r}"
        return render(request, "not_found.html", {"user": user, "what": what}, status=404)
    stack = _stack(request)
    errors: dict[str, str] = {}
    values = {f"{action}.{k}": v for k, v in fields.items() if k != "csrf"}
    reason = fields.get("reason", "")
    try:
        if action == "payment":
            above_zero = "Give an amount above 0, e.g. 250.00."
            amount = _check(errors, "payment.amount", _amount, fields.get("amount", ""), above_zero)
            if amount is not None and amount <= 0:
                errors["payment.amount"] = "Give an amount above 0, e.g. 250.00."
            reference = fields.get("reference", "").strip()

            if not re.fullmatch(REFERENCE, reference):
                errors["payment.reference"] = (
                    "Give the bank or receipt reference: 3-100 letters, digits, '.', '_', ':' or '-'."
                )
            if errors:
                raise _Invalid
            if not await admin.retailer_exists(stack.engine, retailer_id):
                raise admin.CreditRefused(f"no retailer {retailer_id}", code="unknown_retailer")
            result = await record_payment(
                stack.client,
                RecordPayment(
                    retailer_id=retailer_id,
                    amount=amount,
                    reference=reference,
                    actor=user.actor,
                    business_timezone=stack.settings.business_timezone,
                    messaging_task_queue=stack.settings.messaging_task_queue,
                ),
                task_queue=stack.settings.task_queue,
            )
            done = f"Payment {reference} recorded."
            if result.payment.duplicate:
                done = f"Payment {reference} was recorded before: nothing changed."
            elif retailer_id in result.guardrails.resumed:
                done += " Credit resumed: the pause is lifted."
        elif action == "adjust":
            amount = _check(
                errors,
                "adjust.amount",
                _amount,
                fields.get("amount", ""),
                "Give an amount: + in the retailer's favour (35.90), - a charge (-12.00).",
            )
            if amount == 0:
                errors["adjust.amount"] = "Give a non-zero amount: + in the retailer's favour, - a charge."
            reason = _check(errors, "adjust.reason", _reason, reason, SAY_WHY)
            nonce = fields.get("nonce", "")
            if not re.fullmatch(r"[A-Za-z0-9_-]{8,40}", nonce):
                errors["adjust.amount"] = "This form is incomplete: reload the page and try again."
            if errors:
                raise _Invalid
            adjusted = await credit_admin.adjust(
                stack.engine,
                stack.client,
                stack.settings,
                retailer_id,
                amount,
                reason=reason,
                actor=user.actor,
                reference=f"console-{nonce}",
                today=datetime.now(stack.settings.tz).date(),
            )
            done = "Adjustment recorded." if not adjusted.duplicate else "This adjustment was recorded before."
            if adjusted.credit_resumed:
                done += " Credit resumed: the pause is lifted."
        elif action == "limits":
            wanted = _limits(errors, fields)
            reason = _check(errors, "limits.reason", _reason, reason, SAY_WHY)
            if errors:
                raise _Invalid
            limits = await credit_admin.set_limits(
                stack.engine, stack.client, stack.settings, retailer_id, wanted, actor=user.actor, reason=reason
            )
            done = "Limits changed."
            if limits.credit_resumed:
                done += " Credit resumed: the pause is lifted."
        else:
            reason = _check(errors, f"{action}.reason", _reason, reason, SAY_WHY)
            if errors:
                raise _Invalid
            change = await credit_admin.change_status(
                stack.engine,
                stack.client,
                stack.settings,
                retailer_id,
                STATUS_ACTIONS[action],
                reason=reason,
                actor=user.actor,
            )
            done = f"Credit {change.new_status.lower()} (was {change.old_status.lower()})."
            if change.notice_workflow_id is None:
                done += " The retailer could not be told: Temporal did not answer."
    except _Invalid:
        return await _retailer_page(request, user, retailer_id, errors=errors, values=values, status=422)
    except admin.AmountOutOfRange as refused:
        errors[f"{action}.amount"] = str(refused)
        return await _retailer_page(request, user, retailer_id, errors=errors, values=values, status=422)
    except Refused as refused:
        field = "reference" if action == "payment" and "reference" in str(refused) else FIRST_FIELD[action]
        errors[f"{action}.{field}"] = str(refused)
        return await _retailer_page(request, user, retailer_id, errors=errors, values=values, status=409)
    except (RPCError, RuntimeError) as error:  # Temporal unreachable (RuntimeError: a lazy client's connect)
        log.warning("console.temporal_unavailable", action=action, error=type(error).__name__)
        errors[f"{action}.{FIRST_FIELD[action]}"] = (
            "The job service did not answer. Try again in a minute: the same form records once."
        )
        return await _retailer_page(request, user, retailer_id, errors=errors, values=values, status=503)
    log.info("console.credit_action", user_id=user.id, retailer_id=retailer_id, action=action)
    _session(request).flash(done)
    return redirect(request, f"/console/credit/retailers/{retailer_id}")


def _limits(errors: dict[str, str], fields: dict[str, str]) -> dict[str, Any]:
    """The limits the form gives (blank: unchanged); `errors` names each one refused."""
    wanted: dict[str, Any] = {}
    rules = {
        "credit_limit": ("Give an amount of 0 or more, e.g. 5000.00, or leave it blank.", Decimal(0)),
        "max_order_value": ("Give an amount above 0, e.g. 1500.00, or leave it blank.", Decimal("0.01")),
    }
    for name, (message, least) in rules.items():
        value = fields.get(name, "").strip()
        if value:
            amount = _check(errors, f"limits.{name}", _amount, value, message)
            if amount is not None and not least <= amount < Decimal("1e12"):
                errors[f"limits.{name}"] = message
            wanted[name] = amount
    days = fields.get("max_outstanding_days", "").strip()
    if days:
        if days.isdigit() and int(days) <= 3650:
            wanted["max_outstanding_days"] = int(days)
        else:
            errors["limits.max_outstanding_days"] = "Give whole days, 0 to 3650, or leave it blank."
    if not wanted and not errors:
        errors["limits.credit_limit"] = "Change at least one limit: fill in the ones to change."
    return wanted


class _Invalid(Exception):
    """The form's fields were refused: `errors` says which."""


# --- loyalty: the review queue (read-only) --------------------------------------------------------

QUEUE_STATES = {"NEEDS_REVIEW": "Needs review", "PENDING": "Retrying", "RESOLVED": "Resolved"}


@router.get("/loyalty")
async def loyalty_queue(request: Request, state: str = "NEEDS_REVIEW", offset: str | None = None) -> Response:
    user = await _signed_in(request, "loyalty:read")
    if isinstance(user, Response):
        return user
    stack = _stack(request)
    state = state if state in QUEUE_STATES else "NEEDS_REVIEW"
    at = _offset(offset)
    rows = await loyalty.list_items(stack.engine, state=state, limit=PAGE + 1, offset=at)
    context = {
        "user": user,
        "state": state,
        "states": QUEUE_STATES,
        "totals": await loyalty.queue_totals(stack.engine),
        "currency": stack.settings.credit_currency,
        "rows": rows[:PAGE],
        "next_offset": at + PAGE if len(rows) > PAGE else None,
        "prev_offset": max(at - PAGE, 0) if at else None,
    }
    return render(request, "loyalty.html", context)
