"""The links messages carry, made as they go out (issue #35): a churn nudge's stable manage link
(`{PUBLIC_BASE_URL}/manage/{token}`, no Stripe call at send time; opening it makes the customer-portal
session in the sandbox) and its text by what opened the case, and the order follow-up's link back
to the checkout, read in the text the Twilio emulator received."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, timedelta

import aiohttp
import pytest
import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.churn.cases import ChurnActivities
from activities.churn.managelinks import DEV_MANAGE_LINK_SECRET, open_manage_link, parse
from activities.messaging.links import MessageLinks
from activities.messaging.send import MessagingActivities, SendPolicy
from activities.messaging.twilio_gateway import TwilioGateway
from activities.orders import OrderActivities
from activities.payments.activities import PaymentActivities
from activities.payments.gateway import StripeGateway
from config.settings import Settings, SettingsError, load_settings
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas import ids
from schemas.churn import CaseStatus
from schemas.messaging import SendMessage
from services import churn as churn_api
from tests.activities.test_churn import SENDERS, actions, new_member, sent_to
from tests.activities.test_orders import NO_QUIET_HOURS, new_order, start, zone_where
from workers import families
from workflows.churn import ChurnCaseWorkflow
from workflows.orders import OrderFailureWorkflow, PendingOrderWorkflow

CHECKOUT = "https://shop.example.test/checkout/{order_external_id}?o={order_id}"
MANAGE = "https://billing.example.test/{company_id}/membership"
BASE = "https://jobctl.example.test"
LINK = re.compile(re.escape(BASE) + r"/manage/([A-Za-z0-9_.\-]+)$")


@asynccontextmanager
async def workers(
    client: Client,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    stripe_api: stripe.StripeClient,
    task_queue: str,
    *,
    manage: str | None = MANAGE,
    base_url: str | None = BASE,
) -> AsyncIterator[None]:
    stripe_gateway = StripeGateway(stripe_api, engine)
    links = MessageLinks(engine, checkout_url_template=CHECKOUT, manage_url=manage, public_base_url=base_url)
    sends = MessagingActivities(
        engine, gateway, SENDERS, SendPolicy(daily_cap=10_000, quiet_hours=NO_QUIET_HOURS), links=links
    )
    cases, payments, orders = ChurnActivities(engine), PaymentActivities(stripe_gateway), OrderActivities(engine)
    async with (
        Worker(
            client,
            task_queue=task_queue,
            workflows=[*families.by_name("churn").workflows(), PendingOrderWorkflow, OrderFailureWorkflow],
            activities=[
                cases.load_case,
                cases.decide_nudge,
                cases.record_action,
                payments.subscription_state,
                payments.cancel_subscription,
                orders.register_pending_order,
                orders.record_follow_up,
                orders.settle_pending_order,
            ],
        ),
        Worker(client, task_queue=f"{task_queue}-msg", activities=[sends.send_message, sends.send_messages]),
    ):
        yield


def link_settings(**overrides: object) -> Settings:
    return load_settings(**{"churn_manage_url": MANAGE, "public_base_url": BASE} | overrides)


async def case_of(env: WorkflowEnvironment, engine: AsyncEngine, member: int, trigger: str, task_queue: str):
    settings = load_settings(task_queue=task_queue, messaging_task_queue=f"{task_queue}-msg", churn_manage_url=MANAGE)
    async with engine.connect() as conn:
        company = await conn.scalar(text("SELECT company_id FROM memberships WHERE id = :m"), {"m": member})
    case_id = await churn_api.start_case(env.client, engine, settings, member, trigger, company_id=company)
    return case_id, env.client.get_workflow_handle(ids.churn_case(case_id), result_type=CaseStatus)


@pytest.mark.parametrize(
    ("trigger", "words"),
    [("payment_failed", "did not go through. Update your card"), ("cancel_at_period_end", "sorry to see you go")],
)
async def test_a_nudge_carries_a_stable_manage_link_and_says_what_opened_the_case(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    stripe_api: stripe.StripeClient,
    sandbox: StripeSandbox,
    task_queue: str,
    trigger: str,
    words: str,
) -> None:
    env = time_skipping_env
    _, member, phone = await new_member(engine, offsets=[0, 1], grace=30)
    stripe_gateway = StripeGateway(stripe_api, engine)
    customer = await stripe_gateway.ensure_customer("member", member)
    before = await portal_sessions(sandbox)
    async with workers(env.client, engine, gateway, stripe_api, task_queue):
        case_id, handle = await case_of(env, engine, member, trigger, task_queue)
        await env.sleep(timedelta(days=1, hours=1))
        assert (await handle.query(ChurnCaseWorkflow.status)).attempts == 2
        now = await env.get_current_time()
        await handle.terminate("test over")
    assert await portal_sessions(sandbox) == before, "no customer-portal session at send time"
    first, second = sorted(await sent_to(emulator, phone), key=lambda m: m["date_created"])
    tokens = []
    for message in (first, second):
        assert words in message["body"], message["body"]
        (token,) = LINK.findall(message["body"])
        parsed = parse(token)
        assert parsed is not None and parsed[0] == member
        tokens.append(token)
    rows = [r for r in await actions(engine, case_id) if r.type.startswith("nudge_")]
    assert {r.meta["template"] for r in rows} == {
        "churn_nudge_payment_failed" if trigger == "payment_failed" else "churn_nudge_cancel_scheduled"
    }
    # Opening the link (what `GET /manage/{token}` does) makes the member's portal session then.
    today = now.astimezone(UTC).date()
    opened = await open_manage_link(engine, stripe_gateway, link_settings(), tokens[0], today=today)
    assert opened.state == "portal" and opened.url and opened.url.startswith(f"{sandbox.url}/portal/bps_")
    async with aiohttp.ClientSession() as http:
        async with http.get(opened.url) as page:
            assert page.status == 200 and customer.stripe_customer_id in await page.text()


async def portal_sessions(sandbox: StripeSandbox) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{sandbox.url}/_sandbox/stats") as response:
        return (await response.json())["by_endpoint"].get("POST /v1/billing_portal/sessions", 0)


async def test_a_member_without_a_stripe_customer_is_sent_to_the_companys_manage_url(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    company, member, phone = await new_member(engine, offsets=[0], grace=30)
    async with workers(env.client, engine, gateway, stripe_api, task_queue):
        _, handle = await case_of(env, engine, member, "manual", task_queue)
        await env.sleep(timedelta(hours=1))
        now = await env.get_current_time()
        await handle.terminate("test over")
    (message,) = await sent_to(emulator, phone)
    assert "Review or update your membership here: " + BASE + "/manage/" in message["body"]
    (token,) = LINK.findall(message["body"])
    opened = await open_manage_link(
        engine, StripeGateway(stripe_api, engine), link_settings(), token, today=now.astimezone(UTC).date()
    )
    assert (opened.state, opened.url) == ("fallback", f"https://billing.example.test/{company}/membership")


async def test_a_stale_stripe_customer_falls_back_to_the_manage_url(
    engine: AsyncEngine, stripe_api: stripe.StripeClient
) -> None:
    company, member, _ = await new_member(engine, offsets=[0], grace=30)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE memberships SET stripe_customer_id = 'cus_gone' WHERE id = :m"), {"m": member})
    links = MessageLinks(engine, checkout_url_template=None, manage_url=MANAGE, public_base_url=BASE)
    request = SendMessage(
        idempotency_key=f"t:{uuid.uuid4().hex}", recipient_type="member", recipient_id=str(member), template="x"
    )
    made = await links.prepare(request, {"manage_link"}, {})
    assert made is not None and LINK.fullmatch(made.ready["manage_link"])
    (token,) = LINK.findall(made.ready["manage_link"])
    opened = await open_manage_link(engine, StripeGateway(stripe_api, engine), link_settings(), token)
    assert (opened.state, opened.url) == ("fallback", f"https://billing.example.test/{company}/membership")
    # ... and with no CHURN_MANAGE_URL either, a page saying to contact the company (the route's 404)
    nowhere = await open_manage_link(
        engine, StripeGateway(stripe_api, engine), link_settings(churn_manage_url=None), token
    )
    assert nowhere.state == "no_page" and nowhere.url is None


async def test_without_a_customer_or_a_manage_url_the_nudge_is_refused_rather_than_sent_with_no_link(
    engine: AsyncEngine,
) -> None:
    _, member, _ = await new_member(engine, offsets=[0], grace=30)
    links = MessageLinks(engine, checkout_url_template=None, manage_url=None, public_base_url=BASE)
    request = SendMessage(
        idempotency_key=f"t:{uuid.uuid4().hex}", recipient_type="member", recipient_id=str(member), template="x"
    )
    with pytest.raises(ApplicationError) as refused:
        await links.prepare(request, {"manage_link"}, {"manage_link": ""})
    assert refused.value.type == "NoManageLink" and refused.value.non_retryable
    # without PUBLIC_BASE_URL, the company's CHURN_MANAGE_URL itself
    direct = MessageLinks(engine, checkout_url_template=None, manage_url=MANAGE, public_base_url=None)
    made = await direct.prepare(request, {"manage_link"}, {})
    assert made is not None and made.ready["manage_link"].startswith("https://billing.example.test/")


def test_a_token_is_the_same_for_the_same_day_and_names_the_member() -> None:
    from datetime import date

    from activities.churn.managelinks import sign

    secret = DEV_MANAGE_LINK_SECRET.encode()
    day = date(2026, 12, 7)
    assert sign(secret, 7, "co", day) == sign(secret, 7, "co", day) != sign(secret, 7, "co", day + timedelta(days=1))
    assert parse(sign(secret, 7, "co", day))[:2] == (7, day)  # type: ignore[index]


async def test_the_order_follow_up_links_back_to_the_checkout(
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    gateway: TwilioGateway,
    emulator: TwilioEmulator,
    stripe_api: stripe.StripeClient,
    task_queue: str,
) -> None:
    env = time_skipping_env
    now = await env.get_current_time()
    oid, rid, phone = await new_order(engine, tz=zone_where(now + timedelta(hours=2), 12))
    external = f"shop:order/{uuid.uuid4().hex[:6]}"
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE orders SET external_id = :e WHERE id = :i"), {"e": external, "i": oid})
    async with workers(env.client, engine, gateway, stripe_api, task_queue):
        _, handle, _ = await start(env, engine, oid, rid, task_queue, f"{task_queue}-msg")
        await env.sleep(timedelta(hours=2, minutes=1))
        (message,) = await sent_to(emulator, phone)
        await handle.terminate("test over")
    quoted = external.replace(":", "%3A").replace("/", "%2F")
    assert message["body"].endswith(
        f"Complete it before it expires: https://shop.example.test/checkout/{quoted}?o={oid}"
    ), message["body"]
    async with engine.connect() as conn:
        version = await conn.scalar(
            text("SELECT template_version FROM message_log WHERE idempotency_key = :k"), {"k": f"followup:{oid}"}
        )
    assert version == 2


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("order_checkout_url_template", "https://shop.example.test/checkout/{order}"),
        ("order_checkout_url_template", "https://shop.example.test/checkout/{company_id}"),
        ("churn_manage_url", "https://billing.example.test/{member_id}"),
        ("order_checkout_url_template", "shop.example.test/{order_id}"),
    ],
)
def test_a_url_template_with_an_unknown_placeholder_is_refused_at_settings_load(setting: str, value: str) -> None:
    with pytest.raises(SettingsError, match=setting.upper()):
        load_settings(**{setting: value})
