"""One router per job family. Each route checks its scope, calls the service layer (the same
functions the CLI calls) and answers a pydantic model; refusals become problem+json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from workers.api.idempotency import IdempotentRoute
from workers.api.problems import responses

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.client import Client

    from activities.payments.gateway import StripeGateway
    from config.settings import Settings

T = TypeVar("T")
P = TypeVar("P", bound="Page[Any]")


@dataclass(frozen=True)
class Stack:
    """What a route may use: injected into the app by `create_app`."""

    settings: Settings
    engine: AsyncEngine
    client: Client
    stripe: StripeGateway | None = None
    """The API process's one Stripe gateway (`/pay/{token}`), opened by the app's lifespan; None
    without STRIPE_SECRET_KEY (or outside the lifespan)."""


async def _stack(request: Request) -> Stack:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request
    return request.app.state.stack


StackDep = Annotated[Stack, Depends(_stack)]


class RequestBody(BaseModel):
    """Every request body's base: a field the model does not know is refused (422 naming it), not
    ignored. A misspelt optional field (`"reasn"`) silently dropped is a request that did
    something other than asked (issue #33); `additionalProperties: false` says so in the OpenAPI."""

    model_config = ConfigDict(extra="forbid")


class Paging(BaseModel):
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=1_000_000)


async def _paging(
    limit: Annotated[int, Query(ge=1, le=500, description="page size")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="items to skip")] = 0,
) -> Paging:
    return Paging(limit=limit, offset=offset)


PagingDep = Annotated[Paging, Depends(_paging)]


class Page(BaseModel, Generic[T]):
    """A page of a list. A route answers a concrete subclass per item (`class CasePage(Page[Case])`):
    the generic's own schema name, `Page_Case_`, would be a generated client's class name."""

    items: list[T]
    limit: int
    offset: int
    next_offset: int | None = Field(description="the offset of the next page; None: this is the last")


def page(cls: type[P], items: list[Any], paging: Paging) -> P:
    """`items` holds up to limit + 1 rows: the extra one only says another page exists."""
    more = len(items) > paging.limit
    return cls(
        items=items[: paging.limit],
        limit=paging.limit,
        offset=paging.offset,
        next_offset=paging.offset + paging.limit if more else None,
    )


class Accepted(BaseModel):
    """A signal was delivered; its workflow acts on it."""

    workflow_id: str
    signal: str


def router(prefix: str, tag: str) -> APIRouter:
    return APIRouter(
        prefix=prefix, tags=[tag], route_class=IdempotentRoute, responses=responses(400, 401, 403, 413, 422)
    )
