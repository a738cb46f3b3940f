"""The console's Loyalty actions in a real browser (issue #37), as test_console_browser.py drives
the Credit pages: a support user opens a points update waiting for review, sees the customer's
balance, mistypes the points (refused beside the field), resolves the item with 25 points and sees
the customer's balance go from 10 to 35. An operator's Messaging and jobs page is checked too;
axe-core finds no serious or critical violation on any of these pages."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    api_settings,
    running_workers,
    server,
)
from tests.e2e.console_harness import PASSWORD, new_user
from tests.e2e.test_console_browser import browser, no_serious_violations  # noqa: F401 - a fixture, as above
from tests.e2e.test_console_loyalty_ops import item_needing_review
from tests.loyalty_factories import balance_and_ledger


@pytest.mark.asyncio(loop_scope="session")
async def test_support_resolves_a_loyalty_item_and_sees_the_balance_change(
    browser: Browser, server: str, engine: AsyncEngine, dev_env: WorkflowEnvironment, api_settings: Settings
) -> None:
    item, customer, order = await item_needing_review(dev_env.client, engine, api_settings)
    support = await new_user(engine, "support")
    operator = await new_user(engine, "operator")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        await page.goto(f"{server}/console/loyalty")
        await page.get_by_label("Username").fill(support)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("link", name=f"Item #{item}", exact=True).click()

        await expect(page.get_by_role("heading", name=f"Loyalty item #{item}")).to_be_visible()
        await expect(page.get_by_text("waiting for review")).to_be_visible()
        await expect(page.get_by_text(order)).to_be_visible()
        await no_serious_violations(page)
        await page.get_by_role("link", name=f"Customer #{customer}: points ledger").click()
        await expect(page.locator("#balance")).to_have_text("10")
        await no_serious_violations(page)
        await page.go_back()

        await page.get_by_label("Note").fill("customer called: points applied by hand")
        await page.get_by_label("Points to add (+) or take (-)").fill("25 points")  # a typo: refused beside it
        await page.get_by_role("button", name="Resolve").click()
        await expect(page.get_by_text("Give whole points, + to add or - to take")).to_be_visible()
        await no_serious_violations(page)
        await page.get_by_label("Points to add (+) or take (-)").fill("25")
        await page.get_by_role("button", name="Resolve").click()

        await expect(page.get_by_role("status")).to_contain_text("Item resolved: manual")
        await expect(page.locator("h1 .badge")).to_have_text("resolved")
        await no_serious_violations(page)
        await page.get_by_role("link", name=f"Customer #{customer}: points ledger").click()
        await expect(page.locator("#balance")).to_have_text("35")
        await expect(page.get_by_text("The balance is the sum of the ledger below.")).to_be_visible()

        await page.get_by_role("button", name="Sign out").click()
        await page.goto(f"{server}/console/ops")
        await page.get_by_label("Username").fill(operator)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Messaging & jobs")).to_be_visible()
        await expect(page.get_by_role("button", name="Pause all messaging")).to_be_visible()
        await no_serious_violations(page)
    finally:
        await context.close()
    assert await balance_and_ledger(engine, customer) == (35, 35)
