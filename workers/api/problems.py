"""Errors as RFC 9457 problem details (`application/problem+json`), naming the field at fault.

Every refusal leaves the API in this one shape: a route raises `Problem` (or lets the service
layer's `Refused` through), FastAPI's request validation becomes 422 with each field's location,
and an unexpected error is a bare 500 with no internals in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.errors import Refused

log = structlog.get_logger(__name__)

MEDIA_TYPE = "application/problem+json"
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


class FieldError(BaseModel):
    field: str = Field(
        description="where the bad value is: body.amount, query.limit, path.case_id, header.Idempotency-Key"
    )
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457. `field` names the (first) field at fault; `errors` lists every one; `code` is the
    refusal's stable name, for programs (the `detail` is for people and may change)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    code: str | None = Field(
        default=None,
        description="a refusal's stable, machine-readable name: the refusing activity's or workflow's error type"
        " (NoSubscription, UnknownOrder, ...) or the service's refusal (CaseRefused, CreditRefused, ...)",
    )
    field: str | None = None
    errors: list[FieldError] | None = None


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
    body = ProblemDetails(
        title=TITLES.get(status, "Error"), status=status, detail=detail, field=field, errors=errors, code=code
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def field_errors(errors: Sequence[Mapping[str, Any]], prefix: tuple[str, ...] = ()) -> list[FieldError]:
    return [
        FieldError(field=_location((*prefix, *e["loc"])), message=e["msg"].removeprefix("Value error, "))
        for e in errors
    ]


def unprocessable(errors: list[FieldError]) -> JSONResponse:
    first = errors[0] if errors else FieldError(field="body", message="invalid request")
    return problem_response(422, f"{first.field}: {first.message}", field=first.field, errors=errors)


def refusal_status(refusal: Refused) -> int:
    """A refusal that says the object is missing is 404; any other is a state conflict (409).
    One carrying a workflow's or activity's code says which by that code (`UnknownOrder`), not
    by its wording ("member 7 has no Stripe subscription" is the member's state, not a 404)."""
    text = str(refusal)
    if refusal.code != type(refusal).__name__:
        return 404 if refusal.code.startswith("Unknown") else 409
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


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's problem statuses (so schemathesis checks them too)."""
    return {
        status: {
            "model": ProblemDetails,
            "description": TITLES.get(status, "Error"),
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for status in statuses
    }
