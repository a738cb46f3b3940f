"""The console's Churn section over HTTP against the real stack (issue #37, second part): a company
admin sees and acts on its own company only (every page and action of another company is 404,
and changes nothing), bad input on every form is refused beside its field with nothing changed,
each action goes through the API's service functions and is audited with the console user as the
actor, and the list and the results stay on an index at 10,000 cases."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import stripe
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.churn.cases import hash_actor
from activities.churn.history import CASES
from devtools.twilio_emulator import TwilioEmulator
from services.churn import start_case, stripe_handlers
from tests.activities.test_churn import actions, new_member, sent_to, subscribe
from tests.activities.test_orders import zone_where
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    api_settings,
    running_workers,
)
from tests.e2e.console_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    console_app,
    csrf_of,
    signed_in,
)

RULES = {
    "reminder_offsets_days": "0, 3",
    "channel_1": "sms",
    "channel_2": "",
    "quiet_hours_start": "22",
    "quiet_hours_end": "7",
    "daily_nudge_cap": "2",
    "incentive_days": "10",
    "grace_period_days": "4",
    "timezone": "Europe/Berlin",
}


async def _case(app: FastAPI, member: int, company: str) -> int:
    stack = app.state.stack
    return await start_case(stack.client, stack.engine, stack.settings, member, "manual", company_id=company)


async def _rules(engine: AsyncEngine, company: str) -> tuple:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT reminder_offsets_days, channels, quiet_hours_start, quiet_hours_end, daily_nudge_cap,"
                    " incentive_days, grace_period_days, timezone,"
                    " (SELECT count(*) FROM audit_log WHERE reference = 'company:' || c.id)"
                    " FROM companies c WHERE id = :c"
                ),
                {"c": company},
            )
        ).one()
    return tuple(row)


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


async def test_a_company_admin_sees_and_acts_on_its_own_company_only(console_app: FastAPI, engine: AsyncEngine) -> None:
    mine, my_member, _ = await new_member(engine, offsets=[30])
    theirs, their_member, _ = await new_member(engine, offsets=[30])
    my_case, their_case = await _case(console_app, my_member, mine), await _case(console_app, their_member, theirs)
    admin, _ = await signed_in(console_app, engine, "company_admin", mine)
    own = await admin.get("/console/churn")
    assert own.status_code == 200 and f"Case #{my_case}<" in own.text and f"Case #{their_case}<" not in own.text
    csrf = csrf_of(own)
    for url in (f"/console/churn/cases/{my_case}", "/console/churn/results", "/console/churn/settings"):
        assert (await admin.get(url)).status_code == 200, url
    rules_before = await _rules(engine, theirs)
    pages = [
        f"/console/churn?company={theirs}",
        f"/console/churn/cases/{their_case}",
        f"/console/churn/results?company={theirs}",
        f"/console/churn/settings?company={theirs}",
    ]
    for url in pages:
        hidden = await admin.get(url)
        assert hidden.status_code == 404 and "Not found" in hidden.text and "Gym" not in hidden.text, url
    forms = {
        f"/console/churn/cases/{their_case}/nudge": {"channel": "", "nonce": uuid.uuid4().hex},
        f"/console/churn/cases/{their_case}/incentive": {"days": "5", "nonce": uuid.uuid4().hex},
        f"/console/churn/cases/{their_case}/recovered": {"confirm": "yes"},
        f"/console/churn/cases/{their_case}/cancelled": {"confirm": "yes"},
        f"/console/churn/settings?company={theirs}": RULES,
    }
    for url, data in forms.items():
        refused = await admin.post(url, data={**data, "csrf": csrf})
        assert refused.status_code == 404 and "Not found" in refused.text, url
    # ... answered as a case or company that does not exist is: nothing to tell them apart
    assert (await admin.get("/console/churn/cases/999999999")).status_code == 404
    assert (await admin.get("/console/churn/results?company=no-such-co")).status_code == 404
    assert await actions(engine, their_case) == [] and await _rules(engine, theirs) == rules_before
    async with engine.connect() as conn:
        status = await conn.scalar(text("SELECT status FROM recovery_cases WHERE id = :c"), {"c": their_case})
    assert status == "OPEN"
    # An operator sees both companies and acts; a read-only user sees, and may not act (403).
    operator, _ = await signed_in(console_app, engine, "operator")
    every = await operator.get("/console/churn")
    assert f"Case #{my_case}<" in every.text and f"Case #{their_case}<" in every.text
    viewer, _ = await signed_in(console_app, engine, "read_only")
    shown = await viewer.get(f"/console/churn/cases/{their_case}")
    assert shown.status_code == 200 and "Nudge now" not in shown.text
    cancel = {"confirm": "yes", "csrf": csrf_of(shown)}
    denied = await viewer.post(f"/console/churn/cases/{their_case}/cancelled", data=cancel)
    assert denied.status_code == 403 and await actions(engine, their_case) == []


async def test_bad_input_on_every_form_is_refused_beside_its_field_and_changes_nothing(
    console_app: FastAPI, engine: AsyncEngine
) -> None:
    company, member, _ = await new_member(engine, offsets=[30])
    case_id = await _case(console_app, member, company)
    admin, _ = await signed_in(console_app, engine, "company_admin", company)
    page = f"/console/churn/cases/{case_id}"
    csrf = csrf_of(await admin.get(page))
    nonce = uuid.uuid4().hex
    for action, data, field in [
        ("nudge", {"channel": "pigeon", "nonce": nonce}, "nudge-channel"),
        ("nudge", {"channel": "sms"}, "nudge-channel"),
        ("incentive", {"days": "0", "nonce": nonce}, "incentive-days"),
        ("incentive", {"days": "two weeks", "nonce": nonce}, "incentive-days"),
        ("recovered", {}, "recovered-confirm"),
        ("cancelled", {"confirm": "no"}, "cancelled-confirm"),
    ]:
        answer = await admin.post(f"{page}/{action}", data={**data, "csrf": csrf})
        assert answer.status_code == 422, (action, data, answer.status_code)
        assert f'id="{field}-error"' in answer.text and 'aria-invalid="true"' in answer.text, (action, data)
    before = await _rules(engine, company)
    for name, bad in [
        ("reminder_offsets_days", "0, 3, ninety"),
        ("reminder_offsets_days", "0, 91"),
        ("reminder_offsets_days", ", ".join(["1"] * 11)),
        ("channel_1", "pigeon"),
        ("channel_2", "sms"),  # the same as the first
        ("quiet_hours_start", "24"),
        ("quiet_hours_end", "-1"),
        ("daily_nudge_cap", "many"),
        ("incentive_days", "91"),
        ("grace_period_days", "1.5"),
        ("timezone", "Mars/Olympus_Mons"),
    ]:
        answer = await admin.post("/console/churn/settings", data={**RULES, name: bad, "csrf": csrf})
        assert answer.status_code == 422, (name, bad)
        field = "channel_1" if name == "channel_2" else name
        assert f'id="settings-{field}-error"' in answer.text, (name, bad)
        assert f'value="{bad}"' in answer.text or name.startswith("channel"), (name, bad)  # kept to correct
    wrong_date = await admin.get("/console/churn?opened_from=30/11/2026")
    assert wrong_date.status_code == 422 and 'id="filter-opened_from-error"' in wrong_date.text
    forged = await admin.post("/console/churn/settings", data=RULES)  # no CSRF token
    assert forged.status_code == 403
    assert await _rules(engine, company) == before and await actions(engine, case_id) == []


async def test_actions_show_their_outcome_and_are_audited_with_the_console_user(
    console_app: FastAPI, engine: AsyncEngine, emulator: TwilioEmulator, stripe_api: stripe.StripeClient
) -> None:
    company, member, phone = await new_member(engine, offsets=[30], cap=5)
    await subscribe(engine, stripe_api, member)
    case_id = await _case(console_app, member, company)
    admin, username = await signed_in(console_app, engine, "company_admin", company)
    actor = hash_actor(f"console:{username}", console_app.state.stack.settings.actor_hash_key)
    page = f"/console/churn/cases/{case_id}"
    shown = await admin.get(page)
    assert phone not in shown.text and phone[-2:] in shown.text  # masked, the last 2 digits kept
    csrf = csrf_of(shown)

    nudged = await admin.post(f"{page}/nudge", data={"channel": "sms", "nonce": uuid.uuid4().hex, "csrf": csrf})
    assert nudged.status_code == 303 and nudged.headers["location"] == page
    after = await admin.get(page)
    assert "Nudge sent by SMS." in after.text and 'role="status"' in after.text
    assert len(await sent_to(emulator, phone)) == 1
    assert f"console:{username}" in after.text  # the audit row names the console user

    gave = await admin.post(f"{page}/incentive", data={"days": "", "nonce": uuid.uuid4().hex, "csrf": csrf})
    assert gave.status_code == 303
    assert "Incentive applied at Stripe: 7 more days" in (await admin.get(page)).text
    again = await admin.post(f"{page}/incentive", data={"days": "3", "nonce": uuid.uuid4().hex, "csrf": csrf})
    assert again.status_code == 409 and 'id="incentive-days-error"' in again.text  # the service's refusal

    rules = await admin.post("/console/churn/settings", data={**RULES, "csrf": csrf})
    assert rules.status_code == 303
    saved = await admin.get(rules.headers["location"])
    assert "Rules saved:" in saved.text and f"console:{username}" in saved.text
    async with engine.connect() as conn:
        performed_by = await conn.scalar(
            text("SELECT performed_by FROM audit_log WHERE reference = :r ORDER BY id DESC LIMIT 1"),
            {"r": f"company:{company}"},
        )
    assert performed_by == f"console:{username}"
    assert (await _rules(engine, company))[:8] == ([0, 3], ["sms"], 22, 7, 2, 10, 4, "Europe/Berlin")

    ended = await admin.post(f"{page}/recovered", data={"confirm": "yes", "csrf": csrf})
    assert ended.status_code == 303

    async def closed() -> bool:
        return [r.type for r in await actions(engine, case_id)][-1:] == ["case_recovered"]

    await _eventually(closed)
    rows = await actions(engine, case_id)
    assert [r.type for r in rows] == ["nudge_sms", "incentive_applied", "case_recovered"]
    assert {(r.actor_type, r.actor_id_hash) for r in rows} == {("user", actor)}
    final = await admin.get(page)
    assert "Nudge now" not in final.text and "recovered" in final.text


async def test_a_nudge_in_quiet_hours_says_until_when_in_the_members_time_and_cancel_ends_it(
    console_app: FastAPI, engine: AsyncEngine, emulator: TwilioEmulator
) -> None:
    zone = zone_where(datetime.now(UTC), 3)  # 03:00 there: inside quiet hours 21-08
    company, member, phone = await new_member(engine, offsets=[30], cap=5, quiet=(21, 8), tz=zone)
    case_id = await _case(console_app, member, company)
    operator, username = await signed_in(console_app, engine, "operator")
    page = f"/console/churn/cases/{case_id}"
    csrf = csrf_of(await operator.get(page))
    held = await operator.post(f"{page}/nudge", data={"channel": "", "nonce": uuid.uuid4().hex, "csrf": csrf})
    assert held.status_code == 303
    shown = (await operator.get(page)).text
    assert f"Nudge held for quiet hours until 08:00 {zone} time" in shown, shown[:3000]
    assert await sent_to(emulator, phone) == []
    rows = await actions(engine, case_id)
    assert [r.type for r in rows] == ["nudge_deferred"]
    actor = hash_actor(f"console:{username}", console_app.state.stack.settings.actor_hash_key)
    assert rows[0].actor_id_hash == actor
    # cancelling ends the held nudge with the case: it never goes out
    assert (await operator.post(f"{page}/cancelled", data={"confirm": "yes", "csrf": csrf})).status_code == 303

    async def cancelled() -> bool:
        return [r.type for r in await actions(engine, case_id)][-1:] == ["case_cancelled"]

    await _eventually(cancelled)
    assert (await actions(engine, case_id))[-1].actor_id_hash == actor
    assert "Nudge now" not in (await operator.get(page)).text and await sent_to(emulator, phone) == []


async def test_the_list_and_the_results_stay_on_an_index_at_10000_cases(
    console_app: FastAPI, engine: AsyncEngine
) -> None:
    company, _, _ = await new_member(engine, offsets=[0, 3])
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE companies SET currency = 'EUR' WHERE id = :c"), {"c": company})
        await conn.execute(
            text(
                "INSERT INTO memberships (company_id, name, preferred_channel, status, plan_amount)"
                " SELECT :c, 'Member ' || g, 'sms', 'ACTIVE', 20.00 FROM generate_series(1, 10000) g"
            ),
            {"c": company},
        )
        # a quarter each: open, recovered, cancelled, terminated; closed over the last weeks
        await conn.execute(
            text(
                "INSERT INTO recovery_cases"
                " (company_id, membership_id, status, trigger, attempts, opened_at, closed_at)"
                " SELECT :c, id, (ARRAY['OPEN','RECOVERED','CANCELLED','TERMINATED'])[1 + id % 4], 'payment_failed',"
                " id % 3, now() - make_interval(days => (id % 60)::int),"
                " CASE WHEN id % 4 = 0 THEN NULL ELSE now() - make_interval(days => (id % 50)::int) END"
                " FROM memberships WHERE company_id = :c AND plan_amount IS NOT NULL"
            ),
            {"c": company},
        )
        await conn.execute(
            text(
                "INSERT INTO recovery_actions (case_id, company_id, type, idempotency_key)"
                " SELECT id, company_id, 'nudge_sms', 'bulk:' || id FROM recovery_cases"
                " WHERE company_id = :c AND attempts > 0"
            ),
            {"c": company},
        )
    small, small_member, _ = await new_member(engine, offsets=[0])  # a company of 1 case beside it
    await _case(console_app, small_member, small)
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE companies, memberships, recovery_cases, recovery_actions"))
        await conn.commit()

        async def plan(company_id: str, **filters: object) -> str:
            params = {"company": company_id, "before": None, "status": None, "trigger": None, "channel": None}
            params |= {"opened_from": None, "opened_to": None, "limit": 26, **filters}
            compiled = str(CASES.bindparams(**params).compile(compile_kwargs={"literal_binds": True}))
            return "\n".join(r[0] for r in await conn.execute(text("EXPLAIN " + compiled)))

        # The big company's page reads its newest rows off an index, in order (no sort of 10,000);
        # a small company's goes straight to its own rows.
        for filters in ({}, {"status": "RECOVERED"}, {"channel": "sms", "trigger": "payment_failed"}):
            found = await plan(company, **filters)
            assert "Index Scan" in found and "Seq Scan on recovery_cases" not in found, found
            assert "Sort" not in found, found
        found = await plan(small)
        assert "ix_recovery_cases_company_id" in found and "Seq Scan on recovery_cases" not in found, found

    operator, _ = await signed_in(console_app, engine, "operator")
    listed = await operator.get(f"/console/churn?company={company}&status=RECOVERED")
    assert listed.status_code == 200 and listed.text.count("badge-recovered") == 25 and "Older →" in listed.text
    older_link = re.search(r'href="(\?[^"]*&(?:amp;)?before=\d+)"', listed.text)
    assert older_link, listed.text[-2000:]
    older = await operator.get("/console/churn" + older_link.group(1).replace("&amp;", "&"))
    assert older.status_code == 200 and older.text.count("badge-recovered") == 25
    first_ids = set(re.findall(r"Case #(\d+)<", listed.text))
    assert first_ids and first_ids.isdisjoint(re.findall(r"Case #(\d+)<", older.text))
    results = await operator.get(f"/console/churn/results?company={company}")
    assert results.status_code == 200
    assert "€50,000.00" in results.text  # 2,500 recovered members x 20.00, in the company's currency
    assert '<p class="big">33%</p>' in results.text  # 2,500 recovered of 7,500 closed
    assert results.text.count("<svg") == 4


async def test_a_case_page_lists_the_stripe_events_about_its_member(console_app: FastAPI, engine: AsyncEngine) -> None:
    company, member, _ = await new_member(engine, offsets=[30])
    customer = f"cus_console_{uuid.uuid4().hex[:10]}"
    async with engine.begin() as conn:
        link = text("UPDATE memberships SET stripe_customer_id = :c WHERE id = :m")
        await conn.execute(link, {"c": customer, "m": member})
    stack = console_app.state.stack
    handlers = stripe_handlers(stack.client, stack.engine, stack.settings)  # no Stripe re-read: the event's word
    now = int(datetime.now(UTC).timestamp())

    def event(kind: str, created: int) -> dict:
        invoice = {"object": "invoice", "id": f"in_{uuid.uuid4().hex[:8]}", "customer": customer, "subscription": None}
        return {"id": f"evt_{uuid.uuid4().hex[:12]}", "type": kind, "created": created, "data": {"object": invoice}}

    failed, late = event("invoice.payment_failed", now), event("invoice.paid", now - 3600)
    await handlers["invoice.payment_failed"](failed)  # opens the case
    await handlers["invoice.paid"](late)  # older than the failure: ignored, listed as such
    await handlers["invoice.payment_failed"](failed)  # Stripe's retry: listed once
    async with engine.connect() as conn:
        case_id = await conn.scalar(text("SELECT id FROM recovery_cases WHERE membership_id = :m"), {"m": member})
    admin, _ = await signed_in(console_app, engine, "company_admin", company)
    shown = (await admin.get(f"/console/churn/cases/{case_id}")).text
    assert shown.count(failed["id"]) == 1 and late["id"] in shown
    assert "invoice.payment_failed" in shown and "no: older than one applied" in shown
    other, _ = await signed_in(console_app, engine, "company_admin", (await new_member(engine, offsets=[1]))[0])
    assert (await other.get(f"/console/churn/cases/{case_id}")).status_code == 404
