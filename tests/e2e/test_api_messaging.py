"""The messaging brake over HTTP: status, pause and resume under the key's name, once per
Idempotency-Key; only a key bound to no company may touch the switch every company shares."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.activities.test_churn import new_member
from tests.e2e.api_harness import api_settings, assert_problem, bound_key_by_hand, http, new_key, running_workers  # noqa: F401 - pytest fixtures, taken as test arguments


async def test_pause_and_resume_the_brake_under_the_keys_name(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    name = f"ops-{uuid.uuid4().hex[:6]}"
    headers = await new_key(engine, "messaging:read", "messaging:write", name=name)
    assert (await http.get("/v1/messaging/brake", headers=headers)).json()["paused"] is False

    once = {**headers, "Idempotency-Key": f"brake-{uuid.uuid4()}"}
    paused = await http.post("/v1/messaging/brake/pause", json={"reason": "wrong template went out"}, headers=once)
    retried = await http.post("/v1/messaging/brake/pause", json={"reason": "wrong template went out"}, headers=once)
    assert paused.status_code == retried.status_code == 200, paused.text
    assert retried.headers.get("Idempotent-Replayed") == "true" and retried.json() == paused.json()
    assert paused.json()["paused"] is True and paused.json()["actor"] == name
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT actor FROM messaging_brake WHERE paused")) == name

    assert (
        "already paused"
        in assert_problem(await http.post("/v1/messaging/brake/pause", json={"reason": "again"}, headers=headers), 409)[
            "detail"
        ]
    )
    shown = (await http.get("/v1/messaging/brake", headers=headers)).json()
    assert shown["paused"] is True and shown["reason"] == "wrong template went out"

    resumed = await http.post("/v1/messaging/brake/resume", json={"reason": "template fixed"}, headers=headers)
    assert resumed.status_code == 200 and resumed.json()["paused"] is False, resumed.text
    assert_problem(await http.post("/v1/messaging/brake/resume", headers=headers), 409)


async def test_the_brake_refuses_bad_input_and_keys_without_the_right(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine, "messaging:read", "messaging:write")
    assert_problem(
        await http.post("/v1/messaging/brake/pause", json={"reason": " "}, headers=headers), 422, "body.reason"
    )
    assert_problem(await http.post("/v1/messaging/brake/pause", json={}, headers=headers), 422, "body.reason")
    assert_problem(await http.post("/v1/messaging/brake/pause", json={"reason": "x"}), 401)
    reader = await new_key(engine, "messaging:read")
    assert (
        "messaging:write"
        in assert_problem(await http.post("/v1/messaging/brake/pause", json={"reason": "x"}, headers=reader), 403)[
            "detail"
        ]
    )
    company, _, _ = await new_member(engine, offsets=[30])
    tenant = await bound_key_by_hand(engine, company, "messaging:read", "messaging:write")  # refused by create_key
    for method, path in (
        ("GET", "/v1/messaging/brake"),
        ("POST", "/v1/messaging/brake/pause"),
        ("POST", "/v1/messaging/brake/resume"),
    ):
        body = assert_problem(await http.request(method, path, json={"reason": "x"}, headers=tenant), 403)
        assert "confined to company" in body["detail"]
    async with engine.connect() as conn:
        assert not await conn.scalar(text("SELECT coalesce(bool_or(paused), false) FROM messaging_brake"))
