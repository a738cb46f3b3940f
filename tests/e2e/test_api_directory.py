"""The directory over HTTP (issue #34), on the real stack: a business PUTs its own rows by its own
ids (201 new, 200 after; the same body twice changes nothing), bad input is 422 naming the field
and writes nothing, the stored state's refusals are 404/409 with a code; a raised limit lifts a
system pause before the answer; a shop order PUT then started by its external id runs the same
clock; a company-bound key reaches its own company and members only; a changed phone is where the
next message goes."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devtools.twilio_emulator import TwilioEmulator
from tests.activities.test_orders import sent_to
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    api_settings,
    assert_problem,
    http,
    new_key,
    running_workers,
)
from workers.api.auth import ApiKeyRefused, create_key

WRITE = ("directory:read", "directory:write")


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _phone() -> str:
    """A distinct valid US number (the emulator keeps every message by recipient)."""
    return f"+1415555{uuid.uuid4().int % 10_000:04d}"


async def _audit(engine: AsyncEngine, retailer_id: int) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.scalars(
            text("SELECT action FROM audit_log WHERE retailer_id = :r ORDER BY id"), {"r": retailer_id}
        )
        return list(rows)


async def test_put_a_retailer_twice_changes_nothing_and_bad_input_writes_nothing(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine, *WRITE)
    shop = _id("shop")
    body = {"name": "Corner Store", "phone": "+1 415 555 0123", "preferred_channel": "sms", "locale": "en_us"}
    created = await http.put(f"/v1/retailers/{shop}", json=body, headers=headers)
    assert created.status_code == 201, created.text
    stored = created.json()
    assert stored["phone"] == "+14155550123" and stored["locale"] == "en-US" and stored["external_id"] == shop
    again = await http.put(f"/v1/retailers/{shop}", json=body, headers=headers)
    assert again.status_code == 200 and again.json() == stored
    assert (await http.get(f"/v1/retailers/{shop}", headers=headers)).json() == stored
    assert await _audit(engine, stored["id"]) == ["retailer_created"]  # the same body twice: one audit row

    fresh = _id("shop")
    landline = {"name": "Shop", "phone": "+442079460000", "preferred_channel": "whatsapp"}
    problem = assert_problem(
        await http.put(f"/v1/retailers/{fresh}", json=landline, headers=headers), 422, "body.phone"
    )
    assert "mobile" in problem["detail"]
    assert_problem(
        await http.put(f"/v1/retailers/{fresh}", json={**body, "nmae": "x"}, headers=headers), 422, "body.nmae"
    )
    assert_problem(
        await http.put(f"/v1/retailers/{fresh}", json={**body, "timezone": "Mars/Base"}, headers=headers), 422
    )
    assert_problem(await http.put("/v1/retailers/has%20space", json=body, headers=headers), 422, "path.external_id")
    assert_problem(await http.get(f"/v1/retailers/{fresh}", headers=headers), 404)  # nothing was written
    slashed = f"{_id('chain')}/store-7"  # the business's ids may hold a slash
    assert (await http.put(f"/v1/retailers/{slashed}", json=body, headers=headers)).status_code == 201
    assert (await http.get(f"/v1/retailers/{slashed}", headers=headers)).json()["external_id"] == slashed


async def test_a_raised_limit_lifts_a_system_pause_before_the_answer(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine, *WRITE)
    shop = _id("shop")
    await http.put(
        f"/v1/retailers/{shop}", json={"name": "Shop", "phone": _phone(), "preferred_channel": "sms"}, headers=headers
    )
    account = {"credit_limit": "100.00", "max_order_value": "100.00", "currency": "usd"}
    opened = await http.put(f"/v1/retailers/{shop}/credit-account", json=account, headers=headers)
    assert opened.status_code == 201, opened.text
    assert opened.json()["available_credit"] == "100.00" and opened.json()["currency"] == "USD"
    retailer_id = opened.json()["retailer_id"]
    async with engine.begin() as conn:  # over its limit (not yet due), paused by the guardrails
        await conn.execute(
            text(
                "INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference)"
                " VALUES (:r, 'DEBIT', 300, :d, 'inv-1')"
            ),
            {"r": retailer_id, "d": date.today() + timedelta(days=10)},
        )
        await conn.execute(
            text("UPDATE credit_accounts SET available_credit = -200 WHERE retailer_id = :r"), {"r": retailer_id}
        )
        await conn.execute(
            text("UPDATE retailers SET credit_status = 'PAUSED', paused_by = 'system' WHERE id = :r"),
            {"r": retailer_id},
        )
    raised = await http.put(
        f"/v1/retailers/{shop}/credit-account", json={**account, "credit_limit": "500.00"}, headers=headers
    )
    assert raised.status_code == 200, raised.text
    assert raised.json()["credit_status"] == "ACTIVE" and raised.json()["available_credit"] == "200.00"
    assert await _audit(engine, retailer_id) == [
        "retailer_created",
        "credit_account_opened",
        "credit_limits_changed",
        "credit_resumed",
    ]
    problem = assert_problem(
        await http.put(f"/v1/retailers/{shop}/credit-account", json={**account, "currency": "EUR"}, headers=headers),
        409,
        "body.currency",
    )
    assert problem["code"] == "currency_locked"
    unknown = assert_problem(
        await http.put(f"/v1/retailers/{_id('nobody')}/credit-account", json={}, headers=headers), 404
    )
    assert unknown["code"] == "unknown_retailer"


async def test_a_shop_order_put_then_its_checkout_started_by_its_own_id(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine, *WRITE, "orders:write", "orders:read")
    shop, order = _id("shop"), _id("ord")
    await http.put(f"/v1/retailers/{shop}", json={"name": "Shop", "preferred_channel": "sms"}, headers=headers)
    body = {"retailer_external_id": shop, "amount": "42.50", "payment_mode": "COD", "placed_at": "2026-12-01T09:00:00Z"}
    recorded = await http.put(f"/v1/shop-orders/{order}", json=body, headers=headers)
    assert recorded.status_code == 201, recorded.text
    order_id = recorded.json()["id"]
    started = await http.post(f"/v1/shop-orders/{order}/checkout-started", headers=headers)
    assert started.status_code == 200, started.text
    assert started.json()["order_id"] == order_id and started.json()["state"] == "PENDING"
    clock = (await http.get(f"/v1/orders/{order_id}", headers=headers)).json()  # the same clock, by jobctl's id
    assert clock["state"] == "PENDING"

    confirmed = await http.put(f"/v1/shop-orders/{order}", json={**body, "status": "CONFIRMED"}, headers=headers)
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "CONFIRMED"
    back = assert_problem(await http.put(f"/v1/shop-orders/{order}", json=body, headers=headers), 409, "body.status")
    assert back["code"] == "order_status_refused"
    other_amount = {**body, "status": "CONFIRMED", "amount": "1.00"}  # its checkout started: the amount stays
    assert_problem(await http.put(f"/v1/shop-orders/{order}", json=other_amount, headers=headers), 409, "body.amount")
    assert_problem(await http.post(f"/v1/shop-orders/{_id('nope')}/checkout-started", headers=headers), 404)
    orphan = {**body, "retailer_external_id": _id("nobody")}
    assert assert_problem(await http.put(f"/v1/shop-orders/{_id('o')}", json=orphan, headers=headers), 404)["code"] == (
        "unknown_retailer"
    )


async def test_a_company_bound_key_reaches_its_own_company_and_members_only(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    admin = await new_key(engine, *WRITE)
    ours, theirs = f"co-{uuid.uuid4().hex[:8]}", f"co-{uuid.uuid4().hex[:8]}"
    for company in (ours, theirs):
        made = await http.put(f"/v1/companies/{company}", json={"name": company}, headers=admin)
        assert made.status_code == 201, made.text
    bound = await new_key(engine, *WRITE, company=ours)
    quieter = await http.put(f"/v1/companies/{ours}", json={"name": "Ours", "quiet_hours_start": 20}, headers=bound)
    assert quieter.status_code == 200 and quieter.json()["quiet_hours_start"] == 20, quieter.text
    member = {
        "name": "Dana",
        "phone": _phone(),
        "preferred_channel": "sms",
        "stripe_subscription_id": f"sub_{uuid.uuid4().hex[:10]}",
    }
    joined = await http.put(f"/v1/companies/{ours}/members/m-1", json=member, headers=bound)
    assert joined.status_code == 201 and joined.json()["company_id"] == ours, joined.text
    assert (await http.get(f"/v1/companies/{ours}/members/m-1", headers=bound)).status_code == 200

    for method, path, body in [
        ("PUT", f"/v1/companies/{theirs}", {"name": "x"}),
        ("PUT", f"/v1/companies/{theirs}", {"bogus": 1}),  # refused as theirs, not as a bad body
        ("GET", f"/v1/companies/{theirs}", None),
        ("PUT", f"/v1/companies/{theirs}/members/m-1", member),
        ("GET", f"/v1/companies/{theirs}/members/m-1", None),
        ("PUT", f"/v1/retailers/{_id('shop')}", {"name": "x"}),
        ("GET", f"/v1/customers/{_id('c')}", None),
        ("PUT", f"/v1/shop-orders/{_id('o')}", {}),
    ]:
        assert_problem(await http.request(method, path, json=body, headers=bound), 403)
    twin = assert_problem(
        await http.put(f"/v1/companies/{theirs}/members/m-2", json=member, headers=admin),
        409,
        "body.stripe_subscription_id",
    )
    assert twin["code"] == "stripe_id_taken"
    try:
        await create_key(engine, _id("k"), ["directory:write", "credit:read"], ours)
    except ApiKeyRefused as refused:
        assert "credit:read" in str(refused) and "directory" not in str(refused).split(";")[0]
    else:
        raise AssertionError("a bound key may not hold credit:read")


async def test_customers_are_put_without_points(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = await new_key(engine, *WRITE)
    customer = _id("cust")
    made = await http.put(f"/v1/customers/{customer}", json={"name": "Sam", "earn_rate": "1.5"}, headers=headers)
    assert made.status_code == 201 and made.json()["loyalty_points"] == 0 and made.json()["earn_rate"] == "1.5000"
    assert_problem(
        await http.put(f"/v1/customers/{customer}", json={"name": "Sam", "loyalty_points": 9}, headers=headers),
        422,
        "body.loyalty_points",
    )


async def test_a_changed_phone_is_where_the_next_message_goes(
    http: httpx.AsyncClient, engine: AsyncEngine, emulator: TwilioEmulator
) -> None:
    headers = await new_key(engine, *WRITE, "credit:write")
    shop, old, new = _id("shop"), _phone(), _phone()
    put = await http.put(
        f"/v1/retailers/{shop}", json={"name": "Shop", "phone": old, "preferred_channel": "sms"}, headers=headers
    )
    await http.put(f"/v1/retailers/{shop}/credit-account", json={}, headers=headers)
    moved = await http.put(
        f"/v1/retailers/{shop}", json={"name": "Shop", "phone": new, "preferred_channel": "sms"}, headers=headers
    )
    assert moved.status_code == 200 and moved.json()["phone"] == new
    paused = await http.post(
        f"/v1/credit/retailers/{put.json()['id']}/pause", json={"reason": "phone check"}, headers=headers
    )
    assert paused.status_code == 200 and paused.json()["notice_workflow_id"], paused.text
    deadline = time.monotonic() + 15
    while not await sent_to(emulator, new) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(await sent_to(emulator, new)) == 1
    assert await sent_to(emulator, old) == []
