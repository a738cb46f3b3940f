"""The console's Loyalty actions (issue #37): a reconciliation item's page (its attempts, its order,
its customer, its workflow's status and a Stripe check of the order's payment), **resolve** (a
note, optionally points) and **retry**, and a customer's ledger.

Resolve and retry signal the item's workflow through `services.loyalty.resolve_manually|retry_now`,
as `POST /v1/loyalty/items/{id}/resolve|retry` and `jobctl loyalty resolve|retry` do, with
`console:{username}` as the actor (recorded on the item as `resolved_by`). The workflow's status is
`services.loyalty.reconciliation_status` (`jobctl loyalty show`); the Stripe check is the API
process's gateway's `payment_intent_status`, the read the workflow's own check makes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from schemas.payments import PaymentIntentState, PaymentIntentStatus
from schemas.text import Reason
from services import loyalty
from workers.console import users
from workers.console.ops import workflow_url
from workers.console.pages import PAGE, _form, _offset, _session, _signed_in, _stack, redirect, render

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/console/loyalty", include_in_schema=False)
_note = TypeAdapter(Reason)
MAX_POINTS = 1_000_000_000
BIGINT = 2**63 - 1
"""Ids past PostgreSQL's bigint name nothing: not found, not a database error."""
SETTLE_S = 3.0
"""How long an action waits for the item's workflow to act on the signal, so the page it returns
to shows the outcome (a worker that is down: the page says the request is on its way)."""


class _Invalid(Exception):
    pass


async def _item_page(
    request: Request,
    user: users.User,
    item_id: int,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    stack = _stack(request)
    item = await loyalty.get_item(stack.engine, item_id) if 0 < item_id <= BIGINT else None
    if item is None:
        return render(request, "not_found.html", {"user": user, "what": f"loyalty item {item_id}"}, status=404)
    workflow: Any = None
    workflow_problem: str | None = None
    steps: list[dict[str, Any]] = []
    try:
        workflow = await asyncio.wait_for(loyalty.reconciliation_status(stack.client, item_id), timeout=5)
        steps = await asyncio.wait_for(loyalty.reconciliation_history(stack.client, item_id), timeout=5)
    except loyalty.LoyaltyRefused as refused:
        workflow_problem = str(refused)
    except (RPCError, RuntimeError, TimeoutError) as error:  # Temporal unreachable
        log.warning("console.temporal_unavailable", page="loyalty_item", error=type(error).__name__)
        workflow_problem = "The job service (Temporal) did not answer: the workflow's state is unknown for now."
    payment: PaymentIntentState | None = None
    payment_problem: str | None = None
    if item["payment_intent_id"]:
        if stack.stripe is None:
            payment_problem = "Stripe is not configured for this process (STRIPE_SECRET_KEY)."
        else:
            try:
                payment = await asyncio.wait_for(
                    stack.stripe.payment_intent_status(PaymentIntentStatus(id=item["payment_intent_id"])), timeout=10
                )
            except ApplicationError as error:
                payment_problem = f"Stripe refused the check: {error.message}"
            except TimeoutError:
                payment_problem = "Stripe did not answer within 10 seconds."
    context = {
        "user": user,
        "section": "loyalty",
        "item": item,
        "workflow": workflow,
        "workflow_problem": workflow_problem,
        "steps": steps,
        "workflow_link": workflow_url(stack.settings, f"loyalty-reconcile/{item_id}"),
        "payment": payment,
        "payment_problem": payment_problem,
        "order_rows": await loyalty.order_ledger(stack.engine, item["order_id"], item_id),
        "currency": stack.settings.credit_currency,
        "errors": errors or {},
        "values": values or {},
    }
    return render(request, "loyalty_item.html", context, status=status)


@router.get("/items/{item_id}")
async def item_page(request: Request, item_id: int) -> Response:
    user = await _signed_in(request, "loyalty:read")
    if isinstance(user, Response):
        return user
    return await _item_page(request, user, item_id)


async def _settled(request: Request, item_id: int, before: dict[str, Any], action: str) -> dict[str, Any] | None:
    """The item once its workflow has acted (resolve: RESOLVED; retry: changed in any way), or None
    after SETTLE_S."""
    engine = _stack(request).engine
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = await loyalty.get_item(engine, item_id)
        if now is None:
            return None
        if now["status"] == "RESOLVED" if action == "resolve" else now["updated_at"] != before["updated_at"]:
            return now
    return None


@router.post("/items/{item_id}/{action}")
async def act(request: Request, item_id: int, action: str) -> Response:
    user = await _signed_in(request, "loyalty:write")
    if isinstance(user, Response):
        return user
    fields = await _form(request)
    if isinstance(fields, Response):
        return fields
    stack = _stack(request)
    before = await loyalty.get_item(stack.engine, item_id) if 0 < item_id <= BIGINT else None
    if before is None or action not in ("resolve", "retry"):
        what = f"loyalty item {item_id}" if before is None else f"action {action!r}"
        return render(request, "not_found.html", {"user": user, "what": what}, status=404)
    errors: dict[str, str] = {}
    values = {f"{action}.{k}": v for k, v in fields.items() if k != "csrf"}
    field = "note" if action == "resolve" else "reason"
    try:
        if action == "resolve":
            try:
                note = _note.validate_python(fields.get("note", ""))
            except ValidationError:
                errors["resolve.note"] = "Say why (1-500 characters): it is stored with the resolution."
            raw = fields.get("points", "").strip().replace(",", "")
            points: int | None = None
            if raw:
                sign = raw[0] in "+-"
                if not raw[1 if sign else 0 :].isdigit() or len(raw) > 12 or not 0 < abs(int(raw)) <= MAX_POINTS:
                    errors["resolve.points"] = (
                        "Give whole points, + to add or - to take (e.g. 120 or -40), not 0; or leave it blank."
                    )
                else:
                    points = int(raw)
            if errors:
                raise _Invalid
            await loyalty.resolve_manually(stack.client, item_id, user.actor, note, points_adjustment=points)
        else:
            await loyalty.retry_now(stack.client, item_id, user.actor)
    except _Invalid:
        return await _item_page(request, user, item_id, errors=errors, values=values, status=422)
    except ValidationError:  # the signal's payload: an actor the workflow cannot take (a name over 56 characters)
        errors[f"{action}.{field}"] = "Your username is too long to be recorded on the item: ask an operator."
        return await _item_page(request, user, item_id, errors=errors, values=values, status=422)
    except loyalty.LoyaltyRefused as refused:
        errors[f"{action}.{field}"] = str(refused)
        return await _item_page(request, user, item_id, errors=errors, values=values, status=409)
    except (RPCError, RuntimeError) as error:  # Temporal unreachable (RuntimeError: a lazy client's connect)
        log.warning("console.temporal_unavailable", action=f"loyalty_{action}", error=type(error).__name__)
        errors[f"{action}.{field}"] = "The job service did not answer. Nothing was sent: try again in a minute."
        return await _item_page(request, user, item_id, errors=errors, values=values, status=503)
    log.info("console.loyalty_action", user_id=user.id, item_id=item_id, action=action)
    after = await _settled(request, item_id, before, action)
    if after is None:
        done = "Sent to the item's workflow: it acts on it as soon as a worker takes it (reload to see)."
    elif action == "resolve" or after["status"] == "RESOLVED":
        done = f"Item resolved: {after['resolution']}."
    else:
        done = f"Retry started: the item is {after['status'].replace('_', ' ').lower()} (attempt {after['attempts']})."
    _session(request).flash(done)
    return redirect(request, f"/console/loyalty/items/{item_id}")


@router.get("/customers/{customer_id}")
async def customer_ledger(request: Request, customer_id: int, offset: str | None = None) -> Response:
    user = await _signed_in(request, "loyalty:read")
    if isinstance(user, Response):
        return user
    at = _offset(offset)
    found = None
    if 0 < customer_id <= BIGINT:
        found = await loyalty.customer_ledger(_stack(request).engine, customer_id, limit=PAGE + 1, offset=at)
    if found is None:
        return render(request, "not_found.html", {"user": user, "what": f"customer {customer_id}"}, status=404)
    rows = found.pop("rows")
    context = {
        "user": user,
        "section": "loyalty",
        "c": found,
        "rows": rows[:PAGE],
        "page_sum": sum(r["points"] for r in rows[:PAGE]),
        "next_offset": at + PAGE if len(rows) > PAGE else None,
        "prev_offset": max(at - PAGE, 0) if at else None,
        "offset": at,
    }
    return render(request, "loyalty_customer.html", context)
