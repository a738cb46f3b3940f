"""Churn: open a case, list and show cases (with their recovery actions), nudge by hand (answering
sent / deferred until when / capped), incentives, recovered / cancelled, company settings.

A key bound to a company only ever sees that company: a list is confined to it, and any case
or company of another (or one that does not exist) is 403, so ids cannot be probed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query, Request
from pydantic import BaseModel, Field

from activities.churn import admin
from schemas import ids
from schemas.churn import CaseState, CaseStatus, CompanySettings, ManualNudge, NudgeOutcome
from schemas.messaging import Channel
from schemas.text import Reason
from services import churn as service
from services import directory
from workers.api.auth import Principal, require
from workers.api.idempotency import HEADER
from workers.api.problems import Problem, responses
from workers.api.routes import Accepted, Page, PagingDep, RequestBody, StackDep, page, router

api = router("/v1/churn", "churn")
CaseId = Annotated[int, Path(ge=1, le=2**63 - 1, description="recovery_cases.id")]
CompanyId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="the company's slug")]


class OpenCase(RequestBody):
    membership_id: int = Field(ge=1, le=2**63 - 1)
    company_id: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="the membership's company: required for a key bound to no company",
    )


class CaseOpened(BaseModel):
    case_id: int
    workflow_id: str


class Case(BaseModel):
    case_id: int
    company_id: str
    membership_id: int
    status: CaseState
    trigger: str
    attempts: int
    opened_at: datetime
    closed_at: datetime | None
    last_nudge_at: datetime | None
    incentive_applied_at: datetime | None


class RecoveryAction(BaseModel):
    id: int
    type: str
    actor_type: Literal["system", "user"]
    actor_id_hash: str | None
    metadata: dict[str, Any]
    created_at: datetime


class CaseDetail(BaseModel):
    case: Case
    workflow: CaseStatus | None = Field(description="the case's workflow status; None: it has no workflow")
    actions: list[RecoveryAction]


class Nudge(RequestBody):
    channel: Channel | None = Field(default=None, description="default: the member's preferred (if allowed)")
    note: Reason | None = Field(
        default=None, description="accepted, not kept: free text stays out of the case's history"
    )


class Incentive(RequestBody):
    days: int | None = Field(default=None, ge=1, le=90, description="default: the company's incentive_days")


class IncentiveApplied(BaseModel):
    case_id: int
    days: int
    current_period_end: datetime | None


class SettingsIn(CompanySettings, RequestBody):
    """The settings as a request body: strict, as every body is (a misspelt rule is refused, not
    dropped), but what GET answers may be PUT back as it is, `company_id` included."""

    company_id: str | None = Field(default=None, description="optional (as GET answers it); the path's, if given")


class Company(CompanySettings):
    company_id: str


async def _owned_case(stack: Any, case_id: int, caller: Principal) -> dict[str, Any]:
    """The case, if the caller may see it: 403 for a bound key (whether or not it exists), else 404."""
    case = await admin.get_case(stack.engine, case_id)
    caller.confine(case["company_id"] if case else None)
    if case is None:
        raise Problem(404, f"no churn case {case_id}")
    return case


def _update_id(request: Request, kind: str, case_id: int) -> str | None:
    key = request.headers.get(HEADER)
    return f"{kind}:{case_id}:{key}" if key else None


@api.post("/cases", status_code=201, response_model=CaseOpened, responses=responses(404))
async def open_case(
    body: OpenCase, stack: StackDep, caller: Annotated[Principal, require("churn:write")]
) -> CaseOpened:
    """Open a case for the membership (or find its open one) and start its workflow."""
    from activities.churn.cases import CaseRefused

    if body.company_id is not None:
        caller.confine(body.company_id)
    company = caller.company_id or body.company_id
    if company is None:
        raise Problem(422, "body.company_id: required for a key bound to no company", field="body.company_id")
    try:
        case_id = await service.start_case(
            stack.client, stack.engine, stack.settings, body.membership_id, "manual", company_id=company
        )
    except CaseRefused:
        if caller.company_id is not None:
            raise Problem(403, f"key {caller.name} is confined to company {caller.company_id}") from None
        raise
    return CaseOpened(case_id=case_id, workflow_id=ids.churn_case(case_id))


@api.get("/cases", response_model=Page[Case])
async def list_cases(
    stack: StackDep,
    paging: PagingDep,
    caller: Annotated[Principal, require("churn:read")],
    status: Annotated[CaseState | None, Query()] = None,
    membership_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    company: Annotated[
        str | None, Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="default: the key's")
    ] = None,
) -> Page[Case]:
    """Cases, newest first, by status and member; a company-bound key lists its company's only."""
    if company is not None:
        caller.confine(company)
    rows = await admin.list_cases(
        stack.engine,
        company_id=company or caller.company_id,
        status=status,
        membership_id=membership_id,
        limit=paging.limit + 1,
        offset=paging.offset,
    )
    return page([Case(**r) for r in rows], paging)


@api.get("/cases/{case_id}", response_model=CaseDetail, responses=responses(404))
async def show_case(
    case_id: CaseId, stack: StackDep, caller: Annotated[Principal, require("churn:read")]
) -> CaseDetail:
    """The case, its workflow's status and its recovery actions."""
    case = await _owned_case(stack, case_id, caller)
    status = await service.case_status(stack.client, stack.engine, case_id, company_id=case["company_id"])
    actions = await admin.case_actions(stack.engine, case_id, case["company_id"])
    return CaseDetail(case=Case(**case), workflow=status, actions=[RecoveryAction(**a) for a in actions])


@api.post("/cases/{case_id}/nudge", response_model=NudgeOutcome, responses=responses(404, 409))
async def nudge(
    case_id: CaseId,
    body: Nudge,
    request: Request,
    stack: StackDep,
    caller: Annotated[Principal, require("churn:write")],
) -> NudgeOutcome:
    """Nudge the member now, under the company's rules; the answer says sent, deferred until when, or capped."""
    case = await _owned_case(stack, case_id, caller)
    request_ = ManualNudge(actor_id=caller.name, channel=body.channel, note=body.note, company_id=case["company_id"])
    return await service.nudge_now(
        stack.client, stack.engine, case_id, request_, update_id=_update_id(request, "nudge", case_id)
    )


@api.post("/cases/{case_id}/incentive", response_model=IncentiveApplied, responses=responses(404, 409))
async def incentive(
    case_id: CaseId,
    body: Incentive,
    request: Request,
    stack: StackDep,
    caller: Annotated[Principal, require("churn:write")],
) -> IncentiveApplied:
    """Extend the subscription once, by `days` or the company's incentive_days."""
    case = await _owned_case(stack, case_id, caller)
    days, period_end = await service.apply_incentive(
        stack.client,
        stack.engine,
        case_id,
        caller.name,
        days=body.days,
        company_id=case["company_id"],
        update_id=_update_id(request, "incentive", case_id),
    )
    return IncentiveApplied(case_id=case_id, days=days, current_period_end=period_end)


async def _end(stack: Any, case_id: int, signal: str, caller: Principal) -> Accepted:
    case = await _owned_case(stack, case_id, caller)
    await service.signal_case(
        stack.client,
        stack.engine,
        case_id,
        signal,
        {"actor_id": caller.name, "company_id": case["company_id"]},
        company_id=case["company_id"],
    )
    return Accepted(workflow_id=ids.churn_case(case_id), signal=signal)


@api.post("/cases/{case_id}/recovered", status_code=202, response_model=Accepted, responses=responses(404, 409))
async def recovered(case_id: CaseId, stack: StackDep, caller: Annotated[Principal, require("churn:write")]) -> Accepted:
    """The member is back: the case ends RECOVERED."""
    return await _end(stack, case_id, "recovered", caller)


@api.post("/cases/{case_id}/cancelled", status_code=202, response_model=Accepted, responses=responses(404, 409))
async def cancelled(case_id: CaseId, stack: StackDep, caller: Annotated[Principal, require("churn:write")]) -> Accepted:
    """The member left: the case ends CANCELLED."""
    return await _end(stack, case_id, "cancelled", caller)


async def _company(stack: Any, company_id: str, caller: Principal) -> CompanySettings:
    caller.confine(company_id)
    settings = await admin.company_settings(stack.engine, company_id)
    if settings is None:
        raise Problem(404, f"no company {company_id}")
    return settings


@api.get("/companies/{company_id}/settings", response_model=Company, responses=responses(404))
async def get_settings(
    company_id: CompanyId, stack: StackDep, caller: Annotated[Principal, require("churn:read")]
) -> Company:
    """The company's churn rules: offsets, channels, incentive days, quiet hours, cap, grace, time zone."""
    return Company(company_id=company_id, **(await _company(stack, company_id, caller)).model_dump())


@api.put("/companies/{company_id}/settings", response_model=Company, responses=responses(404))
async def put_settings(
    company_id: CompanyId, body: SettingsIn, stack: StackDep, caller: Annotated[Principal, require("churn:write")]
) -> Company:
    """Replace the company's churn rules (the database's limits), audited. Open cases use new
    channels, quiet hours, cap and time zone from their next nudge; offsets and grace apply to
    cases opened after the change. Written by the directory's one writer (`PUT /v1/companies/{id}`)."""
    if body.company_id not in (None, company_id):
        raise Problem(422, f"body.company_id: not the path's {company_id}", field="body.company_id")
    await _company(stack, company_id, caller)
    saved = CompanySettings(**body.model_dump(exclude={"company_id"}))
    await directory.set_company_rules(stack.engine, company_id, saved, actor=caller.name)
    return Company(company_id=company_id, **saved.model_dump())
