"""The console's Churn section (issue #37, second part): a company's cases (filtered, keyset-paged),
one case (its member, nudges with their message's status, incentives, the Stripe side, the audit
rows, the next nudge) and its actions, the results (KPIs, charted), and the company's rules.

Who sees what, as the API's churn routes: `churn:read` to look, `churn:write` to act. A company
admin is bound to one company and sees and acts on it only: another company's case, KPIs or rules
are 404, exactly like ones that do not exist, so ids cannot be probed. An operator (and a read-only
user) sees every company and picks one.

Actions go through the functions the API routes call (`services.churn.nudge_now`,
`apply_incentive`, `signal_case`, `services.directory.set_company_rules`) with `console:{username}`
as the actor: hashed into `recovery_actions` by the services, as is, into `audit_log`.
"""

from __future__ import annotations

import re
import secrets
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import SecretStr, ValidationError
from sqlalchemy import select
from temporalio.service import RPCError

from activities.churn import admin, history
from activities.churn.cases import DEV_ACTOR_HASH_KEY, hash_actor
from schemas.churn import CompanySettings, ManualNudge, NudgeOutcome
from schemas.errors import Refused
from schemas.tables import CASE_STATUSES, CASE_TRIGGERS, CHANNELS, ConsoleUser
from services import churn as service
from services import directory
from services.churn_kpis import ChurnKpis, company_kpis
from workers.console import users
from workers.console.charts import Bar, bar_chart
from workers.console.pages import PAGE, money, redirect, render, templates
from workers.console.pages import _form as form_of
from workers.console.pages import _session as session_of
from workers.console.pages import _signed_in as signed_in
from workers.console.pages import _stack as stack_of
from workers.log import mask_phone

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/console/churn", include_in_schema=False)

ACTIONS = ("nudge", "incentive", "recovered", "cancelled")
FIRST_FIELD = {"nudge": "channel", "incentive": "days", "recovered": "confirm", "cancelled": "confirm"}
SETTINGS_FIELDS = tuple(CompanySettings.model_fields)
STATUS_NAMES = {"OPEN": "open", "RECOVERED": "recovered", "CANCELLED": "cancelled", "TERMINATED": "terminated"}
TRIGGER_NAMES = {
    "payment_failed": "payment failed",
    "cancel_at_period_end": "cancels at period end",
    "manual": "opened by hand",
}
ACTION_NAMES = {
    "nudge_sms": "Nudge sent by SMS",
    "nudge_whatsapp": "Nudge sent by WhatsApp",
    "nudge_deferred": "Nudge held",
    "nudge_suppressed": "Nudge not sent",
    "incentive_applied": "Incentive applied at Stripe",
    "case_recovered": "Case closed: recovered",
    "case_cancelled": "Case closed: cancelled",
    "membership_terminated": "Subscription cancelled at Stripe",
}
CHANNEL_NAMES = {"sms": "SMS", "whatsapp": "WhatsApp"}
HELD = {
    "quiet_hours": "quiet hours",
    "daily_cap": "the daily cap",
    "paused": "messaging is paused",
    "channel_not_allowed": "the channel is not allowed",
}
templates.env.filters["masked"] = lambda phone: mask_phone(phone) if phone else "—"
templates.env.globals.update(status_names=STATUS_NAMES, trigger_names=TRIGGER_NAMES, action_names=ACTION_NAMES)


class NotYours(Exception):
    """A company the user may not see, or none such: the page answers 404."""


def scope(user: users.User, wanted: str | None) -> str | None:
    """The company the user's request is confined to: a company admin's own (asking for another
    is `NotYours`), else the one asked for (None: every company)."""
    if user.company_id is not None:
        if wanted not in (None, "", user.company_id):
            raise NotYours
        return user.company_id
    return wanted or None


def not_found(request: Request, user: users.User, what: str) -> Response:
    return render(request, "churn_not_found.html", {"user": user, "what": what}, status=404)


async def _one_company(request: Request, user: users.User, wanted: str | None) -> dict[str, Any] | None:
    """The company a KPI or settings page is about: the user's own, or the one asked for (an
    operator's default: the first); None when it is not theirs or does not exist."""
    engine = stack_of(request).engine
    try:
        company_id = scope(user, wanted)
    except NotYours:
        return None
    if company_id is None:
        every = await history.companies(engine)
        return every[0] if every else None
    return await history.company(engine, company_id)


def _local(at: datetime | None, zone: str) -> str:
    if at is None:
        return "—"
    local = at.astimezone(ZoneInfo(zone))
    return f"{local:%Y-%m-%d %H:%M} ({zone})"


def _hhmm(at: datetime, zone: str) -> str:
    return f"{at.astimezone(ZoneInfo(zone)):%H:%M} {zone} time"


def outcome_text(outcome: NudgeOutcome, zone: str) -> str:
    """What became of a nudge, as the person who asked reads it (times in the member's zone)."""
    channel = CHANNEL_NAMES.get(outcome.channel or "", outcome.channel or "")
    if outcome.outcome == "sent":
        return f"Nudge sent by {channel}."
    why = HELD.get(outcome.reason or "", outcome.reason or "no reason given")
    if outcome.outcome == "deferred":
        until = f" until {_hhmm(outcome.at, zone)}" if outcome.at else ""
        held = f"for {why}" if outcome.reason == "quiet_hours" else f"({why})"
        return f"Nudge held {held}{until}: it goes out by {channel} then, unless the case ends first."
    if outcome.outcome == "capped":
        again = f"; nudges are allowed again from {_hhmm(outcome.at, zone)}" if outcome.at else ""
        return f"Nudge not sent: {why} is reached{again}."
    return f"Nudge not sent: {why}."


# --- the cases list -------------------------------------------------------------------------------


def _day(value: str) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


@router.get("")
async def cases(
    request: Request,
    company: str = "",
    status: str = "",
    trigger: str = "",
    channel: str = "",
    opened_from: str = "",
    opened_to: str = "",
    before: str = "",
) -> Response:
    user = await signed_in(request, "churn:read")
    if isinstance(user, Response):
        return user
    try:
        company_id = scope(user, company)
    except NotYours:
        return not_found(request, user, f"company {company[:64]!r}")
    engine = stack_of(request).engine
    if company_id is not None and await history.company(engine, company_id) is None:
        return not_found(request, user, f"company {company_id[:64]!r}")
    errors: dict[str, str] = {}
    days = {"opened_from": opened_from.strip(), "opened_to": opened_to.strip()}
    parsed = {name: _day(value) if value else None for name, value in days.items()}
    for name, value in days.items():
        if value and parsed[name] is None:
            errors[f"filter.{name}"] = "Give a date as YYYY-MM-DD, e.g. 2026-11-30, or leave it blank."
    filters = {
        "company": company_id or "",
        "status": status if status in CASE_STATUSES else "",
        "trigger": trigger if trigger in CASE_TRIGGERS else "",
        "channel": channel if channel in CHANNELS else "",
        **days,
    }
    rows = await history.cases_page(
        engine,
        company_id=company_id,
        before=int(before) if before.isdigit() and len(before) < 19 else None,
        status=filters["status"] or None,
        trigger=filters["trigger"] or None,
        channel=filters["channel"] or None,
        opened_from=parsed["opened_from"],
        opened_to=parsed["opened_to"],
        limit=PAGE + 1,
    )
    context = {
        "user": user,
        "filters": filters,
        "companies": [] if user.company_id else await history.companies(engine),
        "rows": rows[:PAGE],
        "next_before": rows[PAGE - 1]["case_id"] if len(rows) > PAGE else None,
        "paged": bool(before),
        "errors": errors,
        "values": {f"filter.{k}": v for k, v in days.items()},
        "statuses": CASE_STATUSES,
        "triggers": CASE_TRIGGERS,
        "channels": CHANNELS,
    }
    return render(request, "churn_cases.html", context, status=422 if errors else 200)


# --- one case ---------------------------------------------------------------------------------------


async def _actors(request: Request, company_id: str) -> dict[str, str]:
    """Console users' stored actor hashes → their names (those of this company and those of all):
    the audit rows name them; anyone else stays a hash."""
    stack = stack_of(request)
    async with stack.engine.connect() as conn:
        names = (
            await conn.scalars(
                select(ConsoleUser.username).where(
                    (ConsoleUser.company_id == company_id) | ConsoleUser.company_id.is_(None)
                )
            )
        ).all()
    key = stack.settings.actor_hash_key or SecretStr(DEV_ACTOR_HASH_KEY)  # as `hash_actor` falls back
    return {hash_actor(f"console:{name}", key): f"console:{name}" for name in names}


async def _case_page(
    request: Request,
    user: users.User,
    case_id: int,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    stack = stack_of(request)
    case = await history.case(stack.engine, case_id, company_id=user.company_id)
    if case is None:
        return not_found(request, user, f"churn case {case_id}")
    company_id = case["company_id"]
    workflow, workflow_error = None, None
    try:
        workflow = await service.case_status(stack.client, stack.engine, case_id, company_id=company_id)
    except (RPCError, RuntimeError) as error:  # Temporal unreachable: the page still shows the database's
        log.warning("console.temporal_unavailable", page="churn_case", error=type(error).__name__)
        workflow_error = "The job service did not answer: the next nudge is unknown for now."
    timeline = await history.timeline(stack.engine, case_id, company_id)
    actors = await _actors(request, company_id)
    settings = await admin.company_settings(stack.engine, company_id)
    zone = case["timezone"]
    context = {
        "user": user,
        "case": case,
        "zone": zone,
        "local": lambda at: _local(at, zone),
        "workflow": workflow,
        "workflow_error": workflow_error,
        "nudges": [a for a in timeline if a["type"].startswith("nudge_")],
        "incentives": [a for a in timeline if a["type"] == "incentive_applied"],
        "stripe": [a for a in timeline if a["type"] in ("incentive_applied", "membership_terminated")],
        "stripe_events": await history.stripe_events(stack.engine, case["membership_id"], company_id),
        "audit": timeline,
        "actors": actors,
        "settings": settings,
        "errors": errors or {},
        "values": values or {},
        "open_form": next((key.split(".")[0] for key in (errors or {})), None),
        "nonce": secrets.token_urlsafe(12),
        "held": HELD,
    }
    return render(request, "churn_case.html", context, status=status)


@router.get("/cases/{case_id}")
async def case_page(request: Request, case_id: int) -> Response:
    user = await signed_in(request, "churn:read")
    if isinstance(user, Response):
        return user
    return await _case_page(request, user, case_id)


class _Invalid(Exception):
    """The form's fields were refused: `errors` says which."""


@router.post("/cases/{case_id}/{action}")
async def act(request: Request, case_id: int, action: str) -> Response:
    user = await signed_in(request, "churn:write")
    if isinstance(user, Response):
        return user
    fields = await form_of(request)
    if isinstance(fields, Response):
        return fields
    stack = stack_of(request)
    case = await history.case(stack.engine, case_id, company_id=user.company_id)
    if case is None:
        return not_found(request, user, f"churn case {case_id}")
    if action not in ACTIONS:
        return not_found(request, user, f"action {action[:40]!r}")
    company_id = case["company_id"]
    errors: dict[str, str] = {}
    values = {f"{action}.{k}": v for k, v in fields.items() if k != "csrf"}
    try:
        if action == "nudge":
            channel = fields.get("channel", "")
            if channel not in ("", *CHANNELS):
                errors["nudge.channel"] = "Choose WhatsApp, SMS, or the member's own channel."
            nonce = fields.get("nonce", "")
            if not re.fullmatch(r"[A-Za-z0-9_-]{8,40}", nonce):
                errors["nudge.channel"] = "This form is incomplete: reload the page and try again."
            if errors:
                raise _Invalid
            outcome = await service.nudge_now(
                stack.client,
                stack.engine,
                case_id,
                ManualNudge.model_validate(
                    {"actor_id": user.actor, "channel": channel or None, "company_id": company_id}
                ),
                update_id=f"nudge:{case_id}:console-{nonce}",
            )
            done = outcome_text(outcome, case["timezone"])
        elif action == "incentive":
            given = fields.get("days", "").strip()
            days = None
            nonce = fields.get("nonce", "")
            if not re.fullmatch(r"[A-Za-z0-9_-]{8,40}", nonce):
                errors["incentive.days"] = "This form is incomplete: reload the page and try again."
            if given:
                if given.isdigit() and 1 <= int(given) <= 90:
                    days = int(given)
                else:
                    errors["incentive.days"] = "Give whole days, 1 to 90, or leave it blank for the company's."
            if errors:
                raise _Invalid
            days, period_end = await service.apply_incentive(
                stack.client,
                stack.engine,
                case_id,
                user.actor,
                days=days,
                company_id=company_id,
                update_id=f"incentive:{case_id}:console-{nonce}",
            )
            done = f"Incentive applied at Stripe: {days} more days"
            done += f", the period now ends {_local(period_end, case['timezone'])}." if period_end else "."
        else:
            if fields.get("confirm") != "yes":
                errors[f"{action}.confirm"] = "Tick the box to confirm: this closes the case."
                raise _Invalid
            payload = {"actor_id": user.actor, "company_id": company_id}
            await service.signal_case(stack.client, stack.engine, case_id, action, payload, company_id=company_id)
            done = f"Marked {action}: the case closes as {action.upper()} as soon as its job takes the signal."
    except _Invalid:
        return await _case_page(request, user, case_id, errors=errors, values=values, status=422)
    except Refused as refused:
        errors[f"{action}.{FIRST_FIELD[action]}"] = str(refused)
        return await _case_page(request, user, case_id, errors=errors, values=values, status=409)
    except (RPCError, RuntimeError) as error:  # Temporal unreachable (RuntimeError: a lazy client's connect)
        log.warning("console.temporal_unavailable", action=action, error=type(error).__name__)
        errors[f"{action}.{FIRST_FIELD[action]}"] = "The job service did not answer. Try again in a minute."
        return await _case_page(request, user, case_id, errors=errors, values=values, status=503)
    log.info("console.churn_action", user_id=user.id, case_id=case_id, action=action)
    session_of(request).flash(done)
    return redirect(request, f"/console/churn/cases/{case_id}")


# --- results ----------------------------------------------------------------------------------------


def _percent(value: Decimal | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def _charts(kpis: ChurnKpis) -> dict[str, str]:
    cur = kpis.currency
    return {
        "rate": bar_chart(
            [Bar(r.label[5:], (r.rate or Decimal(0)) * 100, _percent(r.rate)) for r in kpis.weekly],
            title="Recovery rate by week (cases closed that week)",
            key="chart-rate",
            tone="chart-bar",
        ),
        "revenue": bar_chart(
            [Bar(r.label[5:], r.revenue, money(r.revenue, cur)) for r in kpis.weekly],
            title="Recovered revenue by week",
            key="chart-revenue",
            tone="chart-bar-ok",
        ),
        "steps": bar_chart(
            [Bar(f"after {r.label}", Decimal(r.recovered), str(r.recovered)) for r in kpis.by_step],
            title="Cases recovered by the number of nudges sent",
            key="chart-steps",
            tone="chart-bar",
            width=480,
        ),
        "channels": bar_chart(
            [
                Bar(CHANNEL_NAMES.get(r.label, r.label), (r.rate or Decimal(0)) * 100, _percent(r.rate))
                for r in kpis.by_channel
            ],
            title="Recovery rate by channel nudged on",
            key="chart-channels",
            tone="chart-bar",
            width=480,
        ),
    }


@router.get("/results")
async def results(request: Request, company: str = "") -> Response:
    user = await signed_in(request, "churn:read")
    if isinstance(user, Response):
        return user
    chosen = await _one_company(request, user, company)
    if chosen is None:
        return not_found(request, user, f"company {company[:64]!r}" if company else "company yet")
    stack = stack_of(request)
    today = datetime.now(ZoneInfo(chosen["timezone"])).date()
    kpis = await company_kpis(stack.engine, chosen["id"], today=today)
    assert kpis is not None
    context = {
        "user": user,
        "company": chosen,
        "companies": [] if user.company_id else await history.companies(stack.engine),
        "kpis": kpis,
        "charts": _charts(kpis),
        "percent": _percent,
    }
    return render(request, "churn_results.html", context)


# --- the company's rules ------------------------------------------------------------------------------


def _settings_values(rules: CompanySettings) -> dict[str, str]:
    return {
        "settings.reminder_offsets_days": ", ".join(str(d) for d in rules.reminder_offsets_days),
        "settings.channel_1": rules.channels[0],
        "settings.channel_2": rules.channels[1] if len(rules.channels) > 1 else "",
        **{
            f"settings.{name}": str(getattr(rules, name))
            for name in SETTINGS_FIELDS
            if name not in ("reminder_offsets_days", "channels")
        },
    }


async def _settings_page(
    request: Request,
    user: users.User,
    company: dict[str, Any],
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    stack = stack_of(request)
    rules = await admin.company_settings(stack.engine, company["id"])
    assert rules is not None
    context = {
        "user": user,
        "company": company,
        "companies": [] if user.company_id else await history.companies(stack.engine),
        "rules": rules,
        "errors": errors or {},
        "values": values if values is not None else _settings_values(rules),
        "audit": await history.company_audit(stack.engine, company["id"]),
        "channels": CHANNELS,
    }
    return render(request, "churn_settings.html", context, status=status)


@router.get("/settings")
async def settings_page(request: Request, company: str = "") -> Response:
    user = await signed_in(request, "churn:read")
    if isinstance(user, Response):
        return user
    chosen = await _one_company(request, user, company)
    if chosen is None:
        return not_found(request, user, f"company {company[:64]!r}" if company else "company yet")
    return await _settings_page(request, user, chosen)


def parse_settings(fields: dict[str, str]) -> tuple[CompanySettings | None, dict[str, str]]:
    """The form's rules validated by the API's schema (`CompanySettings`), or the refusals by field."""
    errors: dict[str, str] = {}
    raw: dict[str, Any] = {name: fields.get(name, "").strip() for name in SETTINGS_FIELDS if name != "channels"}
    offsets = [part.strip() for part in raw["reminder_offsets_days"].split(",") if part.strip()]
    if not all(re.fullmatch(r"\d{1,3}", part) for part in offsets):
        errors["settings.reminder_offsets_days"] = "Give whole days after opening, comma-separated, e.g. 0, 3, 7."
    raw["reminder_offsets_days"] = [int(part) for part in offsets if part.isdigit()]
    raw["channels"] = [c for c in (fields.get("channel_1", ""), fields.get("channel_2", "")) if c]
    messages = {
        "reminder_offsets_days": "Give at most 10 days after opening, each 0 to 90, e.g. 0, 3, 7.",
        "channels": "Choose a first channel, and a second one that is not the same (or none).",
        "incentive_days": "Give whole days, 0 (no incentive) to 90.",
        "quiet_hours_start": "Give an hour of the day, 0 to 23.",
        "quiet_hours_end": "Give an hour of the day, 0 to 23.",
        "daily_nudge_cap": "Give a whole number of nudges a day, 0 or more.",
        "grace_period_days": "Give whole days, 0 to 90.",
        "timezone": "Give an IANA time zone, e.g. Europe/Berlin or America/New_York.",
    }
    try:
        rules = CompanySettings.model_validate(raw)
    except ValidationError as refused:
        for problem in refused.errors():
            name = str(problem["loc"][0]) if problem["loc"] else "timezone"
            key = "settings.channel_1" if name == "channels" else f"settings.{name}"
            errors.setdefault(key, messages.get(name, problem["msg"]))
        return None, errors
    return (None, errors) if errors else (rules, errors)


@router.post("/settings")
async def save_settings(request: Request, company: str = "") -> Response:
    user = await signed_in(request, "churn:write")
    if isinstance(user, Response):
        return user
    fields = await form_of(request)
    if isinstance(fields, Response):
        return fields
    chosen = await _one_company(request, user, company or None)
    if chosen is None or (not company and user.company_id is None):
        return not_found(request, user, f"company {company[:64]!r}")
    values = {f"settings.{k}": v for k, v in fields.items() if k != "csrf"}
    rules, errors = parse_settings(fields)
    if rules is None:
        return await _settings_page(request, user, chosen, errors=errors, values=values, status=422)
    stack = stack_of(request)
    before = await admin.company_settings(stack.engine, chosen["id"])
    await directory.set_company_rules(stack.engine, chosen["id"], rules, actor=user.actor)
    log.info("console.churn_settings", user_id=user.id, company_id=chosen["id"])
    changed = [name for name in SETTINGS_FIELDS if before is None or getattr(before, name) != getattr(rules, name)]
    session_of(request).flash(
        f"Rules saved: {', '.join(n.replace('_', ' ') for n in changed)} changed." if changed else "Nothing changed."
    )
    return redirect(request, f"/console/churn/settings?company={chosen['id']}")
