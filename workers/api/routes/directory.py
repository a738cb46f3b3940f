"""The directory (issue #34): the business's own rows, PUT and read by the business's own ids.

`PUT` is an upsert: 201 with the stored row when it was new, 200 when it existed (changed or
not: the same body twice changes nothing). The body is the row's fields (`schemas.directory`'s
`...Fields`, the one validation the import and the CLI use too); the id is the path's. Bad input
is 422 naming the field and writes nothing; a row the stored state refuses (an account of an
unknown retailer, a status that cannot go back) is 404 or 409 with its `code`. Every write goes
through `services.directory`, the one writer; what follows a commit (a limit's guardrail
re-check) is done before the answer, so the answer shows its outcome.

A key bound to a company may PUT and read its own company and its members; retailers, orders and
customers have no company, and such a key is 403 there.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from schemas.directory import (
    CompanyFields,
    CompanyIn,
    CreditAccountFields,
    CreditAccountIn,
    CustomerFields,
    CustomerIn,
    MemberFields,
    MemberIn,
    OrderFields,
    OrderIn,
    RetailerFields,
    RetailerIn,
)
from schemas.money import Amount
from schemas.orders import PendingOrderStatus
from schemas.tables import EXTERNAL_ID
from services import directory
from workers.api.auth import Principal, require
from workers.api.problems import Problem, responses
from workers.api.routes import RequestBody, Stack, StackDep, router

api = router("/v1", "directory")

# `:path`: an external id may hold a "/" (`EXTERNAL_ID`), which a plain segment would not match.
ExternalIdPath = Annotated[str, Path(pattern=EXTERNAL_ID, description="the business's own id")]
CompanyIdPath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="the company's slug")]


def put_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """A PUT answers the stored row: 201 when it created it, 200 when it was there (changed or not)."""
    return {201: {"model": model, "description": "created"}, **responses(404, 409)}


def confined(checked: Any) -> Any:
    """`checked` (a `require(...)`), then the path's company: a key bound to another company is
    403 before its body is even read, so it learns nothing of the company from a 422 or a 404."""

    # `checked` as the default, not in an `Annotated` (annotations are strings, read in this
    # module's globals, where `checked` is not)
    async def check(company_id: CompanyIdPath, caller: Principal = checked) -> Principal:
        caller.confine(company_id)
        return caller

    return Depends(check)


def _examples(model: type[BaseModel]) -> dict[str, Any]:
    """The body's OpenAPI example: the one its model declares (`schemas.directory`)."""
    value = model.model_json_schema()["examples"][0]
    return {"example": {"summary": f"a {model.__name__.removesuffix('Fields').lower()}", "value": value}}


# --------------------------------------------------------------------------- answers


class RetailerOut(BaseModel):
    id: int = Field(description="jobctl's retailer id (the credit routes' `retailer_id`)")
    external_id: str
    name: str
    phone: str | None
    preferred_channel: Literal["whatsapp", "sms"]
    timezone: str
    locale: str
    insights_opt_in: bool = Field(description="receives the weekly insights message")
    credit_status: Literal["ACTIVE", "PAUSED", "BLOCKED"]
    created_at: datetime


class CreditAccountOut(BaseModel):
    retailer_id: int
    retailer_external_id: str
    credit_limit: Amount
    available_credit: Amount = Field(description="the limit minus what is outstanding")
    max_order_value: Amount
    max_outstanding_days: int
    payment_terms_days: int
    currency: str
    credit_status: Literal["ACTIVE", "PAUSED", "BLOCKED"] = Field(
        description="after the change: a raised limit may have lifted a system pause"
    )
    paused_by: str | None
    updated_at: datetime


class ShopOrderOut(BaseModel):
    id: int = Field(description="jobctl's order id: `POST /v1/orders/{order_id}/...` takes it")
    external_id: str
    retailer_id: int
    retailer_external_id: str
    amount: Amount
    payment_mode: Literal["CREDIT", "COD"]
    status: Literal["PENDING", "CONFIRMED", "DELIVERED", "CANCELLED", "FAILED"]
    placed_at: datetime


class CompanyOut(BaseModel):
    id: str
    name: str
    timezone: str
    reminder_offsets_days: list[int]
    channels: list[Literal["whatsapp", "sms"]]
    incentive_days: int
    quiet_hours_start: int
    quiet_hours_end: int
    daily_nudge_cap: int
    grace_period_days: int
    created_at: datetime


class MemberOut(BaseModel):
    id: int = Field(description="jobctl's membership id (the churn routes' `membership_id`)")
    company_id: str
    external_id: str
    name: str
    phone: str | None
    timezone: str | None
    preferred_channel: Literal["whatsapp", "sms"]
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    status: Literal["ACTIVE", "PAST_DUE", "CANCELLING", "CANCELLED", "TERMINATED"]
    current_period_end: datetime | None
    created_at: datetime


class CustomerOut(BaseModel):
    id: int = Field(description="jobctl's customer id (the loyalty routes' `customer_id`)")
    external_id: str
    name: str
    phone: str | None
    earn_rate: Decimal
    loyalty_points: int = Field(description="the sum of the loyalty ledger; never set here")
    stripe_customer_id: str | None
    created_at: datetime


class ShopCheckoutStarted(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"follow_up_after_seconds": 3600}]})

    follow_up_after_seconds: int | None = Field(
        default=None, ge=60, le=86_400, description="default ORDER_FOLLOWUP_AFTER"
    )


# --------------------------------------------------------------------------- the one path of a PUT


async def _put(
    stack: Stack, response: Response, write: Any, row: Any, caller: Principal, kind: str, **read: Any
) -> dict[str, Any]:
    """Write one row through the directory's writer in its own transaction, do what follows the
    commit, and answer the stored row (201 if new). A refusal is 404 (`unknown_...`) or 409."""
    async with stack.engine.begin() as conn:
        result: directory.BatchResult = await write(conn, [row], actor=caller.name)
    if result.refused:
        [refusal] = result.refused
        status = 404 if refusal.code.startswith("unknown_") else 409
        field = f"body.{refusal.field}" if refusal.field else None
        raise Problem(status, refusal.reason, field=field, code=refusal.code)
    if result.effects:
        await directory.apply_effects(stack.client, stack.engine, stack.settings, result.effects)
    if result.upserted[0].created:
        response.status_code = 201
    return await _get(stack, kind, **read)


async def _get(stack: Stack, kind: str, *, external_id: str, company_id: str | None = None) -> dict[str, Any]:
    async with stack.engine.connect() as conn:
        found = await directory.read(conn, kind, external_id, company_id=company_id)
    if found is None:
        what = kind.replace("_", " ")
        raise Problem(404, f"no {what} {external_id}" + (f" in company {company_id}" if company_id else ""))
    return found


# --------------------------------------------------------------------------- retailers and credit accounts
# (the longer paths first: `{external_id:path}` would take "shop-1/credit-account" whole)


@api.put(
    "/retailers/{external_id:path}/credit-account",
    operation_id="putCreditAccount",
    summary="Open or change a retailer's credit account",
    response_model=CreditAccountOut,
    responses=put_responses(CreditAccountOut),
)
async def put_credit_account(
    external_id: ExternalIdPath,
    body: Annotated[CreditAccountFields, Body(openapi_examples=_examples(CreditAccountFields))],
    stack: StackDep,
    response: Response,
    caller: Annotated[Principal, require("directory:write")],
) -> dict[str, Any]:
    """A new account has all of its limit available. A changed limit goes through the credit
    ledger (available credit follows, audited); when it may lift a system pause or now pause the
    retailer, the guardrails are re-checked before the answer, which shows the resulting
    `credit_status`. The currency cannot change while debits are open (409 `currency_locked`)."""
    row = CreditAccountIn(retailer_external_id=external_id, **body.model_dump())
    return await _put(
        stack, response, directory.upsert_credit_accounts, row, caller, "credit_account", external_id=external_id
    )


@api.get(
    "/retailers/{external_id:path}/credit-account",
    operation_id="getCreditAccount",
    summary="A retailer's credit account",
    response_model=CreditAccountOut,
    responses=responses(404),
)
async def get_credit_account(
    external_id: ExternalIdPath, stack: StackDep, _: Annotated[Principal, require("directory:read")]
) -> dict[str, Any]:
    """Limits, available credit, terms, currency and the retailer's credit status."""
    return await _get(stack, "credit_account", external_id=external_id)


@api.put(
    "/retailers/{external_id:path}",
    operation_id="putRetailer",
    summary="Create or update a retailer",
    response_model=RetailerOut,
    responses=put_responses(RetailerOut),
)
async def put_retailer(
    external_id: ExternalIdPath,
    body: Annotated[RetailerFields, Body(openapi_examples=_examples(RetailerFields))],
    stack: StackDep,
    response: Response,
    caller: Annotated[Principal, require("directory:write")],
) -> dict[str, Any]:
    """The retailer named by the business's own id, replaced by the body (a field left out takes
    its default). The phone (any notation with its country code, stored in E.164) is the one the
    next message goes to: messages read it when they are sent."""
    row = RetailerIn(external_id=external_id, **body.model_dump())
    return await _put(stack, response, directory.upsert_retailers, row, caller, "retailer", external_id=external_id)


@api.get(
    "/retailers/{external_id:path}",
    operation_id="getRetailer",
    summary="A retailer by the business's own id",
    response_model=RetailerOut,
    responses=responses(404),
)
async def get_retailer(
    external_id: ExternalIdPath, stack: StackDep, _: Annotated[Principal, require("directory:read")]
) -> dict[str, Any]:
    """The stored retailer, with jobctl's numeric id (the credit routes take it)."""
    return await _get(stack, "retailer", external_id=external_id)


# --------------------------------------------------------------------------- shop orders


@api.post(
    "/shop-orders/{external_id:path}/checkout-started",
    operation_id="startShopOrderCheckout",
    summary="Start a shop order's checkout clock",
    response_model=PendingOrderStatus,
    responses=responses(404, 409),
)
async def shop_order_checkout_started(
    external_id: ExternalIdPath,
    stack: StackDep,
    caller: Annotated[Principal, require("orders:write")],
    body: Annotated[ShopCheckoutStarted | None, Body()] = None,
) -> PendingOrderStatus:
    """`POST /v1/orders/{order_id}/checkout-started` for the order PUT under this id: the same
    service (`services.orders.start_pending_order`), idempotent by order."""
    from workers.api.routes.orders import CheckoutStarted, checkout_started

    order = await _get(stack, "order", external_id=external_id)
    started = CheckoutStarted(follow_up_after_seconds=body.follow_up_after_seconds if body else None)
    return await checkout_started(order["id"], stack, caller, started)


@api.put(
    "/shop-orders/{external_id:path}",
    operation_id="putShopOrder",
    summary="Record a shop order",
    response_model=ShopOrderOut,
    responses=put_responses(ShopOrderOut),
)
async def put_shop_order(
    external_id: ExternalIdPath,
    body: Annotated[OrderFields, Body(openapi_examples=_examples(OrderFields))],
    stack: StackDep,
    response: Response,
    caller: Annotated[Principal, require("directory:write")],
) -> dict[str, Any]:
    """Record the order (history for the insights; the row a checkout's clock needs). Recording
    takes no credit: placing it does (`POST /v1/orders/{order_id}/placement`). Its status moves
    forward only (409 `order_status_refused`); a placed credit order fails through
    `POST /v1/orders/{order_id}/failed`, which gives its credit back."""
    row = OrderIn(external_id=external_id, **body.model_dump())
    return await _put(stack, response, directory.upsert_orders, row, caller, "order", external_id=external_id)


@api.get(
    "/shop-orders/{external_id:path}",
    operation_id="getShopOrder",
    summary="A shop order by the shop's own id",
    response_model=ShopOrderOut,
    responses=responses(404),
)
async def get_shop_order(
    external_id: ExternalIdPath, stack: StackDep, _: Annotated[Principal, require("directory:read")]
) -> dict[str, Any]:
    """The stored order, with jobctl's numeric order id (the order routes take it)."""
    return await _get(stack, "order", external_id=external_id)


# --------------------------------------------------------------------------- companies and members


@api.put(
    "/companies/{company_id}/members/{external_id:path}",
    operation_id="putMember",
    summary="Create or update a company's member",
    response_model=MemberOut,
    responses=put_responses(MemberOut),
)
async def put_member(
    company_id: CompanyIdPath,
    external_id: ExternalIdPath,
    body: Annotated[MemberFields, Body(openapi_examples=_examples(MemberFields))],
    stack: StackDep,
    response: Response,
    caller: Annotated[Principal, confined(require("directory:write", company_data=True))],
) -> dict[str, Any]:
    """The member named by the company's own member id. A Stripe customer or subscription id
    another member holds is 409 `stripe_id_taken` (a webhook must find one member)."""
    row = MemberIn(company_id=company_id, external_id=external_id, **body.model_dump())
    return await _put(
        stack, response, directory.upsert_members, row, caller, "member", external_id=external_id, company_id=company_id
    )


@api.get(
    "/companies/{company_id}/members/{external_id:path}",
    operation_id="getMember",
    summary="A company's member by the company's own id",
    response_model=MemberOut,
    responses=responses(404),
)
async def get_member(
    company_id: CompanyIdPath,
    external_id: ExternalIdPath,
    stack: StackDep,
    caller: Annotated[Principal, confined(require("directory:read", company_data=True))],
) -> dict[str, Any]:
    """The stored member, with jobctl's membership id (the churn routes take it)."""
    return await _get(stack, "member", external_id=external_id, company_id=company_id)


@api.put(
    "/companies/{company_id}",
    operation_id="putCompany",
    summary="Create or update a company and its churn rules",
    response_model=CompanyOut,
    responses=put_responses(CompanyOut),
)
async def put_company(
    company_id: CompanyIdPath,
    body: Annotated[CompanyFields, Body(openapi_examples=_examples(CompanyFields))],
    stack: StackDep,
    response: Response,
    caller: Annotated[Principal, confined(require("directory:write", company_data=True))],
) -> dict[str, Any]:
    """The company and its churn rules (audited). Open cases use new channels, quiet hours, daily
    cap and time zone from their next nudge; reminder offsets and the grace period apply to cases
    opened after the change."""
    row = CompanyIn(id=company_id, **body.model_dump())
    return await _put(stack, response, directory.upsert_companies, row, caller, "company", external_id=company_id)


@api.get(
    "/companies/{company_id}",
    operation_id="getCompany",
    summary="A company and its churn rules",
    response_model=CompanyOut,
    responses=responses(404),
)
async def get_company(
    company_id: CompanyIdPath,
    stack: StackDep,
    caller: Annotated[Principal, confined(require("directory:read", company_data=True))],
) -> dict[str, Any]:
    """The stored company and its churn rules."""
    return await _get(stack, "company", external_id=company_id)


# --------------------------------------------------------------------------- customers


@api.put(
    "/customers/{external_id:path}",
    operation_id="putCustomer",
    summary="Create or update a loyalty customer",
    response_model=CustomerOut,
    responses=put_responses(CustomerOut),
)
async def put_customer(
    external_id: ExternalIdPath,
    body: Annotated[CustomerFields, Body(openapi_examples=_examples(CustomerFields))],
    stack: StackDep,
    response: Response,
    caller: Annotated[Principal, require("directory:write")],
) -> dict[str, Any]:
    """The customer named by the business's own id. Points are never set here: they are the sum
    of the loyalty ledger. A Stripe customer id another customer holds is 409 `stripe_id_taken`."""
    row = CustomerIn(external_id=external_id, **body.model_dump())
    return await _put(stack, response, directory.upsert_customers, row, caller, "customer", external_id=external_id)


@api.get(
    "/customers/{external_id:path}",
    operation_id="getCustomer",
    summary="A loyalty customer by the business's own id",
    response_model=CustomerOut,
    responses=responses(404),
)
async def get_customer(
    external_id: ExternalIdPath, stack: StackDep, _: Annotated[Principal, require("directory:read")]
) -> dict[str, Any]:
    """The stored customer, with jobctl's customer id and points."""
    return await _get(stack, "customer", external_id=external_id)
