"""Outbound events: subscriptions (the secret answered once), the events list, a replay.

A company-bound key's subscriptions get its company's events only, and it sees only those.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.events import EVENT_TYPES
from schemas.text import ShortText
from services import events as service
from workers.api.auth import Principal, require
from workers.api.problems import Problem, responses
from workers.api.routes import Page, PagingDep, RequestBody, StackDep, page, router

api = router("/v1", "events")
SubscriptionId = Annotated[int, Path(ge=1, le=2**63 - 1, description="event_subscriptions.id")]
EventId = Annotated[str, Path(pattern=r"^evt_[0-9a-f]{32}$", description="the event's id (evt_...)")]

EXAMPLE_SUBSCRIPTION: dict[str, Any] = {
    "url": "https://shop.example/hooks/jobctl",
    "event_types": ["credit.paused", "payment.recorded"],
}


class NewSubscription(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_SUBSCRIPTION]})

    url: str = Field(max_length=service.MAX_URL_LENGTH, description="http(s) URL the events are POSTed to")
    event_types: list[str] = Field(
        min_length=1, max_length=len(EVENT_TYPES), description=f"any of: {', '.join(EVENT_TYPES)}"
    )
    description: ShortText | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return service.check_url(value)

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return service.check_event_types(value)


class Replay(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"subscription_id": 1}]})

    subscription_id: int = Field(ge=1, le=2**63 - 1, description="the subscription to deliver it to again")


class ReplayQueued(BaseModel):
    event_id: str
    subscription_id: int
    status: str


def _problem(refusal: service.EventsRefused) -> Problem:
    if isinstance(refusal, service.UnknownSubscription | service.UnknownEvent):
        status = 404
    elif refusal.field in ("url", "event_types"):
        status = 422
    else:
        status = 409
    field = f"body.{refusal.field}" if refusal.field and status == 422 else None
    return Problem(status, str(refusal), field=field, code=type(refusal).__name__)


@api.post(
    "/event-subscriptions",
    status_code=201,
    response_model=service.CreatedSubscription,
    operation_id="createEventSubscription",
    summary="Subscribe a URL to outbound events (the signing secret is answered once)",
    responses=responses(422),
)
async def create_subscription(
    body: NewSubscription, stack: StackDep, caller: Annotated[Principal, require("events:write")]
) -> service.CreatedSubscription:
    """Events of the named types are POSTed to the URL, signed (`Jobctl-Signature: t=...,v1=...`),
    in order of occurrence, retried with back-off for up to EVENT_GIVE_UP_HOURS. Keep `secret`:
    it is never shown again."""
    try:
        return await service.create_subscription(
            stack.engine,
            stack.client,
            body.url,
            body.event_types,
            created_by=caller.name,
            description=body.description,
            company_id=caller.company_id,
            poll_seconds=stack.settings.event_poll_seconds,
            task_queue=stack.settings.task_queue,
        )
    except service.EventsRefused as refusal:
        raise _problem(refusal) from None


@api.get(
    "/event-subscriptions",
    response_model=list[service.Subscription],
    operation_id="listEventSubscriptions",
    summary="Active subscriptions, with their pending and failed deliveries",
)
async def list_subscriptions(
    stack: StackDep, caller: Annotated[Principal, require("events:read")]
) -> list[service.Subscription]:
    """Never the secrets."""
    return await service.list_subscriptions(stack.engine, company_id=caller.company_id)


@api.delete(
    "/event-subscriptions/{subscription_id}",
    response_model=service.Subscription,
    operation_id="deleteEventSubscription",
    summary="Stop delivering to a subscription",
    responses=responses(404),
)
async def delete_subscription(
    subscription_id: SubscriptionId, stack: StackDep, caller: Annotated[Principal, require("events:write")]
) -> service.Subscription:
    """Nothing more is delivered to it; its delivery run ends."""
    try:
        return await service.delete_subscription(
            stack.engine, stack.client, subscription_id, company_id=caller.company_id
        )
    except service.EventsRefused as refusal:
        raise _problem(refusal) from None


@api.get(
    "/events",
    response_model=Page[service.Event],
    operation_id="listEvents",
    summary="Outbound events, newest first, by type and object",
)
async def list_events(
    stack: StackDep,
    paging: PagingDep,
    caller: Annotated[Principal, require("events:read")],
    type: Annotated[str | None, Query(max_length=64, description=f"one of: {', '.join(EVENT_TYPES)}")] = None,
    object_type: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$", description="retailer, payment, ...")] = None,
    object_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")] = None,
) -> Page[service.Event]:
    if type is not None and type not in EVENT_TYPES:
        raise Problem(422, f"unknown event type {type}; known: {', '.join(EVENT_TYPES)}", field="query.type")
    rows = await service.list_events(
        stack.engine,
        type=type,
        object_type=object_type,
        object_id=object_id,
        company_id=caller.company_id,
        limit=paging.limit + 1,
        offset=paging.offset,
    )
    return page(rows, paging)


@api.post(
    "/events/{event_id}/replay",
    status_code=202,
    response_model=ReplayQueued,
    operation_id="replayEvent",
    summary="Deliver an event to a subscription again",
    responses=responses(404, 409),
)
async def replay_event(
    event_id: EventId, body: Replay, stack: StackDep, caller: Annotated[Principal, require("events:write")]
) -> ReplayQueued:
    """The same event (same `id`: a receiver that has it ignores it), before the subscription's next new one."""
    try:
        queued = await service.replay_event(
            stack.engine, stack.client, event_id, body.subscription_id, company_id=caller.company_id
        )
    except service.EventsRefused as refusal:
        raise _problem(refusal) from None
    return ReplayQueued(**queued)
