"""Churn cases on the time-skipping server: a real PostgreSQL, the Twilio emulator and the Stripe
sandbox through the real SDKs, and weeks of a case's life in seconds."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import pydantic
import pytest
import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.churn.cases import ChurnActivities, OpenCaseCounts, hash_actor
from activities.churn.cases import open_case as open_case_row
from activities.messaging.outbox import QuietHours
from activities.messaging.send import MessagingActivities, Senders, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway
from activities.payments.activities import PaymentActivities
from activities.payments.gateway import StripeGateway
from config.settings import load_settings
from devtools.twilio_emulator import TwilioEmulator
from schemas import ids
from schemas.churn import ApplyIncentive, CaseAction, CaseStatus, DecideNudge, ManualNudge
from services import churn as churn_api
from tests.activities.test_orders import zone_where
from workers import families
from workflows.churn import ChurnCaseWorkflow
from workflows.messaging import company_weight

SENDERS = Senders(whatsapp="whatsapp:+15005550006", sms="+15005550006")
PERSON = "Kofi Mensah"


@asynccontextmanager
async def churn_workers(
    client: Client, engine: AsyncEngine, gateway: TwilioGateway, stripe_api: stripe.StripeClient, task_queue: str
) -> AsyncIterator[None]:
    cases = ChurnActivities(engine)
    payments = PaymentActivities(StripeGateway(stripe_api, engine, success_url="https://pay.example.test/p"))
    # The outbox's own (global) cap and quiet hours are off: these tests are about the company's.
    sends = MessagingActivities(engine, gateway, SENDERS, SendPolicy(daily_cap=10_000, quiet_hours=QuietHours(0, 0)))
    async with (
        Worker(
            client,
            task_queue=task_queue,
            workflows=families.by_name("churn").workflows(),
            activities=[
                cases.load_case,
                cases.decide_nudge,
                cases.record_action,
                payments.extend_subscription,
                payments.cancel_subscription,
                payments.subscription_state,
            ],
        ),
        Worker(client, task_queue=f"{task_queue}-msg", activities=[sends.send_message, sends.send_messages]),
    ):
        yield


def unique_phone() -> str:
    return "+1559" + str(uuid.uuid4().int)[:7]


async def new_member(
    engine: AsyncEngine,
    *,
    offsets: list[int],
    cap: int = 5,
    quiet: tuple[int, int] = (0, 0),
    grace: int = 3,
    tz: str = "UTC",
) -> tuple[str, int, str]:
    company, phone = f"co-{uuid.uuid4().hex[:8]}", unique_phone()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO companies (id, name, reminder_offsets_days, channels, daily_nudge_cap, quiet_hours_start,"
                " quiet_hours_end, grace_period_days, timezone)"
                " VALUES (:id, 'Gym', :offsets, :channels, :cap, :qs, :qe, :grace, :tz)"
            ),
            {
                "id": company,
                "offsets": offsets,
                "channels": ["sms", "whatsapp"],
                "cap": cap,
                "qs": quiet[0],
                "qe": quiet[1],
                "grace": grace,
                "tz": tz,
            },
        )
        member = await conn.scalar(
            text(
                "INSERT INTO memberships (company_id, name, phone, preferred_channel)"
                " VALUES (:c, :n, :p, 'sms') RETURNING id"
            ),
            {"c": company, "n": PERSON, "p": phone},
        )
    return company, member, phone


async def subscribe(engine: AsyncEngine, stripe_api: stripe.StripeClient, member: int) -> str:
    customer = await StripeGateway(stripe_api, engine).ensure_customer("member", member)
    plan = await stripe_api.v1.plans.create_async(
        {"amount": 2900, "currency": "usd", "interval": "month", "product": {"name": "Gold"}},
        {"idempotency_key": f"plan:{uuid.uuid4().hex}"},
    )
    subscription = await stripe_api.v1.subscriptions.create_async(
        {
            "customer": customer.stripe_customer_id,
            "items": [{"plan": plan.id}],
            "trial_end": int(time.time()) + 3 * 86_400,
        }
    )
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE memberships SET stripe_subscription_id = :s WHERE id = :m"),
            {"s": subscription.id, "m": member},
        )
    return subscription.id


async def company_of(engine: AsyncEngine, member: int) -> str:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT company_id FROM memberships WHERE id = :m"), {"m": member})


async def open_case(
    env: WorkflowEnvironment, engine: AsyncEngine, member: int, task_queue: str
) -> tuple[int, WorkflowHandle]:
    settings = load_settings(task_queue=task_queue, messaging_task_queue=f"{task_queue}-msg")
    company = await company_of(engine, member)
    case_id = await churn_api.start_case(env.client, engine, settings, member, "payment_failed", company_id=company)
    return case_id, env.client.get_workflow_handle(ids.churn_case(case_id), result_type=CaseStatus)


async def result_of(env: WorkflowEnvironment, handle: WorkflowHandle) -> CaseStatus:
    """A handle from `get_workflow_handle` does not skip time by itself while it waits."""
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        return await handle.result()


def readable(history: WorkflowHistory) -> str:
    """The history's JSON with every payload's data decoded: `to_json` leaves it base64, where no
    phone number or name would ever be found."""
    decoded: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                decoded.append(base64.b64decode(node["data"]).decode(errors="replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history.to_json_dict())
    return history.to_json() + "\n".join(decoded)


async def actions(engine: AsyncEngine, case_id: int) -> list:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text(
                    "SELECT type, actor_type, actor_id_hash, metadata AS meta"
                    " FROM recovery_actions WHERE case_id = :c ORDER BY id"
                ),
                {"c": case_id},
            )
        ).all()


async def sent_to(emulator: TwilioEmulator, phone: str) -> list[dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/messages", params={"to": phone}) as response:
            return await response.json()


async def task_failures(handle: WorkflowHandle) -> int:
    history = await handle.fetch_history()
    return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)


# --------------------------------------------------------------------------- the case's clock


async def test_nudges_at_offsets_until_the_member_recovers(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    company, member, phone = await new_member(engine, offsets=[0, 2, 5])
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        await env.sleep(timedelta(days=1))
        assert (await handle.query(ChurnCaseWorkflow.status)).attempts == 1
        await env.sleep(timedelta(days=2))  # day 3: the day-2 nudge went out
        await handle.signal(ChurnCaseWorkflow.recovered, {"actor_id": "stripe", "company_id": company})
        result = await result_of(env, handle)
        await record_history(handle, "churn_case_recovered")
    assert (result.status, result.attempts) == ("RECOVERED", 2)
    rows = await actions(engine, case_id)
    assert [r.type for r in rows] == ["nudge_sms", "nudge_sms", "case_recovered"]
    assert [r.meta["attempt_number"] for r in rows[:2]] == [1, 2]
    assert all(r.meta["manual"] is False and r.meta["template_version"] == 1 for r in rows[:2])
    assert len(await sent_to(emulator, phone)) == 2
    async with engine.connect() as conn:
        case = (
            await conn.execute(
                text("SELECT status, attempts, last_nudge_at FROM recovery_cases WHERE id = :c"), {"c": case_id}
            )
        ).one()
    assert (case.status, case.attempts) == ("RECOVERED", 2) and case.last_nudge_at is not None
    described = await handle.describe()
    assert described.typed_search_attributes.get(churn_api.search_attributes.CASE_STATUS) == "RECOVERED"
    # The case and each send weigh its company's share (one open case: the heaviest weight the server takes).
    events = (await handle.fetch_history()).events
    assert events[0].workflow_execution_started_event_attributes.priority.fairness_weight == company_weight(1)
    weights = [
        e.activity_task_scheduled_event_attributes.priority.fairness_weight
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "send_message"
    ]
    assert weights == [company_weight(1)] * 2 == [1000.0] * 2


async def test_a_nudge_is_weighted_by_its_companys_open_cases_counted_once_a_minute(engine: AsyncEngine) -> None:
    company, member, _ = await new_member(engine, offsets=[0])
    others = [await other_member(engine, company) for _ in range(4)]
    other_company, outsider, _ = await new_member(engine, offsets=[0])
    case_id, _, _ = await open_case_row(engine, member, "payment_failed", company)
    for m in others[:2]:
        await open_case_row(engine, m, "payment_failed", company)
    await open_case_row(engine, outsider, "payment_failed", other_company)
    async with engine.begin() as conn:  # a closed case is no longer the company's bulk
        await conn.execute(
            text("UPDATE recovery_cases SET status = 'RECOVERED' WHERE membership_id = :m"), {"m": others[1]}
        )
    cases = ChurnActivities(engine)
    decide = DecideNudge(case_id=case_id, company_id=company, at=datetime(2026, 12, 7, 12, tzinfo=UTC))

    decided = await asyncio.gather(*(cases.decide_nudge(decide) for _ in range(5)))
    assert [d.open_cases for d in decided] == [2] * 5, "this company's open cases, not the other's or closed ones"
    await open_case_row(engine, others[2], "payment_failed", company)
    assert (await cases.decide_nudge(decide)).open_cases == 2, "counted again only after a minute"
    assert (await ChurnActivities(engine).decide_nudge(decide)).open_cases == 3
    # Once counted, a stale count is recounted beside the callers, who take the last one meanwhile.
    counts = OpenCaseCounts(engine, fresh=0.0)
    assert await counts(company) == 3
    await open_case_row(engine, others[3], "payment_failed", company)
    assert await counts(company) == 3, "the last count serves while the recount runs"
    recounted = False
    for _ in range(100):
        if recounted := await counts(company) == 4:
            break
        await asyncio.sleep(0.05)
    assert recounted, "the recount's answer serves the callers after it"
    assert company_weight(2) > company_weight(3) and company_weight(20) == 20 * company_weight(400)


async def other_member(engine: AsyncEngine, company: str) -> int:
    async with engine.begin() as conn:
        return await conn.scalar(
            text(
                "INSERT INTO memberships (company_id, name, phone, preferred_channel)"
                " VALUES (:c, :n, :p, 'sms') RETURNING id"
            ),
            {"c": company, "n": PERSON, "p": unique_phone()},
        )


async def test_after_the_last_offset_and_the_grace_period_the_membership_is_terminated_at_stripe(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    _, member, phone = await new_member(engine, offsets=[0, 2, 5], grace=3)
    subscription = await subscribe(engine, stripe_api, member)
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        result = await result_of(env, handle)
        await record_history(handle, "churn_case_terminated")
    assert (result.status, result.attempts) == ("TERMINATED", 3)
    assert (await stripe_api.v1.subscriptions.retrieve_async(subscription)).status == "canceled"
    assert [r.type for r in await actions(engine, case_id)] == ["nudge_sms"] * 3 + ["membership_terminated"]
    assert len(await sent_to(emulator, phone)) == 3
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT status FROM memberships WHERE id = :m"), {"m": member}) == "TERMINATED"


async def test_quiet_hours_and_the_daily_cap_hold_nudges_back_and_say_so(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    now = await env.get_current_time()
    # In a zone where it is now 10:xx, quiet hours 10-12: the day-0 nudge waits until 12:00.
    quiet = (10, 12)
    company, member, phone = await new_member(engine, offsets=[0], quiet=quiet, cap=1, tz=zone_where(now, 10))
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        await env.sleep(timedelta(hours=3))
        first = await handle.query(ChurnCaseWorkflow.status)
        await handle.signal(
            ChurnCaseWorkflow.manual_nudge, {"actor_id": "agent-5", "company_id": company}
        )  # the cap (1 a day) holds it
        await env.sleep(timedelta(minutes=1))
        await handle.signal(ChurnCaseWorkflow.cancelled, {"company_id": company})
        await result_of(env, handle)
    rows = await actions(engine, case_id)
    assert [(r.type, r.meta.get("held_back")) for r in rows] == [
        ("nudge_deferred", "quiet_hours"),
        ("nudge_sms", None),
        ("nudge_suppressed", "daily_cap"),
        ("case_cancelled", None),
    ]
    sent_at = datetime.fromisoformat(rows[0].meta["retry_at"])
    assert sent_at.hour == quiet[1] and first.attempts == 1
    assert rows[2].actor_type == "user" and rows[2].actor_id_hash and "agent-5" not in rows[2].actor_id_hash
    assert len(await sent_to(emulator, phone)) == 1


# --------------------------------------------------------------------------- people step in


async def test_manual_nudges_incentives_and_malformed_payloads(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
    record_history,
) -> None:
    env = time_skipping_env
    company, member, phone = await new_member(engine, offsets=[30])
    subscription = await subscribe(engine, stripe_api, member)
    trial_end = (await stripe_api.v1.subscriptions.retrieve_async(subscription)).trial_end
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        for bad in ({"channel": "sms"}, {"actor_id": ""}, "nudge please", {"actor_id": "a", "channel": "fax"}):
            await handle.signal("manual_nudge", bad)
        await handle.signal("manual_nudge", {"actor_id": "agent-1", "company_id": "another-company"})
        await churn_api.manual_nudge(
            env.client, engine, case_id, ManualNudge(actor_id="agent-1", note="called, no answer", company_id=company)
        )
        await env.sleep(timedelta(minutes=5))
        status = await handle.query(ChurnCaseWorkflow.status)

        period_end = await handle.execute_update(
            ChurnCaseWorkflow.apply_incentive, ApplyIncentive(actor_id="agent-1", days=14, company_id=company)
        )
        with pytest.raises(WorkflowUpdateFailedError) as twice:
            await handle.execute_update(
                ChurnCaseWorkflow.apply_incentive, ApplyIncentive(actor_id="agent-1", days=14, company_id=company)
            )
        assert "already applied" in str(twice.value.cause)
        for bad_days in (0, 91):
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await handle.execute_update(
                    ChurnCaseWorkflow.apply_incentive,
                    ApplyIncentive(actor_id="agent-1", days=bad_days, company_id=company),
                )
            assert "between 1 and 90" in str(refused.value.cause)
        await handle.signal(ChurnCaseWorkflow.recovered, {"actor_id": "agent-1", "company_id": company})
        await result_of(env, handle)
        await record_history(handle, "churn_case_opened_locally")

    assert (status.attempts, status.manual_nudges) == (1, 1)
    extended = (await stripe_api.v1.subscriptions.retrieve_async(subscription)).trial_end
    assert extended == trial_end + 14 * 86_400, "one 14-day extension at Stripe"
    assert period_end is not None and int(period_end.timestamp()) >= extended  # when next billed
    rows = await actions(engine, case_id)
    assert [r.type for r in rows] == ["nudge_sms", "incentive_applied", "case_recovered"]
    assert rows[0].meta["manual"] is True and rows[0].actor_type == "user"
    assert len(await sent_to(emulator, phone)) == 1
    assert await task_failures(handle) == 0
    # Tenant scoping at the door: another company's name for this case is refused.
    with pytest.raises(churn_api.CaseRefused, match="does not belong"):
        await churn_api.manual_nudge(
            env.client, engine, case_id, ManualNudge(actor_id="x", company_id="another-company")
        )
    assert company != "another-company"


async def test_malformed_endings_are_dropped_and_the_case_stays_open(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    company, member, _ = await new_member(engine, offsets=[30])
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        for signal in ("recovered", "cancelled"):
            for bad in ({"actor_id": ["agent-1"]}, {"actor_id": "x" * 101}, "over", [1], b"raw bytes"):
                await handle.signal(signal, bad)
        await handle.signal("cancelled", {"actor_id": "agent-1", "company_id": "another-company"})
        await env.sleep(timedelta(minutes=5))
        assert (await handle.query(ChurnCaseWorkflow.status)).status == "OPEN"
        await handle.signal("recovered")  # no payload: no company, dropped
        await handle.signal("cancelled", {"actor_id": "agent-1"})  # no company: dropped
        await env.sleep(timedelta(minutes=5))
        assert (await handle.query(ChurnCaseWorkflow.status)).status == "OPEN"
        await handle.signal("recovered", {"company_id": company})  # a valid ending without an actor
        result = await result_of(env, handle)
    assert result.status == "RECOVERED"
    assert [r.type for r in await actions(engine, case_id)] == ["case_recovered"]
    assert await task_failures(handle) == 0


async def test_no_action_row_or_history_holds_a_phone_number_an_operator_id_or_free_text(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    company, member, phone = await new_member(engine, offsets=[0, 1])
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        # Through the services, as the API and `jobctl churn` send them (issue #33: they carried the
        # operator's raw id and note into the history, which the database never stores).
        await churn_api.manual_nudge(
            env.client, engine, case_id, ManualNudge(actor_id="agent-9", note="left a voicemail", company_id=company)
        )
        await env.sleep(timedelta(days=1, hours=1))
        await churn_api.signal_case(
            env.client, engine, case_id, "cancelled", {"actor_id": "agent-9"}, company_id=company
        )
        await result_of(env, handle)
    (body, *_) = [m["body"] for m in await sent_to(emulator, phone)]
    history = readable(await handle.fetch_history())
    async with engine.connect() as conn:
        stored = json.dumps(
            [
                list(r)
                for r in (
                    await conn.execute(text("SELECT * FROM recovery_actions WHERE case_id = :c"), {"c": case_id})
                ).all()
            ],
            default=str,
        )
    for haystack in (history, stored):
        assert phone not in haystack and phone[2:] not in haystack
        assert PERSON not in haystack and "Kofi" not in haystack
        assert body not in haystack and "keep your membership" not in haystack
        assert "agent-9" not in haystack and "voicemail" not in haystack
    hashed = [r.actor_id_hash for r in await actions(engine, case_id) if r.actor_type == "user"]
    assert hashed == [hash_actor("agent-9")] * len(hashed) and len(hashed) >= 2  # the nudge and the ending


async def test_stripe_events_open_one_case_per_member_and_a_paid_invoice_recovers_it(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from tests.activities.test_webhooks import STRIPE_SECRET, TWILIO_TOKEN, stripe_signed
    from workers.webhooks import create_app

    env = time_skipping_env
    _, member, _ = await new_member(engine, offsets=[10])
    subscription = await subscribe(engine, stripe_api, member)
    settings = load_settings(task_queue=task_queue, messaging_task_queue=f"{task_queue}-msg")
    app = create_app(
        engine,
        stripe_webhook_secret=STRIPE_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        stripe_handlers=churn_api.stripe_handlers(env.client, engine, settings),
    )

    def invoice(kind: str) -> dict:
        obj = {
            "id": f"in_{uuid.uuid4().hex[:10]}",
            "object": "invoice",
            "subscription": subscription,
            "customer": "cus_x",
        }
        return {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": kind, "data": {"object": obj}}

    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue), TestClient(TestServer(app)) as http:
        for kind in ("invoice.payment_failed", "invoice.payment_failed"):  # the retry of a failed invoice fails again
            payload, headers = stripe_signed(invoice(kind))
            assert (await http.post("/webhooks/stripe", data=payload, headers=headers)).status == 200
        async with engine.connect() as conn:
            cases = (
                await conn.execute(
                    text("SELECT id, trigger FROM recovery_cases WHERE membership_id = :m"), {"m": member}
                )
            ).all()
        assert [c.trigger for c in cases] == ["payment_failed"]
        handle = env.client.get_workflow_handle(ids.churn_case(cases[0].id), result_type=CaseStatus)
        payload, headers = stripe_signed(invoice("invoice.paid"))
        assert (await http.post("/webhooks/stripe", data=payload, headers=headers)).status == 200
        result = await result_of(env, handle)
    assert result.status == "RECOVERED"
    assert [r.type for r in await actions(engine, cases[0].id)][-1] == "case_recovered"


# --------------------------------------------------------------------------- Stripe's word, not a stale event's


async def subscribe_paying(engine: AsyncEngine, stripe_api: stripe.StripeClient, member: int) -> str:
    """An `active` subscription (a free plan: its first invoice is paid at once in the sandbox)."""
    customer = await StripeGateway(stripe_api, engine).ensure_customer("member", member)
    plan = await stripe_api.v1.plans.create_async(
        {"amount": 0, "currency": "usd", "interval": "month", "product": {"name": "Free"}},
        {"idempotency_key": f"plan:{uuid.uuid4().hex}"},
    )
    subscription = await stripe_api.v1.subscriptions.create_async(
        {"customer": customer.stripe_customer_id, "items": [{"plan": plan.id}]}
    )
    assert subscription.status == "active"
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE memberships SET stripe_subscription_id = :s WHERE id = :m"),
            {"s": subscription.id, "m": member},
        )
    return subscription.id


def stripe_event(kind: str, obj: dict, *, created: int | None = None, previous: dict | None = None) -> dict:
    data: dict = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": kind,
        "created": created or int(time.time()),
        "data": data,
    }


def an_invoice(subscription: str, customer: str = "cus_x") -> dict:
    return {
        "id": f"in_{uuid.uuid4().hex[:10]}",
        "object": "invoice",
        "subscription": subscription,
        "customer": customer,
    }


async def cases_of(engine: AsyncEngine, member: int) -> list:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT id, status, trigger FROM recovery_cases WHERE membership_id = :m ORDER BY id"),
                {"m": member},
            )
        ).all()


async def test_a_late_payment_failed_older_than_a_paid_invoice_opens_no_case_and_cancels_nothing(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    _, member, _ = await new_member(engine, offsets=[0], grace=0)
    subscription = await subscribe(engine, stripe_api, member)  # not `active` at the sandbox: only the events speak
    settings = load_settings(task_queue=task_queue, messaging_task_queue=f"{task_queue}-msg")
    handlers = churn_api.stripe_handlers(env.client, engine, settings)
    t2 = int(time.time())
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        await handlers["invoice.paid"](stripe_event("invoice.paid", an_invoice(subscription), created=t2))
        await handlers["invoice.payment_failed"](
            stripe_event("invoice.payment_failed", an_invoice(subscription), created=t2 - 60)
        )
        await env.sleep(timedelta(days=1))
    assert await cases_of(engine, member) == []
    assert (await stripe_api.v1.subscriptions.retrieve_async(subscription)).status != "canceled"


async def test_a_failed_invoice_for_a_subscription_stripe_says_is_active_opens_no_case(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    _, member, _ = await new_member(engine, offsets=[0], grace=0)
    subscription = await subscribe_paying(engine, stripe_api, member)
    settings = load_settings(task_queue=task_queue, messaging_task_queue=f"{task_queue}-msg")
    handlers = churn_api.stripe_handlers(env.client, engine, settings, stripe=StripeGateway(stripe_api, engine))
    await handlers["invoice.payment_failed"](stripe_event("invoice.payment_failed", an_invoice(subscription)))
    assert await cases_of(engine, member) == []


async def test_before_cancelling_the_case_asks_stripe_and_a_member_who_paid_meanwhile_is_recovered_not_cancelled(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    _, member, _ = await new_member(engine, offsets=[0], grace=0)
    subscription = await subscribe_paying(engine, stripe_api, member)  # the invoice.paid webhook was lost
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        result = await result_of(env, handle)
    assert result.status == "RECOVERED"
    assert (await stripe_api.v1.subscriptions.retrieve_async(subscription)).status == "active"
    assert [r.type for r in await actions(engine, case_id)][-1] == "case_recovered"


async def test_a_member_who_set_cancel_at_period_end_keeps_the_period_paid_for(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    _, member, _ = await new_member(engine, offsets=[0], grace=0)
    subscription = await subscribe_paying(engine, stripe_api, member)
    await stripe_api.v1.subscriptions.update_async(subscription, {"cancel_at_period_end": True})
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        _, handle = await open_case(env, engine, member, task_queue)
        result = await result_of(env, handle)
    at_stripe = await stripe_api.v1.subscriptions.retrieve_async(subscription)
    assert result.status == "TERMINATED"
    assert (at_stripe.status, at_stripe.cancel_at_period_end) == ("active", True), "cancelled at period end, not now"


async def test_a_subscription_update_that_did_not_change_cancel_at_period_end_opens_no_case_after_a_closed_one(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    company, member, _ = await new_member(engine, offsets=[30])
    subscription = await subscribe(engine, stripe_api, member)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO recovery_cases (company_id, membership_id, trigger, status)"
                " VALUES (:c, :m, 'cancel_at_period_end', 'RECOVERED')"
            ),
            {"c": company, "m": member},
        )
    settings = load_settings(task_queue=task_queue, messaging_task_queue=f"{task_queue}-msg")
    handlers = churn_api.stripe_handlers(env.client, engine, settings)
    obj = {"id": subscription, "object": "subscription", "customer": "cus_x", "cancel_at_period_end": True}
    await handlers["customer.subscription.updated"](
        stripe_event("customer.subscription.updated", obj, previous={"metadata": {}})
    )
    assert [c.status for c in await cases_of(engine, member)] == ["RECOVERED"]


# --------------------------------------------------------------------------- tenant isolation


async def test_a_stripe_customer_id_in_two_companies_resolves_to_neither(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    task_queue: str,
) -> None:
    env = time_skipping_env
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    members = []
    for _ in range(2):
        _, member, _ = await new_member(engine, offsets=[30])
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE memberships SET stripe_customer_id = :c WHERE id = :m"), {"c": customer, "m": member}
            )
        members.append(member)
    settings = load_settings(task_queue=task_queue, messaging_task_queue=f"{task_queue}-msg")
    handlers = churn_api.stripe_handlers(env.client, engine, settings)
    obj = {"id": "sub_unknown", "object": "subscription", "customer": customer, "cancel_at_period_end": True}
    await handlers["customer.subscription.updated"](
        stripe_event("customer.subscription.updated", {**obj, "id": None}, previous={"cancel_at_period_end": False})
    )
    assert [await cases_of(engine, m) for m in members] == [[], []]


async def test_signals_and_updates_without_the_company_are_refused_and_the_case_keeps_going(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    company, member, phone = await new_member(engine, offsets=[30])
    await subscribe(engine, stripe_api, member)
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        await handle.signal("manual_nudge", {"actor_id": "agent-1"})
        await handle.signal("cancelled", {"actor_id": "agent-1"})
        for request in (
            {"actor_id": "agent-1", "days": 7},
            {"actor_id": "agent-1", "days": 7, "company_id": "another-company"},
        ):
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await handle.execute_update("apply_incentive", request)
            assert "company" in str(refused.value.cause)
        await env.sleep(timedelta(minutes=5))
        status = await handle.query(ChurnCaseWorkflow.status)
        with pytest.raises(churn_api.CaseRefused, match="does not belong"):
            await churn_api.signal_case(env.client, engine, case_id, "cancelled", {}, company_id="another-company")
        with pytest.raises(pydantic.ValidationError, match="company_id"):
            ManualNudge(actor_id="agent-1")  # type: ignore[call-arg]
        await churn_api.signal_case(env.client, engine, case_id, "cancelled", {}, company_id=company)
        result = await result_of(env, handle)
    assert (status.status, status.attempts, status.incentive_applied) == ("OPEN", 0, False)
    assert result.status == "CANCELLED" and await sent_to(emulator, phone) == []
    assert await task_failures(handle) == 0


# --------------------------------------------------------------------------- small correctness points


async def test_an_incentive_for_a_case_that_is_ending_is_refused_and_stripe_is_not_called(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    company, member, _ = await new_member(engine, offsets=[30])
    subscription = await subscribe(engine, stripe_api, member)
    trial_end = (await stripe_api.v1.subscriptions.retrieve_async(subscription)).trial_end
    cases, closing, release = ChurnActivities(engine), asyncio.Event(), asyncio.Event()

    @activity.defn(name="churn_record_action")
    async def slow_close(action: CaseAction) -> bool:
        if action.close_as is not None:  # hold the case between its ending signal and its closing row
            closing.set()
            await release.wait()
        return await cases.record_action(action)

    payments = PaymentActivities(StripeGateway(stripe_api, engine))
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ChurnCaseWorkflow],
        activities=[cases.load_case, cases.decide_nudge, slow_close, payments.extend_subscription],
    ):
        case_id, handle = await open_case(env, engine, member, task_queue)
        await handle.signal("cancelled", {"company_id": company})
        await asyncio.wait_for(closing.wait(), 30)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                ChurnCaseWorkflow.apply_incentive, ApplyIncentive(actor_id="a", days=7, company_id=company)
            )
        release.set()
        result = await result_of(env, handle)
    assert "ended" in str(refused.value.cause) and result.status == "CANCELLED"
    assert (await stripe_api.v1.subscriptions.retrieve_async(subscription)).trial_end == trial_end


async def test_a_manual_nudge_on_a_channel_the_company_does_not_allow_is_refused(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    company, member, phone = await new_member(engine, offsets=[30])
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE companies SET channels = ARRAY['sms'] WHERE id = :c"), {"c": company})
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        with pytest.raises(churn_api.CaseRefused, match="does not nudge by whatsapp"):
            await churn_api.manual_nudge(
                env.client, engine, case_id, ManualNudge(actor_id="a", channel="whatsapp", company_id=company)
            )
        await handle.signal(
            "manual_nudge", {"actor_id": "a", "channel": "whatsapp", "company_id": company}
        )  # past the door
        await env.sleep(timedelta(minutes=5))
        await handle.signal("cancelled", {"company_id": company})
        await result_of(env, handle)
    assert [(r.type, r.meta.get("held_back")) for r in await actions(engine, case_id)] == [
        ("nudge_suppressed", "channel_not_allowed"),
        ("case_cancelled", None),
    ]
    assert await sent_to(emulator, phone) == []


async def test_a_daily_cap_above_21_holds_the_nudges_beyond_it(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    emulator: TwilioEmulator,
    task_queue: str,
) -> None:
    env = time_skipping_env
    company, member, phone = await new_member(engine, offsets=[30], cap=25)
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await open_case(env, engine, member, task_queue)
        for n in range(30):
            await handle.signal("manual_nudge", {"actor_id": f"ops-{n}", "company_id": company})

        async def recorded() -> int:
            async with engine.connect() as conn:
                return await conn.scalar(
                    text("SELECT count(*) FROM recovery_actions WHERE case_id = :c"), {"c": case_id}
                )

        for _ in range(600):  # time stands still meanwhile: all 30 on the same day
            if await recorded() >= 30:
                break
            await asyncio.sleep(0.1)
        await handle.signal("cancelled", {"company_id": company})
        await result_of(env, handle)
    rows = await actions(engine, case_id)
    assert [r.type for r in rows].count("nudge_sms") == 25
    assert sum(1 for r in rows if r.meta.get("held_back") == "daily_cap") == 5
    assert len(await sent_to(emulator, phone)) == 25


async def test_stripe_calls_never_retry_past_the_24_hour_idempotency_window(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    _, member, _ = await new_member(engine, offsets=[0], grace=0)
    await subscribe(engine, stripe_api, member)
    async with churn_workers(env.client, engine, gateway, stripe_api, task_queue):
        _, handle = await open_case(env, engine, member, task_queue)
        await result_of(env, handle)
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    stripe_calls = [a for a in scheduled if a.activity_type.name in ("subscription_state", "cancel_subscription")]
    assert [a.activity_type.name for a in stripe_calls] == ["subscription_state", "cancel_subscription"]
    assert all(timedelta(0) < a.schedule_to_close_timeout.ToTimedelta() < timedelta(hours=24) for a in stripe_calls)
