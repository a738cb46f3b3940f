"""Errors as RFC 9457 problem details (`application/problem+json`), naming the field at fault.

Every refusal leaves the API in this one shape: a route raises `Problem` (or lets the service
layer's `Refused` through), FastAPI's request validation becomes 422 with each field's location,
and an unexpected error is a bare 500 with no internals in it.

Every problem carries a `code`, a stable snake_case name a program branches on (`credit_paused`,
`idempotency_key_in_use`), and a `type` URI made from it (`{PROBLEM_TYPE_BASE}credit-paused`):
`CODES` lists the ones the API answers on purpose, with the status each answers and what it means
(the README's table and the OpenAPI description are made from it). A refusal's code is the
service's, snake-cased: `Refused(code="UnknownOrder")` and an activity's `UnknownOrder` both
answer `unknown_order`; a code not in `CODES` still answers, by the status its wording implies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.errors import Refused
from workers.http_metrics import REQUEST_ID_HEADER, current_request_id

log = structlog.get_logger(__name__)

MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://jobctl.dev/problems/"
"""Every problem's `type` is this followed by its code, hyphenated: a stable identifier (RFC 9457
section 3.1.1), the same on every deployment, documented in the README's table of codes."""
TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content too large",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class Code(NamedTuple):
    status: int
    meaning: str


CODES: dict[str, Code] = {
    # any route
    "validation_error": Code(422, "a parameter, header or body field is malformed: `field` and `errors` name each"),
    "json_too_deep": Code(400, "the JSON body nests deeper than any request needs"),
    "unauthorized": Code(401, "no API key, or one unknown or revoked"),
    "forbidden": Code(403, "the key lacks the route's scope, or is confined to another company"),
    "not_found": Code(404, "no such route, or no such object"),
    "method_not_allowed": Code(405, "the route answers other methods"),
    "body_too_large": Code(413, "the body is above API_MAX_BODY_BYTES (1 MB by default)"),
    "rate_limited": Code(429, "too many requests just now: wait Retry-After seconds"),
    "internal_error": Code(500, "an unexpected error, logged; nothing to fix on the caller's side"),
    "unavailable": Code(503, "a dependency (the database, Temporal, Stripe) did not answer: retry after Retry-After"),
    "idempotency_key_in_use": Code(409, "a request with this Idempotency-Key is still being answered: retry shortly"),
    "idempotency_key_reused": Code(422, "this Idempotency-Key was used with another request: use a new key"),
    # objects that do not exist
    "unknown_retailer": Code(404, "no such retailer (or none with a credit account)"),
    "unknown_order": Code(404, "no such order, or no checkout clock for it"),
    "unknown_case": Code(404, "no such churn case"),
    "unknown_company": Code(404, "no such company"),
    "unknown_membership": Code(404, "no such membership in the company"),
    "unknown_customer": Code(404, "no such loyalty customer"),
    "unknown_queue_item": Code(404, "no such loyalty reconciliation item"),
    "queue_item_closed": Code(409, "the reconciliation item is resolved already: its workflow has ended"),
    "no_payment_link": Code(404, "the retailer has no payment link yet (the first reminder of a debit due makes it)"),
    "no_insight": Code(404, "no insight was generated for the retailer (on that day)"),
    "unknown_pay_link": Code(404, "the payment link does not exist"),
    "pay_link_replaced": Code(410, "the payment link was replaced by a newer one"),
    "unknown_manage_link": Code(404, "the membership link is malformed, forged, or names no membership"),
    "manage_link_expired": Code(410, "the membership link is older than MANAGE_LINK_DAYS"),
    "no_manage_page": Code(404, "the member has no Stripe customer and the company no CHURN_MANAGE_URL"),
    # placing an order (the retailer-facing reason is `detail`)
    "credit_paused": Code(409, "the retailer's credit is paused: cash on delivery only"),
    "account_blocked": Code(409, "the retailer's account is blocked: no orders"),
    "over_max_order_value": Code(409, "the order is above the retailer's maximum order value"),
    "over_credit_limit": Code(409, "the order is above the retailer's available credit"),
    "order_not_open": Code(409, "the order is FAILED or CANCELLED"),
    "order_of_another_retailer": Code(409, "the order id is another retailer's"),
    "order_mismatch": Code(409, "the order was placed before with another amount or payment mode"),
    "order_not_pending": Code(409, "the order's checkout is settled already (completed, recovered, expired, failed)"),
    # credit administration
    "status_unchanged": Code(409, "the retailer's credit is in that status already"),
    "retailer_blocked": Code(409, "a blocked retailer cannot be paused: unpause it first"),
    "amount_out_of_range": Code(422, "the amount would take the ledger past what it holds"),
    "payment_conflict": Code(409, "the payment reference was recorded before with another amount"),
    # churn
    "case_not_open": Code(409, "the churn case has ended"),
    "no_subscription": Code(409, "the member has no subscription to act on"),
    "no_incentive": Code(409, "the company offers no incentive (incentive_days is 0): give the days"),
    # loyalty
    "insufficient_points": Code(409, "the customer has fewer points than the order redeems"),
    "order_of_another_customer": Code(409, "the order's points were applied to another customer"),
    "order_applied_differently": Code(409, "the order's points were applied with another redemption"),
    "points_overflow": Code(409, "the balance would pass the ledger's limit"),
    # directory (PUT by the business's own ids)
    "directory_refused": Code(409, "the row cannot be written in the directory's present state"),
    "duplicate_in_batch": Code(409, "the same id comes again later in the batch (imports): the later row is written"),
    "stripe_id_taken": Code(409, "another row holds this Stripe id"),
    "value_taken": Code(409, "another row holds this unique value"),
    "changed_meanwhile": Code(409, "another writer changed the row at the same moment: retry"),
    "currency_locked": Code(409, "the account's currency cannot change while debits are open"),
    "limits_refused": Code(409, "the credit ledger refused the new limits"),
    "order_status_refused": Code(409, "the order's status cannot move back, or to that status by PUT"),
    "order_placed": Code(409, "a placed credit order fails through POST /v1/orders/{order_id}/failed (credit back)"),
    # messaging
    "brake_already_paused": Code(409, "messaging is paused already"),
    "brake_not_paused": Code(409, "messaging is not paused: nothing to resume"),
}
"""The codes the API answers on purpose. A refusal whose code is not here (a service's generic
`CreditRefused`, a workflow's rarer error type) still answers it snake-cased, by the status its
wording implies; a program may rely on every code listed here."""

DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "body_too_large",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}
"""A problem raised with no code of its own answers its status's."""


def snake_case(code: str) -> str:
    """`UnknownOrder` -> `unknown_order`; a snake_case code is unchanged."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", code).lower()


def type_uri(code: str) -> str:
    return PROBLEM_TYPE_BASE + code.replace("_", "-")


def codes_table() -> str:
    """Markdown: every code in `CODES`, its status and meaning (the OpenAPI description's, the README's)."""
    rows = [f"| `{code}` | {status} | {meaning} |" for code, (status, meaning) in CODES.items()]
    return "\n".join(["| code | status | meaning |", "|---|---|---|", *rows])


class FieldError(BaseModel):
    field: str = Field(
        description="where the bad value is: body.amount, query.limit, path.case_id, header.Idempotency-Key"
    )
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457. `code` is the refusal's stable name and `type` the URI made from it, for programs
    (the `detail` is for people and may change); `field` names the (first) field at fault,
    `errors` lists every one."""

    type: str = Field(
        description=f"a stable URI per code: {PROBLEM_TYPE_BASE}<code, hyphenated>",
        examples=[type_uri("credit_paused")],
    )
    title: str = Field(description="the status's name")
    status: int
    detail: str | None = Field(default=None, description="for people: what is wrong and what to do; may change")
    code: str = Field(
        description="the refusal's stable snake_case name (the API description lists them): credit_paused,"
        " over_credit_limit, unknown_order, validation_error, idempotency_key_in_use, ...",
        examples=["credit_paused"],
    )
    field: str | None = None
    errors: list[FieldError] | None = None
    request_id: str | None = Field(
        default=None,
        description="this request's id (the response's X-Request-ID: the caller's, when well-formed, or a new"
        " one), in every log line about it: quote it to support",
    )


class Problem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        errors: list[FieldError] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.errors, self.code = status, detail, field, errors, code

    def response(self) -> JSONResponse:
        return problem_response(self.status, self.detail, field=self.field, errors=self.errors, code=self.code)


def problem_response(
    status: int,
    detail: str | None,
    *,
    field: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> JSONResponse:
    code = snake_case(code) if code else DEFAULT_CODES.get(status, f"http_{status}")
    body = ProblemDetails(
        type=type_uri(code),
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        field=field,
        errors=errors,
        code=code,
        request_id=current_request_id(),
    )
    if body.request_id:  # also on an answer made outside the request-id middleware (the server's 500)
        headers = {**(headers or {}), REQUEST_ID_HEADER: body.request_id}
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def field_errors(errors: Sequence[Mapping[str, Any]], prefix: tuple[str, ...] = ()) -> list[FieldError]:
    return [
        FieldError(field=_location((*prefix, *e["loc"])), message=e["msg"].removeprefix("Value error, "))
        for e in errors
    ]


def unprocessable(errors: list[FieldError], code: str = "validation_error") -> JSONResponse:
    first = errors[0] if errors else FieldError(field="body", message="invalid request")
    return problem_response(422, f"{first.field}: {first.message}", field=first.field, errors=errors, code=code)


def refusal_status(refusal: Refused) -> int:
    """A refusal that says the object is missing is 404; any other is a state conflict (409).
    A code in `CODES` answers its status; one carrying a workflow's or activity's code says which
    by that code (`UnknownOrder`), not by its wording ("member 7 has no Stripe subscription" is the
    member's state, not a 404)."""
    text = str(refusal)
    code = snake_case(refusal.code)
    if code in CODES:
        return CODES[code].status
    if refusal.code != type(refusal).__name__:
        return 404 if code.startswith("unknown_") else 409
    if type(refusal).__name__.startswith("Unknown"):
        return 404
    if " has no running " in text:  # it existed, and has ended
        return 409
    if text.startswith("no ") or " has no " in text:
        return 404
    return 409


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, problem: Problem) -> JSONResponse:
        return problem.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return unprocessable(field_errors(list(error.errors())))

    @app.exception_handler(ValidationError)
    async def _invalid_model(_: Request, error: ValidationError) -> JSONResponse:
        return unprocessable(field_errors(list(error.errors()), ("body",)))

    @app.exception_handler(Refused)
    async def _refused(_: Request, refusal: Refused) -> JSONResponse:
        return problem_response(refusal_status(refusal), str(refusal), code=refusal.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return problem_response(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, error: DBAPIError) -> JSONResponse:
        if not error.connection_invalidated:
            return await _unexpected(request, error)
        # The API's pool does not ping each connection before use (a round trip on every
        # request); after a database restart the first use of a stale connection fails, the
        # pool drops them all, and the caller's retry (with its Idempotency-Key) goes through.
        log.warning("api.database_connection_lost", path=request.url.path)
        return problem_response(
            503, "the database connection was lost; retry the request", headers={"Retry-After": "1"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("api.unexpected_error", path=request.url.path, error_type=type(error).__name__)
        return problem_response(500, "the request could not be completed; it has been logged")


DESCRIPTIONS = {
    400: "Bad request: the JSON body nests deeper than any request needs (`json_too_deep`)",
    401: "No API key, or an unknown or revoked one (`unauthorized`)",
    403: "The key lacks the route's scope, or is confined to another company (`forbidden`)",
    404: "The object named does not exist (`not_found`, or the `unknown_...` code naming what)",
    409: "The object's state refuses the request (`code` says why), or a request with this Idempotency-Key"
    " is still being answered (`idempotency_key_in_use`)",
    410: "Gone (`pay_link_replaced`, `manage_link_expired`)",
    413: "The body is above API_MAX_BODY_BYTES (`body_too_large`)",
    422: "A parameter, header or body field is malformed (`validation_error`: `field` and `errors` name each),"
    " or the Idempotency-Key was used with another request (`idempotency_key_reused`)",
    429: "Too many requests just now (`rate_limited`): wait Retry-After seconds",
    503: "A dependency did not answer (`unavailable`): retry after Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}


def responses(*statuses: int, codes: tuple[str, ...] = ()) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's problem statuses (so schemathesis checks them too);
    `codes` (from `CODES`) are the refusals the route answers, listed under their statuses."""
    unknown = [code for code in codes if code not in CODES]
    assert not unknown, f"codes not in CODES: {unknown}"
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description = DESCRIPTIONS.get(status, TITLES.get(status, "Error"))
        listed = [f"`{code}` ({CODES[code].meaning})" for code in codes if CODES[code].status == status]
        if listed:
            description += ". This route's: " + "; ".join(listed)
        documented[status] = {
            "model": ProblemDetails,
            "description": description,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        if status in (429, 503):
            documented[status]["headers"] = RETRY_AFTER
    return documented
