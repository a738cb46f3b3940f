"""Outbound events over HTTP: a subscription made through the API receives a retailer's pause,
signed and verified by the example receiver; bad input at every new door is one 422 (or 404) naming
what is wrong, and stores nothing; a company-bound key is confined to its company's events."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from config.settings import Settings
from devtools.event_receiver import EventReceiver
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    assert_problem,
    bound_key_by_hand,
    http,
    new_key,
    running_workers,
    stack_settings,
)

SUBSCRIPTIONS = "/v1/event-subscriptions"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api_settings(emulator: TwilioEmulator, sandbox: StripeSandbox) -> Settings:
    """The harness's settings, with a delivery run that looks for new events twice a second."""
    return stack_settings(emulator, sandbox, event_poll_seconds=0.5, event_retry_initial_seconds=0.5)


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[EventReceiver]:
    async with EventReceiver("unset") as r:
        yield r


async def _count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")))


async def test_a_subscription_made_over_http_receives_a_signed_pause(
    http: httpx.AsyncClient, engine: AsyncEngine, receiver: EventReceiver
) -> None:
    headers = await new_key(engine, "events:read", "events:write", "credit:write")
    created = await http.post(
        SUBSCRIPTIONS, json={"url": receiver.url, "event_types": ["credit.paused"]}, headers=headers
    )
    assert created.status_code == 201, created.text
    sub = created.json()
    receiver.secret = sub["secret"]
    assert sub["workflow_id"] == f"event-delivery/{sub['id']}" and sub["secret"].startswith("whsec_")
    listed = (await http.get(SUBSCRIPTIONS, headers=headers)).json()
    assert [s["id"] for s in listed if s["id"] == sub["id"]] == [sub["id"]]
    assert all("secret" not in s for s in listed)

    async with engine.begin() as conn:
        retailer = await conn.scalar(
            text("INSERT INTO retailers (name, phone) VALUES ('Shop', :p) RETURNING id"),
            {"p": f"+1555{uuid.uuid4().int % 10**7:07d}"},
        )
        await conn.execute(
            text("INSERT INTO credit_accounts (retailer_id, credit_limit, available_credit) VALUES (:r, 100, 100)"),
            {"r": retailer},
        )
    paused = await http.post(f"/v1/credit/retailers/{retailer}/pause", json={"reason": "overdue"}, headers=headers)
    assert paused.status_code == 200, paused.text

    deadline = time.monotonic() + 30
    while not receiver.events:
        assert time.monotonic() < deadline, "the pause never arrived"
        await asyncio.sleep(0.2)
    event = receiver.events[0]
    assert event["type"] == "credit.paused" and event["object"]["retailer_id"] == retailer
    assert receiver.rejected == 0

    events = await http.get("/v1/events", params={"type": "credit.paused", "object_id": str(retailer)}, headers=headers)
    assert [e["event_id"] for e in events.json()["items"]] == [event["id"]]
    replay = await http.post(f"/v1/events/{event['id']}/replay", json={"subscription_id": sub["id"]}, headers=headers)
    assert replay.status_code == 202, replay.text
    deadline = time.monotonic() + 30
    while not receiver.duplicates:
        assert time.monotonic() < deadline, "the replay never arrived"
        await asyncio.sleep(0.2)
    assert len(receiver.events) == 1

    gone = await http.delete(f"{SUBSCRIPTIONS}/{sub['id']}", headers=headers)
    assert gone.status_code == 200 and gone.json()["disabled_at"]
    assert_problem(await http.delete(f"{SUBSCRIPTIONS}/{sub['id']}", headers=headers), 404)


async def test_bad_input_at_every_events_door_is_one_refusal_and_stores_nothing(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine, "events:read", "events:write")
    before = {t: await _count(engine, t) for t in ("event_subscriptions", "event_deliveries")}
    good = {"url": "https://shop.example/hook", "event_types": ["payment.recorded"]}
    for body, field in [
        ({**good, "url": "ftp://shop.example/hook"}, "body.url"),
        ({**good, "url": "not a url"}, "body.url"),
        ({**good, "url": "https://user:pw@shop.example/"}, "body.url"),
        ({**good, "event_types": []}, "body.event_types"),
        ({**good, "event_types": ["payment.exploded"]}, "body.event_types"),
        ({**good, "secret": "mine"}, "body.secret"),
        ({"event_types": ["payment.recorded"]}, "body.url"),
    ]:
        body_problem = assert_problem(await http.post(SUBSCRIPTIONS, json=body, headers=headers), 422, field)
        assert body_problem["detail"]
    assert_problem(await http.get("/v1/events", params={"type": "nope"}, headers=headers), 422, "query.type")
    assert_problem(await http.get("/v1/events", params={"limit": 0}, headers=headers), 422, "query.limit")
    unknown_event = "evt_" + "0" * 32
    assert_problem(
        await http.post(f"/v1/events/{unknown_event}/replay", json={"subscription_id": 1}, headers=headers), 404
    )
    assert_problem(
        await http.post("/v1/events/evt_nope/replay", json={"subscription_id": 1}, headers=headers),
        422,
        "path.event_id",
    )
    assert_problem(await http.delete(f"{SUBSCRIPTIONS}/0", headers=headers), 422, "path.subscription_id")
    assert_problem(await http.delete(f"{SUBSCRIPTIONS}/987654321", headers=headers), 404)
    read_only = await new_key(engine, "events:read")
    assert_problem(await http.post(SUBSCRIPTIONS, json=good, headers=read_only), 403)
    assert {t: await _count(engine, t) for t in before} == before


async def test_a_company_bound_key_subscribes_to_its_companys_events_only(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    company = f"co{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO companies (id, name) VALUES (:c, :c)"), {"c": company})
    headers = await new_key(engine, "events:read", "events:write", "churn:read", company=company)
    refused = await http.post(
        SUBSCRIPTIONS, json={"url": "https://acme.example/hook", "event_types": ["credit.paused"]}, headers=headers
    )
    assert "carry no company" in assert_problem(refused, 422, "body.event_types")["detail"]
    created = await http.post(
        SUBSCRIPTIONS, json={"url": "https://acme.example/hook", "event_types": ["churn.case.closed"]}, headers=headers
    )
    assert created.status_code == 201 and created.json()["company_id"] == company, created.text
    other = await new_key(engine, "events:write")
    listed = (await http.get(SUBSCRIPTIONS, headers=headers)).json()
    assert [s["id"] for s in listed] == [created.json()["id"]]
    assert (await http.delete(f"{SUBSCRIPTIONS}/{created.json()['id']}", headers=other)).status_code == 200
