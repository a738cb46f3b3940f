"""`GET /manage/{token}`, the stable link a churn nudge carries, through the real ASGI app against the
real stack (`tests/e2e/api_harness.py`). The nudge carries `{PUBLIC_BASE_URL}/manage/{token}` and
costs no Stripe request; a click makes a customer-portal session (303 to it) for a member with a
Stripe customer, or sends a member without one to CHURN_MANAGE_URL; a forged token is 404, an
expired one 410, with a page saying what to do."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import httpx
import pytest_asyncio
import stripe
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.churn.managelinks import manage_secret, sign
from activities.payments.gateway import StripeGateway
from config.settings import Settings
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from tests.activities.test_churn import new_member, sent_to
from tests.e2e.api_harness import API_BASE, assert_problem, http, new_key, running_workers, stack_settings  # noqa: F401 - pytest fixtures, taken as test arguments

MANAGE = "https://billing.example.test/{company_id}/membership"
LINK = re.compile(re.escape(API_BASE) + r"/manage/([A-Za-z0-9_.\-]+)")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api_settings(emulator: TwilioEmulator, sandbox: StripeSandbox) -> Settings:
    return stack_settings(emulator, sandbox, churn_manage_url=MANAGE)


async def stripe_requests(sandbox: StripeSandbox) -> dict:
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox.url}/_sandbox/stats") as response:
        return await response.json()


async def nudged_link(
    http: httpx.AsyncClient, engine: AsyncEngine, emulator: TwilioEmulator, member: int, company: str, phone: str
) -> str:
    """The `/manage/{token}` path of a manual nudge sent to the member through the API."""
    headers = await new_key(engine, "churn:read", "churn:write", company=company, name=f"m-{uuid.uuid4().hex[:6]}")
    opened = await http.post("/v1/churn/cases", json={"membership_id": member}, headers=headers)
    assert opened.status_code == 201, opened.text
    nudged = await http.post(
        f"/v1/churn/cases/{opened.json()['case_id']}/nudge", json={"channel": "sms"}, headers=headers
    )
    assert nudged.status_code == 200 and nudged.json()["outcome"] == "sent", nudged.text
    (message,) = await sent_to(emulator, phone)
    (token,) = LINK.findall(message["body"])
    assert message["body"].endswith(f"{API_BASE}/manage/{token}"), message["body"]
    return f"/manage/{token}"


async def test_a_nudge_carries_a_stable_link_that_opens_a_new_portal_session_on_each_click(
    http: httpx.AsyncClient,
    engine: AsyncEngine,
    emulator: TwilioEmulator,
    sandbox: StripeSandbox,
    stripe_api: stripe.StripeClient,
) -> None:
    company, member, phone = await new_member(engine, offsets=[30], cap=5)
    customer = await StripeGateway(stripe_api, engine).ensure_customer("member", member)
    before = await stripe_requests(sandbox)
    link = await nudged_link(http, engine, emulator, member, company, phone)
    after = await stripe_requests(sandbox)
    assert after["by_endpoint"].get("POST /v1/billing_portal/sessions", 0) == before["by_endpoint"].get(
        "POST /v1/billing_portal/sessions", 0
    ), "no portal session at send time"

    first, again = await http.get(link), await http.get(link)
    for opened in (first, again):
        assert opened.status_code == 303, opened.text
        assert opened.headers["location"].startswith(f"{sandbox.url}/portal/bps_")
        assert opened.headers["cache-control"] == "no-store"
    assert first.headers["location"] != again.headers["location"], "a new session per click: one lives minutes"
    async with aiohttp.ClientSession() as browser, browser.get(first.headers["location"]) as page:
        text = await page.text()
        assert page.status == 200 and customer.stripe_customer_id in text
        assert MANAGE.format(company_id=company) in text, "the portal returns to CHURN_MANAGE_URL"


async def test_a_member_without_a_stripe_customer_is_sent_to_the_companys_manage_url(
    http: httpx.AsyncClient, engine: AsyncEngine, emulator: TwilioEmulator
) -> None:
    company, member, phone = await new_member(engine, offsets=[30], cap=5)
    link = await nudged_link(http, engine, emulator, member, company, phone)
    opened = await http.get(link)
    assert opened.status_code == 303 and opened.headers["location"] == MANAGE.format(company_id=company)


async def test_a_forged_unknown_or_expired_link_answers_a_page_saying_what_to_do(
    http: httpx.AsyncClient, engine: AsyncEngine, api_settings: Settings
) -> None:
    company, member, _ = await new_member(engine, offsets=[30], cap=5)
    secret, today = manage_secret(api_settings), datetime.now(UTC).date()
    good = sign(secret, member, company, today)
    assert (await http.get(f"/manage/{good}")).status_code == 303
    forged = [
        sign(b"another key", member, company, today),
        sign(secret, member, "another-company", today),
        good.replace(f"{member}.", f"{member + 1}.", 1),
        "not-a-token",
        f"{member}.20261399.{good.rsplit('.', 1)[1]}",
    ]
    for token in forged:
        page = await http.get(f"/manage/{token}", headers={"Accept": "text/html"})
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html"), token
        assert "latest message" in page.text and "Traceback" not in page.text
    assert assert_problem(await http.get(f"/manage/{forged[0]}"), 404)["code"] == "unknown_manage_link"

    days = api_settings.manage_link_days
    still = sign(secret, member, company, today - timedelta(days=days))
    assert (await http.get(f"/manage/{still}")).status_code == 303
    expired = sign(secret, member, company, today - timedelta(days=days + 1))
    page = await http.get(f"/manage/{expired}", headers={"Accept": "text/html"})
    assert page.status_code == 410 and "expired" in page.text and "latest message" in page.text
    assert assert_problem(await http.get(f"/manage/{expired}"), 410)["code"] == "manage_link_expired"


async def test_a_link_opened_too_often_is_throttled_like_a_pay_link(
    http: httpx.AsyncClient, engine: AsyncEngine, api_settings: Settings
) -> None:
    company, member, _ = await new_member(engine, offsets=[30], cap=5)
    token = sign(manage_secret(api_settings), member, company, datetime.now(UTC).date())
    answers = [await http.get(f"/manage/{token}") for _ in range(api_settings.pay_link_token_per_minute + 1)]
    assert [a.status_code for a in answers[:-1]] == [303] * api_settings.pay_link_token_per_minute
    assert assert_problem(answers[-1], 429)["code"] == "rate_limited" and int(answers[-1].headers["retry-after"]) > 0
