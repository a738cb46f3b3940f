"""The console's Loyalty actions and its Messaging and jobs page over HTTP against the real stack
(issue #37): a support user resolves and retries an item through its workflow (read-only and
company admins cannot), bad input changes nothing, a customer's ledger is paged and sums to its
balance; an operator pauses and resumes the messaging brake (a read-only user only sees it); the
page shows held and failed messages, schedules and latest runs, and still answers when Temporal
does not."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
import stripe
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings
from services import loyalty
from tests.activities.test_loyalty_reconcile import paid_intent
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    api_settings,
    running_workers,
)
from tests.e2e.console_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    client_of,
    console_app,
    csrf_of,
    new_company,
    signed_in,
)
from tests.loyalty_factories import balance_and_ledger, new_customer, order_ref
from workers.api.app import create_app


async def item_needing_review(
    client: Client, engine: AsyncEngine, settings: Settings, balance: int = 10
) -> tuple[int, int, str]:
    """(item, customer, order): an order redeeming more points than its customer holds, a permanent
    refusal, so the item's workflow waits for a person."""
    customer = await new_customer(engine, balance)
    order = order_ref()
    queued = await loyalty.enqueue_failed_points(
        client, engine, customer, order, balance + 40, "10.00", task_queue=settings.task_queue
    )
    for _ in range(150):
        if await _item_status(engine, queued.item_id) == "NEEDS_REVIEW":
            break
        await asyncio.sleep(0.1)
    assert await _item_status(engine, queued.item_id) == "NEEDS_REVIEW"
    return queued.item_id, customer, order


async def _item_status(engine: AsyncEngine, item_id: int) -> str:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT status FROM loyalty_reconciliation_queue WHERE id = :i"), {"i": item_id})


async def _brake(engine: AsyncEngine) -> tuple[bool, str | None]:
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT paused, actor FROM messaging_brake WHERE id = 1"))).first()
    return (bool(row.paused), row.actor) if row else (False, None)


async def test_support_resolves_an_item_from_its_page_and_other_roles_cannot(
    console_app: FastAPI, engine: AsyncEngine, dev_env: WorkflowEnvironment, api_settings: Settings
) -> None:
    item, customer, order = await item_needing_review(dev_env.client, engine, api_settings)
    support, username = await signed_in(console_app, engine, "support")
    viewer, _ = await signed_in(console_app, engine, "read_only")
    admin, _ = await signed_in(console_app, engine, "company_admin", await new_company(engine))
    page = f"/console/loyalty/items/{item}"

    queue = await support.get("/console/loyalty")
    assert f'href="{page}"' in queue.text and f'href="/console/loyalty/customers/{customer}"' in queue.text
    shown = await support.get(page)
    assert shown.status_code == 200 and order in shown.text and "$10.00" in shown.text
    assert "waiting for review" in shown.text and "InsufficientPoints" in shown.text  # the workflow's query
    assert "/namespaces/default/workflows/loyalty-reconcile%2F" in shown.text  # into the Temporal UI
    assert "not paid through Stripe" in shown.text and "Resolve" in shown.text

    seen = await viewer.get(page)
    assert seen.status_code == 200 and order in seen.text and 'action="/console/loyalty/items' not in seen.text
    refused = await viewer.post(f"{page}/resolve", data={"note": "by hand", "csrf": csrf_of(seen)})
    assert refused.status_code == 403 and "Not for your role" in refused.text
    for url in ("/console/loyalty", page, f"/console/loyalty/customers/{customer}"):
        assert (await admin.get(url)).status_code == 403, url

    csrf = csrf_of(shown)
    for data, field in (
        ({"note": "  "}, "resolve-note"),
        ({"note": "n" * 501}, "resolve-note"),
        ({"note": "by hand", "points": "many"}, "resolve-points"),
        ({"note": "by hand", "points": "0"}, "resolve-points"),
        ({"note": "by hand", "points": "2000000000"}, "resolve-points"),
    ):
        answer = await support.post(f"{page}/resolve", data={**data, "csrf": csrf})
        assert answer.status_code == 422 and f'id="{field}-error"' in answer.text, (data, answer.status_code)
    assert (await support.post(f"{page}/resolve", data={"note": "by hand"})).status_code == 403  # no CSRF token
    assert await _item_status(engine, item) == "NEEDS_REVIEW" and await balance_and_ledger(engine, customer) == (10, 10)

    retried = await support.post(f"{page}/retry", data={"csrf": csrf})
    assert retried.status_code == 303 and retried.headers["location"] == page
    assert "Retry started" in (await support.get(page)).text or "Sent to the item" in (await support.get(page)).text
    for _ in range(100):  # the retry meets the same refusal: back to review
        if await _item_status(engine, item) == "NEEDS_REVIEW":
            break
        await asyncio.sleep(0.1)

    resolved = await support.post(f"{page}/resolve", data={"note": "customer called", "points": "+25", "csrf": csrf})
    assert resolved.status_code == 303
    after = await support.get(page)
    assert "Item resolved: manual: customer called (+25 points)." in after.text
    assert 'action="/console/loyalty/items' not in after.text  # nothing left to do
    history = after.text.split('id="steps-h"')[1]  # the workflow's steps, from its event history
    assert "apply queued points</td><td>failed: InsufficientPoints: customer" in history
    assert history.index("signal retry now") < history.index("signal resolve manually")
    assert history.count(f"received: by console:{username}") == 2  # who asked, from the signals' payloads
    assert await balance_and_ledger(engine, customer) == (35, 35)
    async with engine.connect() as conn:
        by = await conn.scalar(text("SELECT resolved_by FROM loyalty_reconciliation_queue WHERE id = :i"), {"i": item})
    assert by == f"console:{username}"
    again = await support.post(f"{page}/resolve", data={"note": "twice", "csrf": csrf})
    assert again.status_code == 409 and 'id="resolve-note-error"' in again.text and "already RESOLVED" in again.text
    assert await balance_and_ledger(engine, customer) == (35, 35)
    for missing in ("987654321", str(2**64), "0"):
        assert (await support.get(f"/console/loyalty/items/{missing}")).status_code == 404, missing


async def test_an_items_page_checks_its_payment_at_stripe(
    console_app: FastAPI, engine: AsyncEngine, stripe_api: stripe.StripeClient
) -> None:
    customer = await new_customer(engine, 100)
    intent = await paid_intent(stripe_api, refund=True)
    async with engine.begin() as conn:  # an item whose workflow never started (the sweep starts it)
        item = await conn.scalar(
            text(
                "INSERT INTO loyalty_reconciliation_queue (customer_id, order_reference, payment_intent_id,"
                " points_redeemed, order_total) VALUES (:c, :o, :pi, 0, 42.00) RETURNING id"
            ),
            {"c": customer, "o": order_ref(), "pi": intent},
        )
    support, _ = await signed_in(console_app, engine, "support")
    shown = await support.get(f"/console/loyalty/items/{item}")
    assert shown.status_code == 200 and intent in shown.text
    assert "Stripe says</dt><dd>succeeded" in shown.text and "Refunded</dt><dd>all of it" in shown.text
    assert "has no reconciliation workflow" in shown.text


async def test_a_customers_ledger_is_paged_and_sums_to_its_balance(console_app: FastAPI, engine: AsyncEngine) -> None:
    customer = await new_customer(engine, 100)
    async with engine.begin() as conn:
        for n in range(30):
            await conn.execute(
                text(
                    "INSERT INTO loyalty_transactions (customer_id, type, points, balance_before, balance_after,"
                    " reference_type, reference_id) VALUES (:c, 'earned', 2, :b, :b + 2, 'order', :r)"
                ),
                {"c": customer, "b": 100 + 2 * n, "r": f"ledger-{customer}-{n}"},
            )
        await conn.execute(text("UPDATE customers SET loyalty_points = 160 WHERE id = :c"), {"c": customer})
    viewer, _ = await signed_in(console_app, engine, "read_only")
    first = await viewer.get(f"/console/loyalty/customers/{customer}")
    assert first.status_code == 200 and re.search(r'id="balance">160<', first.text)
    assert "160 points over 31 entries" in first.text and "The balance is the sum of the ledger" in first.text
    assert first.text.count('<tr><td class="when">') == 25 and "Older →" in first.text
    second = await viewer.get(f"/console/loyalty/customers/{customer}", params={"offset": "25"})
    assert second.text.count('<tr><td class="when">') == 6 and "Older →" not in second.text
    assert "← Newer" in second.text
    for missing in ("987654321", str(2**64)):
        assert (await viewer.get(f"/console/loyalty/customers/{missing}")).status_code == 404, missing


async def test_an_operator_pauses_and_resumes_the_brake_and_sees_the_jobs(
    console_app: FastAPI, engine: AsyncEngine, dev_env: WorkflowEnvironment, api_settings: Settings
) -> None:
    await item_needing_review(dev_env.client, engine, api_settings)  # a LoyaltyReconciliationWorkflow run to link to
    key = uuid.uuid4().hex[:8]
    async with engine.begin() as conn:
        for n, (status, reason, code) in enumerate(
            [("deferred", "quiet_hours", None), ("failed", None, 30007), ("undelivered", None, 30003)]
        ):
            await conn.execute(
                text(
                    "INSERT INTO message_log (idempotency_key, recipient_type, recipient_id, channel, template,"
                    " template_version, status, reason, error_code) VALUES (:k, 'retailer', '1', 'sms', 'reminder',"
                    " 1, :s, :r, :c)"
                ),
                {"k": f"ops-{key}-{n}", "s": status, "r": reason, "c": code},
            )
    operator, username = await signed_in(console_app, engine, "operator")
    viewer, _ = await signed_in(console_app, engine, "read_only")
    support, _ = await signed_in(console_app, engine, "support")
    admin, _ = await signed_in(console_app, engine, "company_admin", await new_company(engine))

    shown = await operator.get("/console/ops")
    assert shown.status_code == 200 and "Server-Timing" in shown.headers
    assert "Message filtered by the carrier" in shown.text and "Unreachable destination handset" in shown.text
    assert "quiet hours" in shown.text and "Task queue backlog" in shown.text
    assert "loyalty-reconcile-sweep" in shown.text  # every schedule of the registry, applied or not
    assert re.search(r'href="[^"]*/namespaces/default/workflows/loyalty-reconcile%2F\d+/[^"]+/history"', shown.text)
    assert 'href="/console/ops"' in shown.text and "Pause all messaging" in shown.text
    seen = await viewer.get("/console/ops")
    assert seen.status_code == 200 and "Pause all messaging" not in seen.text and "Held messages" in seen.text
    assert 'href="/console/ops"' not in (await support.get("/console")).text
    assert (await support.get("/console/ops")).status_code == 403
    assert (await admin.get("/console/ops")).status_code == 403

    csrf = csrf_of(shown)
    refused = await viewer.post("/console/ops/brake/pause", data={"reason": "mistake", "csrf": csrf_of(seen)})
    assert refused.status_code == 403 and (await _brake(engine))[0] is False
    for reason in ("", "   ", "r" * 501):
        bad = await operator.post("/console/ops/brake/pause", data={"reason": reason, "csrf": csrf})
        assert bad.status_code == 422 and 'id="pause-reason-error"' in bad.text
    assert (await _brake(engine))[0] is False
    try:
        paused = await operator.post("/console/ops/brake/pause", data={"reason": "wrong template", "csrf": csrf})
        assert paused.status_code == 303 and await _brake(engine) == (True, f"console:{username}")
        after = await operator.get("/console/ops")
        assert "Messaging paused" in after.text and "wrong template" in after.text and "Resume messaging" in after.text
        twice = await operator.post("/console/ops/brake/pause", data={"reason": "again", "csrf": csrf})
        assert twice.status_code == 409 and "already paused" in twice.text
        long = await operator.post("/console/ops/brake/resume", data={"reason": "r" * 501, "csrf": csrf})
        assert long.status_code == 422 and 'id="resume-reason-error"' in long.text and (await _brake(engine))[0]
    finally:
        resumed = await operator.post("/console/ops/brake/resume", data={"reason": "", "csrf": csrf})
    assert resumed.status_code == 303 and await _brake(engine) == (False, f"console:{username}")
    assert "Messaging resumed" in (await operator.get("/console/ops")).text
    nothing = await operator.post("/console/ops/brake/resume", data={"csrf": csrf})
    assert nothing.status_code == 409 and 'id="resume-reason-error"' in nothing.text


@pytest_asyncio.fixture(loop_scope="session")
async def app_without_temporal(
    engine: AsyncEngine, api_settings: Settings, running_workers: None
) -> AsyncIterator[FastAPI]:
    """The API's app with a Temporal client whose server is gone (a port nothing listens on); the
    workers still run on the test's server, so an item reaches review before the console looks."""
    client = await Client.connect("127.0.0.1:9", data_converter=pydantic_data_converter, lazy=True)
    app = create_app(api_settings, engine, client)
    async with app.router.lifespan_context(app):
        yield app


async def test_pages_still_answer_when_temporal_does_not(
    app_without_temporal: FastAPI, engine: AsyncEngine, dev_env: WorkflowEnvironment, api_settings: Settings
) -> None:
    item, _, _ = await item_needing_review(dev_env.client, engine, api_settings)
    operator, _ = await signed_in(app_without_temporal, engine, "operator")
    ops = await operator.get("/console/ops")
    assert ops.status_code == 200 and "Temporal did not answer" in ops.text and "Traceback" not in ops.text
    assert "The messaging brake" in ops.text  # the database half is shown
    support, _ = await signed_in(app_without_temporal, engine, "support")
    page = await support.get(f"/console/loyalty/items/{item}")
    assert page.status_code == 200 and "did not answer" in page.text
    retried = await support.post(f"/console/loyalty/items/{item}/retry", data={"csrf": csrf_of(page)})
    assert retried.status_code == 503 and "Nothing was sent" in retried.text
    assert await _item_status(engine, item) == "NEEDS_REVIEW"
