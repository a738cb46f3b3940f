"""The business console over HTTP against the real stack (issue #37): sign-in, the session
cookie's flags, CSRF on every form, what each role sees and may do, and the Credit actions: each
refuses bad input beside its field and changes nothing, and each change is audited with the console
user as the actor, through the same service functions as the API."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import date, timedelta
from decimal import Decimal

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.activities.test_credit import new_debit, new_retailer
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    api_settings,
    running_workers,
)
from tests.e2e.console_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    PASSWORD,
    client_of,
    console_app,
    csrf_of,
    new_company,
    new_user,
    signed_in,
)
from tests.loyalty_factories import new_customer, order_ref
from tests.unit.test_cli_input import jobctl

TODAY = date.today()


async def _status(engine: AsyncEngine, retailer_id: int) -> str:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT credit_status FROM retailers WHERE id = :r"), {"r": retailer_id})


async def _ledger_rows(engine: AsyncEngine, retailer_id: int) -> int:
    async with engine.connect() as conn:
        count = text("SELECT count(*) FROM credit_transactions WHERE retailer_id = :r")
        return await conn.scalar(count, {"r": retailer_id})


async def test_nobody_signed_in_is_sent_to_sign_in_and_a_wrong_password_is_refused_beside_it(
    console_app: FastAPI, engine: AsyncEngine
) -> None:
    async with client_of(console_app) as client:
        away = await client.get("/console/credit")
        assert away.status_code == 303 and away.headers["location"] == "/console/login?next=/console/credit"
        username = await new_user(engine, "finance")
        form = await client.get(away.headers["location"])
        assert 'autocomplete="current-password"' in form.text
        for name, password in ((username, "not the password"), ("nobody-here", PASSWORD)):
            refused = await client.post(
                "/console/login", data={"username": name, "password": password, "csrf": csrf_of(form)}
            )
            assert refused.status_code == 401
            assert 'id="password-error"' in refused.text and "Wrong username or password" in refused.text
        assert (await client.get("/console/credit")).status_code == 303  # still nobody
        signed = await client.post(
            "/console/login",
            data={"username": username, "password": PASSWORD, "csrf": csrf_of(form), "next": "/console/credit"},
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/console/credit"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
        assert "secure" not in cookie  # plain http (dev): a Secure cookie would never come back
        assert (await client.get("/console/credit")).status_code == 200
    async with client_of(console_app, base_url="https://console.example") as tls:
        assert "secure" in (await tls.get("/console/login")).headers["set-cookie"].lower()


async def test_password_guessing_is_throttled_per_username(console_app: FastAPI, engine: AsyncEngine) -> None:
    username = await new_user(engine, "finance")
    async with client_of(console_app) as client:
        csrf = csrf_of(await client.get("/console/login"))
        wrong = {"username": username, "password": "guess", "csrf": csrf}
        answers = [(await client.post("/console/login", data=wrong)).status_code for _ in range(6)]
        assert answers == [401] * 5 + [429], answers
        right = await client.post("/console/login", data={**wrong, "password": PASSWORD})
        assert right.status_code == 429 and "Too many sign-in attempts" in right.text and right.headers["retry-after"]
        assert (await client.get("/console/credit")).status_code == 303  # not signed in


async def test_a_form_without_this_sessions_csrf_token_changes_nothing(
    console_app: FastAPI, engine: AsyncEngine
) -> None:
    retailer_id, _ = await new_retailer(engine)
    finance, _ = await signed_in(console_app, engine, "finance")
    other, _ = await signed_in(console_app, engine, "finance")
    foreign = csrf_of(await other.get(f"/console/credit/retailers/{retailer_id}"))
    for token in (None, "", foreign):
        data = {"reason": "called, no answer"} | ({"csrf": token} if token is not None else {})
        answer = await finance.post(f"/console/credit/retailers/{retailer_id}/pause", data=data)
        assert answer.status_code == 403 and "nothing was changed" in answer.text
    assert await _status(engine, retailer_id) == "ACTIVE"


async def test_each_role_sees_only_what_it_may(console_app: FastAPI, engine: AsyncEngine) -> None:
    retailer_id, _ = await new_retailer(engine)
    page = f"/console/credit/retailers/{retailer_id}"
    viewer, _ = await signed_in(console_app, engine, "read_only")
    admin, _ = await signed_in(console_app, engine, "company_admin", await new_company(engine))
    shown = await viewer.get(page)
    assert shown.status_code == 200 and "Ada Stores" in shown.text and "Record payment" not in shown.text
    refused = await viewer.post(f"{page}/pause", data={"reason": "x", "csrf": csrf_of(shown)})
    assert refused.status_code == 403 and "Not for your role" in refused.text
    assert await _status(engine, retailer_id) == "ACTIVE"
    beyond = f"/console/credit/retailers/{2**63}"  # no retailer, and no id PostgreSQL could store
    assert (await viewer.get(beyond)).status_code == 404
    finance, _ = await signed_in(console_app, engine, "finance")
    csrf = csrf_of(await finance.get(page))
    assert (await finance.post(f"{beyond}/pause", data={"reason": "x", "csrf": csrf})).status_code == 404
    for url in ("/console/credit", page):  # a company admin sees no retailer's credit
        hidden = await admin.get(url)
        assert hidden.status_code == 403 and "Ada Stores" not in hidden.text
    assert "Credit" not in (await admin.get("/console")).text.split("<main")[1]


async def test_bad_input_is_refused_beside_its_field_and_changes_nothing(
    console_app: FastAPI, engine: AsyncEngine
) -> None:
    retailer_id, _ = await new_retailer(engine)
    await new_debit(engine, retailer_id, "100.00", TODAY - timedelta(days=3))
    finance, _ = await signed_in(console_app, engine, "finance")
    page = f"/console/credit/retailers/{retailer_id}"
    csrf = csrf_of(await finance.get(page))
    cases = [
        ("payment", {"amount": "ten", "reference": "BANK-1"}, "payment-amount"),
        ("payment", {"amount": "-5", "reference": "BANK-1"}, "payment-amount"),
        ("payment", {"amount": "5.00", "reference": "x"}, "payment-reference"),
        ("adjust", {"amount": "0", "reason": "nothing", "nonce": "n" * 12}, "adjust-amount"),
        ("adjust", {"amount": "5.00", "reason": "   ", "nonce": "n" * 12}, "adjust-reason"),
        ("limits", {"credit_limit": "-1", "reason": "raise"}, "limits-credit_limit"),
        ("limits", {"max_outstanding_days": "ten", "reason": "raise"}, "limits-max_outstanding_days"),
        ("limits", {"reason": "nothing to change"}, "limits-credit_limit"),
        ("pause", {"reason": ""}, "pause-reason"),
        ("block", {"reason": "r" * 501}, "block-reason"),
    ]
    for action, data, field in cases:
        answer = await finance.post(f"{page}/{action}", data={**data, "csrf": csrf})
        assert answer.status_code == 422, (action, data, answer.status_code)
        assert f'id="{field}-error"' in answer.text and f'id="{field}" ' in answer.text, (action, data)
        assert 'aria-invalid="true"' in answer.text
    assert await _status(engine, retailer_id) == "ACTIVE" and await _ledger_rows(engine, retailer_id) == 1
    # A refusal of the service (already paused) is shown beside the reason too.
    assert (await finance.post(f"{page}/pause", data={"reason": "late", "csrf": csrf})).status_code == 303
    again = await finance.post(f"{page}/pause", data={"reason": "late", "csrf": csrf})
    assert again.status_code == 409 and 'id="pause-reason-error"' in again.text


async def test_actions_are_audited_with_the_console_user_and_their_result_shown(
    console_app: FastAPI, engine: AsyncEngine
) -> None:
    retailer_id, _ = await new_retailer(engine, status="PAUSED", paused_by="system", limit=Decimal("1000"))
    await new_debit(engine, retailer_id, "300.00", TODAY - timedelta(days=40))  # past the 30-day limit
    finance, username = await signed_in(console_app, engine, "finance")
    page = f"/console/credit/retailers/{retailer_id}"
    csrf = csrf_of(await finance.get(page))
    reference = f"BANK-{uuid.uuid4().hex[:8]}"
    paid = await finance.post(f"{page}/payment", data={"amount": "300.00", "reference": reference, "csrf": csrf})
    assert paid.status_code == 303 and paid.headers["location"] == page
    shown = await finance.get(page)
    assert "Credit resumed: the pause is lifted." in shown.text and 'role="status"' in shown.text
    assert await _status(engine, retailer_id) == "ACTIVE"
    assert "Credit resumed" not in (await finance.get(page)).text  # the result is shown once
    adjusted = await finance.post(
        f"{page}/adjust", data={"amount": "-12.50", "reason": "late fee", "nonce": uuid.uuid4().hex, "csrf": csrf}
    )
    limits = await finance.post(f"{page}/limits", data={"credit_limit": "2500", "reason": "on time", "csrf": csrf})
    assert limits.status_code == 303 and "Limits changed." in (await finance.get(page)).text
    blocked = await finance.post(f"{page}/block", data={"reason": "cheque bounced", "csrf": csrf})
    assert adjusted.status_code == blocked.status_code == 303
    shown = await finance.get(page)
    assert "Credit blocked (was active)." in shown.text and "cheque bounced" in shown.text
    assert "$12.50" in shown.text  # the ledger, in the account's currency
    async with engine.connect() as conn:
        actors = (
            await conn.execute(
                text("SELECT action, performed_by FROM audit_log WHERE retailer_id = :r AND performed_by <> 'system'"),
                {"r": retailer_id},
            )
        ).all()
    assert {actor for _, actor in actors} == {f"console:{username}"} and len(actors) >= 4, actors


async def test_the_risk_dashboard_charts_the_buckets_and_finds_a_retailer(
    console_app: FastAPI, engine: AsyncEngine
) -> None:
    retailer_id, _ = await new_retailer(engine)
    await new_debit(engine, retailer_id, "70.00", TODAY - timedelta(days=20))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO orders (retailer_id, status, payment_mode, total_amount, failed_at, failure_reason)"
                " VALUES (:r, 'FAILED', 'CREDIT', 80.00, now(), 'out of stock at the depot')"
            ),
            {"r": retailer_id},
        )
    finance, _ = await signed_in(console_app, engine, "support")
    board = await finance.get("/console/credit")
    assert board.status_code == 200 and '<svg class="chart"' in board.text and "16-30" in board.text
    found = await finance.get("/console/credit", params={"q": str(retailer_id)})
    assert f'href="/console/credit/retailers/{retailer_id}"' in found.text
    nothing = await finance.get("/console/credit", params={"q": "no-such-shop-anywhere"})
    assert "No retailer with a credit account matches" in nothing.text
    shown = await finance.get(f"/console/credit/retailers/{retailer_id}")
    assert "out of stock at the depot" in shown.text and "$80.00" in shown.text  # its failed orders
    assert (await finance.get("/console/credit/retailers/987654321")).status_code == 404


async def test_the_loyalty_review_queue_lists_items_and_totals_by_state(
    console_app: FastAPI, engine: AsyncEngine
) -> None:
    customer = await new_customer(engine, 500)
    order = order_ref()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO loyalty_reconciliation_queue (customer_id, order_reference, points_redeemed, order_total,"
                " status, attempts, last_error) VALUES (:c, :o, 120, 45.50, 'NEEDS_REVIEW', 5, 'ledger timeout')"
            ),
            {"c": customer, "o": order},
        )
    support, _ = await signed_in(console_app, engine, "support")
    admin, _ = await signed_in(console_app, engine, "company_admin", await new_company(engine))
    queue = await support.get("/console/loyalty")
    assert queue.status_code == 200 and order in queue.text and "ledger timeout" in queue.text
    assert re.search(r"Needs review</h2>\s*<p class=\"big\">[1-9]\d* <span", queue.text), queue.text
    resolved = await support.get("/console/loyalty", params={"state": "RESOLVED"})
    assert resolved.status_code == 200 and order not in resolved.text
    assert (await admin.get("/console/loyalty")).status_code == 403


async def _signs_in(database_url: str, username: str) -> bool:
    from activities.database import create_engine
    from workers.console.users import authenticate

    engine = create_engine(database_url, pool_size=1)
    try:
        return await authenticate(engine, username, PASSWORD) is not None
    finally:
        await engine.dispose()


def test_console_user_add_stores_a_user_and_refuses_a_taken_name_or_an_unknown_role(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "JOBCTL_CONSOLE_PASSWORD": PASSWORD}
    name = f"cli-{uuid.uuid4().hex[:8]}"
    made = jobctl("console-user", "add", name, "--role", "finance", **env)
    assert made.returncode == 0 and f"console user {name}: finance" in made.stdout, made.stderr
    assert asyncio.run(_signs_in(database_url, name)), "the user added cannot sign in"
    for args, says in (
        ((name, "--role", "finance"), "is taken"),
        ((f"x-{name}", "--role", "root"), "--role: one of finance"),
    ):
        refused = jobctl("console-user", "add", *args, **env)
        assert refused.returncode == 2 and says in refused.stderr.strip().splitlines()[-1], refused.stderr
