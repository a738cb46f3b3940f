"""The console in a real browser (issue #37): Debian's Chromium driven by Playwright (never a
downloaded browser) against `jobctl api` serving the real stack. A finance admin signs in, finds a
paused retailer, records its payment and sees the pause lift; axe-core (the script
axe-playwright-python ships) finds no serious or critical violation on any page on the way (the
Loyalty review queue too); and a company admin nudges a churn member and reads the outcome, on
pages with no serious or critical violation either. The retailer's page is saved as a screenshot:
under the test's tmp dir, or to docs/img/console-credit.png for the README with
CONSOLE_SCREENSHOTS=docs/img (a plain `make test` leaves the tracked image alone)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright, expect
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings
from services.churn import start_case
from tests.activities.test_churn import new_member
from tests.activities.test_credit import new_debit, new_retailer
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    api_settings,
    running_workers,
    server,
)
from tests.e2e.console_harness import PASSWORD, new_user

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: apt-get install chromium (.ci/run does)"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        await launched.close()


async def no_serious_violations(page: Page) -> None:
    results = await Axe().run(page)
    serious = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert serious == [], f"{page.url}: {serious}"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_finance_admin_records_a_payment_and_sees_the_pause_lift(
    browser: Browser, server: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    retailer_id, _ = await new_retailer(engine, status="PAUSED", paused_by="system", limit=Decimal("1000"))
    await new_debit(engine, retailer_id, "300.00", date.today() - timedelta(days=40))  # past its 30-day limit
    username = await new_user(engine, "finance")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        await page.goto(f"{server}/console/credit")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await no_serious_violations(page)
        await page.get_by_label("Username").fill(username)
        await page.get_by_label("Password").fill("not the password")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_text("Wrong username or password")).to_be_visible()
        await no_serious_violations(page)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()

        await expect(page.get_by_role("heading", name="Credit", exact=True)).to_be_visible()
        await expect(page.get_by_role("img", name="Outstanding by days overdue")).to_be_visible()
        await no_serious_violations(page)
        await page.get_by_label("Find a retailer").fill(str(retailer_id))
        await page.get_by_role("button", name="Search").click()
        await page.get_by_role("link", name=f"Ada Stores #{retailer_id}").click()

        await expect(page.get_by_text("A payment that clears the overdue debits lifts it.")).to_be_visible()
        await no_serious_violations(page)
        await page.get_by_label("Amount (USD)").first.fill("3oo")  # a typo: refused beside the field
        await page.get_by_label("Bank or receipt reference").fill(f"BANK-{uuid.uuid4().hex[:8]}")
        await page.get_by_role("button", name="Record payment").click()
        await expect(page.get_by_text("Give an amount above 0, e.g. 250.00.")).to_be_visible()
        await no_serious_violations(page)
        await page.get_by_label("Amount (USD)").first.fill("300.00")
        await page.get_by_role("button", name="Record payment").click()

        await expect(page.get_by_role("status")).to_contain_text("Credit resumed: the pause is lifted.")
        await expect(page.locator("h1 .badge")).to_have_text("active")
        await no_serious_violations(page)
        shots = ROOT / os.environ["CONSOLE_SCREENSHOTS"] if os.environ.get("CONSOLE_SCREENSHOTS") else tmp_path
        shots.mkdir(exist_ok=True)
        await page.screenshot(path=shots / "console-credit.png", full_page=True)
        assert (shots / "console-credit.png").stat().st_size > 10_000  # a page, not a blank
        await page.get_by_role("link", name="Loyalty").click()  # the review queue, read-only
        await expect(page.get_by_role("heading", name="Loyalty: points that failed to apply")).to_be_visible()
        await no_serious_violations(page)
    finally:
        await context.close()
    async with engine.connect() as conn:
        status = await conn.scalar(text("SELECT credit_status FROM retailers WHERE id = :r"), {"r": retailer_id})
    assert status == "ACTIVE"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_company_admin_nudges_a_member_and_sees_the_outcome(
    browser: Browser, server: str, engine: AsyncEngine, dev_env: WorkflowEnvironment, api_settings: Settings
) -> None:
    company, member, phone = await new_member(engine, offsets=[30], cap=5)
    case_id = await start_case(dev_env.client, engine, api_settings, member, "manual", company_id=company)
    username = await new_user(engine, "company_admin", company)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        await page.goto(f"{server}/console/login")
        await page.get_by_label("Username").fill(username)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("navigation", name="Sections").get_by_role("link", name="Churn").click()

        await expect(page.get_by_role("heading", name="Churn cases")).to_be_visible()
        await no_serious_violations(page)
        await page.get_by_role("link", name=f"Case #{case_id}", exact=True).click()
        await expect(page.get_by_role("heading", name="Member and case")).to_be_visible()
        await expect(page.get_by_text(phone)).to_have_count(0)  # masked
        await page.get_by_label("Channel").select_option("sms")
        await page.get_by_role("button", name="Nudge now").click()

        await expect(page.get_by_role("status")).to_have_text("Nudge sent by SMS.")
        message = page.get_by_role("cell", name="delivered").or_(page.get_by_role("cell", name="sent"))
        await expect(message.first).to_be_visible()  # the nudge's message and its status
        await no_serious_violations(page)
        await page.get_by_role("link", name="Results").click()
        await expect(page.get_by_role("img", name="Recovery rate by week (cases closed that week)")).to_be_visible()
        await no_serious_violations(page)
        await page.get_by_role("link", name="Rules").click()
        await page.get_by_label("Time zone").fill("Mars/Olympus_Mons")
        await page.get_by_role("button", name="Save rules").click()
        await expect(page.get_by_text("Give an IANA time zone")).to_be_visible()
        await no_serious_violations(page)
    finally:
        await context.close()
    async with engine.connect() as conn:
        sent = await conn.scalar(text("SELECT attempts FROM recovery_cases WHERE id = :c"), {"c": case_id})
        zone = await conn.scalar(text("SELECT timezone FROM companies WHERE id = :c"), {"c": company})
    assert sent == 1 and zone == "UTC"
