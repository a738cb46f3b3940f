"""Churn over HTTP: cases opened, listed, shown with their actions; a manual nudge that answers
(sent; deferred to the end of quiet hours, then sent; one nudge per Idempotency-Key); incentives
from the company's settings; company settings within the database's limits; and a key bound to
one company that can neither see nor touch another's cases, existing or guessed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from devtools.twilio_emulator import TwilioEmulator
from tests.activities.test_churn import actions, new_member, sent_to, subscribe
from tests.activities.test_orders import zone_where
from tests.e2e.api_harness import api_settings, assert_problem, http, new_key, running_workers  # noqa: F401 - pytest fixtures, taken as test arguments


async def _open(http: httpx.AsyncClient, headers: dict[str, str], member: int) -> int:
    opened = await http.post("/v1/churn/cases", json={"membership_id": member}, headers=headers)
    assert opened.status_code == 201, opened.text
    return opened.json()["case_id"]


async def _eventually(check, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.2)


async def test_open_list_show_nudge_and_end_a_case(
    http: httpx.AsyncClient, engine: AsyncEngine, emulator: TwilioEmulator
) -> None:
    company, member, phone = await new_member(engine, offsets=[30], cap=5)
    headers = await new_key(engine, "churn:read", "churn:write", company=company, name=f"crm-{uuid.uuid4().hex[:6]}")
    case_id = await _open(http, headers, member)
    assert await _open(http, headers, member) == case_id  # one open case per membership

    listed = (await http.get("/v1/churn/cases?status=OPEN", headers=headers)).json()
    assert [c["case_id"] for c in listed["items"]] == [case_id] and listed["next_offset"] is None
    by_member = (await http.get(f"/v1/churn/cases?membership_id={member}", headers=headers)).json()
    assert [c["case_id"] for c in by_member["items"]] == [case_id]

    nudged = await http.post(
        f"/v1/churn/cases/{case_id}/nudge", json={"channel": "sms", "note": "asked by phone"}, headers=headers
    )
    assert nudged.status_code == 200 and nudged.json() == {
        "outcome": "sent",
        "channel": "sms",
        "reason": None,
        "at": None,
    }, nudged.text
    assert len(await sent_to(emulator, phone)) == 1

    shown = (await http.get(f"/v1/churn/cases/{case_id}", headers=headers)).json()
    assert shown["case"]["status"] == "OPEN" and shown["workflow"]["manual_nudges"] == 1
    assert [a["type"] for a in shown["actions"]] == ["nudge_sms"] and shown["actions"][0]["actor_type"] == "user"
    assert "+1" not in str(shown["actions"]) and phone not in str(shown)

    ended = await http.post(f"/v1/churn/cases/{case_id}/recovered", headers=headers)
    assert ended.status_code == 202, ended.text

    async def closed() -> bool:
        return (await http.get(f"/v1/churn/cases/{case_id}", headers=headers)).json()["case"]["status"] == "RECOVERED"

    await _eventually(closed)
    assert_problem(await http.post(f"/v1/churn/cases/{case_id}/nudge", json={}, headers=headers), 409)
    assert_problem(
        await http.post(f"/v1/churn/cases/{case_id}/nudge", json={"channel": "pigeon"}, headers=headers),
        422,
        "body.channel",
    )


async def test_the_same_idempotency_key_twice_is_one_nudge(
    http: httpx.AsyncClient, engine: AsyncEngine, emulator: TwilioEmulator
) -> None:
    company, member, phone = await new_member(engine, offsets=[30], cap=5)
    headers = await new_key(engine, "churn:write", company=company)
    case_id = await _open(http, headers, member)
    retry = {**headers, "Idempotency-Key": f"nudge-{uuid.uuid4()}"}
    first, again = await asyncio.gather(
        http.post(f"/v1/churn/cases/{case_id}/nudge", json={}, headers=retry),
        http.post(f"/v1/churn/cases/{case_id}/nudge", json={}, headers=retry),
    )
    statuses = sorted([first.status_code, again.status_code])
    assert statuses in ([200, 200], [200, 409]), (first.text, again.text)  # 409: the first was still being answered
    replay = await http.post(f"/v1/churn/cases/{case_id}/nudge", json={}, headers=retry)
    assert replay.status_code == 200 and replay.json()["outcome"] == "sent"
    assert len(await sent_to(emulator, phone)) == 1
    assert [r.type for r in await actions(engine, case_id)] == ["nudge_sms"]


async def test_a_nudge_in_quiet_hours_answers_deferred_with_the_time_it_goes_out(
    http: httpx.AsyncClient, engine: AsyncEngine, emulator: TwilioEmulator, dev_env: WorkflowEnvironment
) -> None:
    now = datetime.now(UTC)
    zone = zone_where(now, 3)  # 03:00 there: inside quiet hours 21-08
    company, member, phone = await new_member(engine, offsets=[30], cap=5, quiet=(21, 8), tz=zone)
    headers = await new_key(engine, "churn:write", "churn:read", company=company)
    case_id = await _open(http, headers, member)
    answer = await http.post(f"/v1/churn/cases/{case_id}/nudge", json={}, headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["outcome"] == "deferred" and body["reason"] == "quiet_hours"
    at = datetime.fromisoformat(body["at"])
    from zoneinfo import ZoneInfo

    assert at > now and at.astimezone(ZoneInfo(zone)).hour == 8 and (at - now).total_seconds() < 6 * 3600
    assert await sent_to(emulator, phone) == []
    rows = await actions(engine, case_id)
    assert [r.type for r in rows] == ["nudge_deferred"] and rows[0].meta["retry_at"].startswith(at.isoformat()[:16])
    # The deferred nudge waits in the workflow as a timer until then (it is sent when quiet hours end).
    history = await dev_env.client.get_workflow_handle(f"churn-case/{case_id}").fetch_history()
    assert any("deferred manual nudge" in str(e) for e in history.events)


async def test_a_manual_nudge_over_the_daily_cap_answers_capped(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    company, member, _ = await new_member(engine, offsets=[30], cap=1)
    headers = await new_key(engine, "churn:write", company=company)
    case_id = await _open(http, headers, member)
    assert (await http.post(f"/v1/churn/cases/{case_id}/nudge", json={}, headers=headers)).json()["outcome"] == "sent"
    capped = (await http.post(f"/v1/churn/cases/{case_id}/nudge", json={}, headers=headers)).json()
    assert capped["outcome"] == "capped" and capped["reason"] == "daily_cap" and capped["at"]


async def test_an_incentive_uses_the_companys_incentive_days(
    http: httpx.AsyncClient, engine: AsyncEngine, stripe_api: stripe.StripeClient
) -> None:
    company, member, _ = await new_member(engine, offsets=[30])
    await subscribe(engine, stripe_api, member)
    headers = await new_key(engine, "churn:write", "churn:read", company=company)
    settings = (await http.get(f"/v1/churn/companies/{company}/settings", headers=headers)).json()
    assert settings["incentive_days"] == 7
    case_id = await _open(http, headers, member)
    applied = await http.post(f"/v1/churn/cases/{case_id}/incentive", json={}, headers=headers)
    assert applied.status_code == 200 and applied.json()["days"] == 7 and applied.json()["current_period_end"], (
        applied.text
    )
    assert_problem(await http.post(f"/v1/churn/cases/{case_id}/incentive", json={"days": 3}, headers=headers), 409)
    assert_problem(
        await http.post(f"/v1/churn/cases/{case_id}/incentive", json={"days": 91}, headers=headers), 422, "body.days"
    )
    assert [r.type for r in await actions(engine, case_id)] == ["incentive_applied"]


async def test_company_settings_are_read_and_replaced_within_the_databases_limits(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    company, _, _ = await new_member(engine, offsets=[1, 3])
    headers = await new_key(engine, "churn:write", "churn:read", company=company)
    current = (await http.get(f"/v1/churn/companies/{company}/settings", headers=headers)).json()
    assert current["reminder_offsets_days"] == [1, 3] and current["company_id"] == company
    wanted = {**current, "reminder_offsets_days": [0, 4, 9], "incentive_days": 14, "channels": ["whatsapp"]}
    wanted.pop("company_id")
    put = await http.put(f"/v1/churn/companies/{company}/settings", json=wanted, headers=headers)
    assert put.status_code == 200 and put.json()["reminder_offsets_days"] == [0, 4, 9], put.text
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT reminder_offsets_days, incentive_days, channels FROM companies WHERE id = :c"),
                {"c": company},
            )
        ).one()
    assert (row.reminder_offsets_days, row.incentive_days, row.channels) == ([0, 4, 9], 14, ["whatsapp"])
    for field, bad in [
        ("reminder_offsets_days", list(range(11))),
        ("incentive_days", 91),
        ("quiet_hours_start", 24),
        ("channels", []),
        ("grace_period_days", -1),
        ("timezone", "Mars/Olympus"),
    ]:
        body = assert_problem(
            await http.put(f"/v1/churn/companies/{company}/settings", json={**wanted, field: bad}, headers=headers), 422
        )
        assert body["field"].startswith(f"body.{field}"), body
    assert_problem(
        await http.get("/v1/churn/companies/no-such-co/settings", headers=await new_key(engine, "churn:read")), 404
    )


async def test_a_company_bound_key_cannot_reach_another_companys_cases(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ours, our_member, _ = await new_member(engine, offsets=[30])
    theirs, their_member, _ = await new_member(engine, offsets=[30])
    our_key = await new_key(engine, "churn:read", "churn:write", company=ours)
    their_case = await _open(http, await new_key(engine, "churn:write", company=theirs), their_member)
    await _open(http, our_key, our_member)

    listed = (await http.get("/v1/churn/cases?limit=500", headers=our_key)).json()["items"]
    assert listed and {c["company_id"] for c in listed} == {ours}
    assert_problem(await http.get(f"/v1/churn/cases?company_id={theirs}", headers=our_key), 403)
    assert_problem(await http.get(f"/v1/churn/cases?company={theirs}", headers=our_key), 403)  # the former name
    assert_problem(
        await http.get(f"/v1/churn/cases?membership_id={their_member}&company_id={theirs}", headers=our_key), 403
    )
    mine = (await http.get(f"/v1/churn/cases?company_id={ours}&limit=500", headers=our_key)).json()["items"]
    assert {c["case_id"] for c in mine} == {c["case_id"] for c in listed}
    assert_problem(
        await http.get(f"/v1/churn/cases?company_id={ours}&company={theirs}", headers=our_key), 422, "query.company"
    )
    assert (await http.get(f"/v1/churn/cases?membership_id={their_member}", headers=our_key)).json()["items"] == []
    missing = their_case + 10_000
    for case in (their_case, missing):  # existing or guessed: the same answer
        for method, path, body in [
            ("GET", f"/v1/churn/cases/{case}", None),
            ("POST", f"/v1/churn/cases/{case}/nudge", {}),
            ("POST", f"/v1/churn/cases/{case}/incentive", {"days": 5}),
            ("POST", f"/v1/churn/cases/{case}/recovered", None),
            ("POST", f"/v1/churn/cases/{case}/cancelled", None),
        ]:
            problem = assert_problem(await http.request(method, path, json=body, headers=our_key), 403)
            assert f"case {case}" not in problem["detail"]
    for company in (theirs, "never-existed"):
        assert_problem(await http.get(f"/v1/churn/companies/{company}/settings", headers=our_key), 403)
        assert_problem(
            await http.put(
                f"/v1/churn/companies/{company}/settings",
                json={
                    "reminder_offsets_days": [1],
                    "channels": ["sms"],
                    "incentive_days": 1,
                    "quiet_hours_start": 21,
                    "quiet_hours_end": 8,
                    "daily_nudge_cap": 1,
                    "grace_period_days": 1,
                    "timezone": "UTC",
                },
                headers=our_key,
            ),
            403,
        )
    assert_problem(await http.post("/v1/churn/cases", json={"membership_id": their_member}, headers=our_key), 403)
    assert_problem(
        await http.post("/v1/churn/cases", json={"membership_id": their_member, "company_id": theirs}, headers=our_key),
        403,
    )
    operator = await new_key(engine, "churn:write")  # bound to no company: it names the membership's
    assert_problem(
        await http.post("/v1/churn/cases", json={"membership_id": their_member}, headers=operator),
        422,
        "body.company_id",
    )
    assert_problem(
        await http.post("/v1/churn/cases", json={"membership_id": their_member, "company_id": ours}, headers=operator),
        404,
    )
    same = await http.post(
        "/v1/churn/cases", json={"membership_id": their_member, "company_id": theirs}, headers=operator
    )
    assert same.status_code == 201 and same.json()["case_id"] == their_case, same.text
    assert [r.type for r in await actions(engine, their_case)] == []  # nothing happened to their case
    unbound = await new_key(engine, "churn:read")
    assert_problem(await http.get(f"/v1/churn/cases/{missing}", headers=unbound), 404)
    assert (await http.get(f"/v1/churn/cases/{their_case}", headers=unbound)).status_code == 200
