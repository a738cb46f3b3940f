"""The directory's one writer (`services/directory.py`) against a real PostgreSQL: batches are
upserts, a batch written twice changes nothing (no second audit row), and a row the database
state refuses comes back in `refused`, naming its field, while the rest of the batch is written."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.churn import CompanySettings
from schemas.directory import CompanyIn, CreditAccountIn, CustomerIn, MemberIn, OrderIn, RetailerIn
from services import directory

ACTOR = "directory-test"


def _ext(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _audit_rows(engine: AsyncEngine, retailer_id: int) -> list[str]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    text("SELECT action FROM audit_log WHERE retailer_id = :r ORDER BY id"), {"r": retailer_id}
                )
            ).scalars()
        )


async def test_retailers_batch_twice_changes_nothing(engine: AsyncEngine) -> None:
    rows = [
        RetailerIn(external_id=_ext("shop"), name=f"Shop {n}", phone=f"+1415555{n:04d}", locale="en_us")
        for n in range(3)
    ]
    async with engine.begin() as conn:
        first = await directory.upsert_retailers(conn, rows, actor=ACTOR)
    assert [u.created for u in first.upserted] == [True] * 3 and not first.refused
    async with engine.begin() as conn:
        again = await directory.upsert_retailers(conn, rows, actor=ACTOR)
    assert [(u.created, u.changed) for u in again.upserted] == [(False, False)] * 3
    assert [u.id for u in again.upserted] == [u.id for u in first.upserted]
    retailer_id = int(first.upserted[0].id)
    assert await _audit_rows(engine, retailer_id) == ["retailer_created"]

    moved = rows[0].model_copy(update={"phone": "+14155559999"})
    async with engine.begin() as conn:
        changed = await directory.upsert_retailers(conn, [moved], actor=ACTOR)
    assert changed.upserted[0].changed and not changed.upserted[0].created
    assert await _audit_rows(engine, retailer_id) == ["retailer_created", "retailer_updated"]
    async with engine.connect() as conn:
        stored = (
            await conn.execute(text("SELECT phone, locale FROM retailers WHERE id = :r"), {"r": retailer_id})
        ).one()
        audit = await conn.scalar(
            text("SELECT new_value FROM audit_log WHERE retailer_id = :r ORDER BY id DESC LIMIT 1"), {"r": retailer_id}
        )
    assert tuple(stored) == ("+14155559999", "en-US")
    assert audit["changed"] == ["phone"] and "+1415" not in str(audit)  # the field's name, never the number


async def test_accounts_open_change_and_refuse_per_row(engine: AsyncEngine) -> None:
    shop = RetailerIn(external_id=_ext("shop"), name="Shop", phone="+14155550100")
    async with engine.begin() as conn:
        retailer_id = int((await directory.upsert_retailers(conn, [shop], actor=ACTOR)).upserted[0].id)
    batch = [
        CreditAccountIn(retailer_external_id="nobody-" + uuid.uuid4().hex[:6]),
        CreditAccountIn(retailer_external_id=shop.external_id, credit_limit=Decimal("1000.00")),
    ]
    async with engine.begin() as conn:
        opened = await directory.upsert_credit_accounts(conn, batch, actor=ACTOR)
    assert [(r.index, r.field) for r in opened.refused] == [(0, "retailer_external_id")]
    assert [(u.id, u.created) for u in opened.upserted] == [(retailer_id, True)]
    async with engine.begin() as conn:
        again = await directory.upsert_credit_accounts(conn, batch[1:], actor=ACTOR)
    assert [(u.created, u.changed) for u in again.upserted] == [(False, False)]
    assert await _audit_rows(engine, retailer_id) == ["retailer_created", "credit_account_opened"]

    # a debit outstanding: a raised limit goes through the ledger (available follows), the
    # currency cannot change while the debit is open
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference)"
                " VALUES (:r, 'DEBIT', 400, CURRENT_DATE, 'd1')"
            ),
            {"r": retailer_id},
        )
        await conn.execute(
            text("UPDATE credit_accounts SET available_credit = 600 WHERE retailer_id = :r"), {"r": retailer_id}
        )
    raised = batch[1].model_copy(update={"credit_limit": Decimal("2000.00")})
    other_currency = batch[1].model_copy(update={"currency": "EUR"})
    async with engine.begin() as conn:
        changed = await directory.upsert_credit_accounts(conn, [raised], actor=ACTOR)
        refused = await directory.upsert_credit_accounts(conn, [other_currency], actor=ACTOR)
    assert changed.upserted[0].changed and not changed.effects  # active, within limits: nothing to re-check
    assert [(r.field, r.index) for r in refused.refused] == [("currency", 0)]
    async with engine.connect() as conn:
        account = (
            await conn.execute(
                text("SELECT credit_limit, available_credit, currency FROM credit_accounts WHERE retailer_id = :r"),
                {"r": retailer_id},
            )
        ).one()
    assert tuple(account) == (Decimal("2000.00"), Decimal("1600.00"), "USD")
    assert (await _audit_rows(engine, retailer_id))[-1] == "credit_limits_changed"


async def test_limit_change_of_a_system_paused_retailer_asks_for_a_recheck(engine: AsyncEngine) -> None:
    shop = RetailerIn(external_id=_ext("shop"), name="Shop", phone="+14155550101")
    account = CreditAccountIn(retailer_external_id=shop.external_id, credit_limit=Decimal("100.00"))
    async with engine.begin() as conn:
        retailer_id = int((await directory.upsert_retailers(conn, [shop], actor=ACTOR)).upserted[0].id)
        await directory.upsert_credit_accounts(conn, [account], actor=ACTOR)
        await conn.execute(
            text("UPDATE retailers SET credit_status = 'PAUSED', paused_by = 'system' WHERE id = :r"),
            {"r": retailer_id},
        )
    async with engine.begin() as conn:
        result = await directory.upsert_credit_accounts(
            conn, [account.model_copy(update={"credit_limit": Decimal("500.00")})], actor=ACTOR
        )
    [recheck] = result.effects.guardrail_rechecks
    assert recheck.retailer_id == retailer_id and recheck.reference.startswith("limits:")


async def test_orders_record_move_forward_and_refuse_per_row(engine: AsyncEngine) -> None:
    shop = RetailerIn(external_id=_ext("shop"), name="Shop", phone="+14155550102")
    async with engine.begin() as conn:
        await directory.upsert_retailers(conn, [shop], actor=ACTOR)
    first, second = _ext("ord"), _ext("ord")
    batch = [
        OrderIn(external_id=first, retailer_external_id=shop.external_id, amount="10.50", payment_mode="CREDIT"),
        OrderIn(external_id=second, retailer_external_id="nobody", amount="3", payment_mode="COD"),
    ]
    async with engine.begin() as conn:
        written = await directory.upsert_orders(conn, batch, actor=ACTOR)
        again = await directory.upsert_orders(conn, batch[:1], actor=ACTOR)
    assert [(r.index, r.field) for r in written.refused] == [(1, "retailer_external_id")]
    assert written.upserted[0].created and not again.upserted[0].changed
    delivered = batch[0].model_copy(update={"status": "DELIVERED"})
    back = batch[0].model_copy(update={"status": "CONFIRMED"})
    async with engine.begin() as conn:
        moved = await directory.upsert_orders(conn, [delivered], actor=ACTOR)
        refused = await directory.upsert_orders(conn, [back], actor=ACTOR)
    assert moved.upserted[0].changed
    assert [(r.field, r.index) for r in refused.refused] == [("status", 0)]
    async with engine.connect() as conn:
        stored = await conn.scalar(text("SELECT status FROM orders WHERE external_id = :e"), {"e": first})
        debits = await conn.scalar(
            text("SELECT count(*) FROM credit_transactions WHERE order_id = :o"), {"o": written.upserted[0].id}
        )
    assert stored == "DELIVERED" and debits == 0  # recording an order takes no credit


async def test_companies_members_customers(engine: AsyncEngine) -> None:
    company = CompanyIn(id=f"co-{uuid.uuid4().hex[:8]}", name="Acme", reminder_offsets_days=[1, 3])
    async with engine.begin() as conn:
        made = await directory.upsert_companies(conn, [company], actor=ACTOR)
        same = await directory.upsert_companies(conn, [company], actor=ACTOR)
        quieter = await directory.upsert_companies(
            conn, [company.model_copy(update={"quiet_hours_start": 20})], actor=ACTOR
        )
    assert made.upserted[0].created and not same.upserted[0].changed and quieter.upserted[0].changed
    async with engine.connect() as conn:
        actions = list(
            (
                await conn.execute(
                    text("SELECT action FROM audit_log WHERE reference = :ref ORDER BY id"),
                    {"ref": f"company:{company.id}"},
                )
            ).scalars()
        )
    assert actions == ["company_created", "company_settings_changed"]
    # the churn settings route's door: the same writer, the same audit
    rules = CompanySettings(**company.model_dump(exclude={"id", "name"}) | {"daily_nudge_cap": 3})
    assert await directory.set_company_rules(engine, company.id, rules, actor=ACTOR)
    assert not await directory.set_company_rules(engine, "no-such-company", rules, actor=ACTOR)
    async with engine.connect() as conn:
        audited = await conn.scalar(
            text("SELECT new_value FROM audit_log WHERE reference = :ref ORDER BY id DESC LIMIT 1"),
            {"ref": f"company:{company.id}"},
        )
    assert audited["daily_nudge_cap"] == 3 and audited["name"] == "Acme"

    sub = f"sub_{uuid.uuid4().hex[:10]}"
    members = [
        MemberIn(company_id=company.id, external_id="m1", name="A", phone="+14155550103", stripe_subscription_id=sub),
        MemberIn(company_id=company.id, external_id="m2", name="B", stripe_subscription_id=sub),
        MemberIn(company_id="no-such-co", external_id="m3", name="C"),
    ]
    async with engine.begin() as conn:
        result = await directory.upsert_members(conn, members, actor=ACTOR)
        again = await directory.upsert_members(conn, members[:1], actor=ACTOR)
    assert sorted((r.index, r.field) for r in result.refused) == [(1, "stripe_subscription_id"), (2, "company_id")]
    assert [u.external_id for u in result.upserted] == ["m1"] and not again.upserted[0].changed

    cus = f"cus_{uuid.uuid4().hex[:10]}"
    customers = [
        CustomerIn(external_id=_ext("c"), name="X", stripe_customer_id=cus, earn_rate="1.5"),
        CustomerIn(external_id=_ext("c"), name="Y", stripe_customer_id=cus),
    ]
    async with engine.begin() as conn:
        written = await directory.upsert_customers(conn, customers, actor=ACTOR)
    assert [(r.index, r.field) for r in written.refused] == [(1, "stripe_customer_id")]
    assert len(written.upserted) == 1 and written.upserted[0].created


async def test_the_same_row_twice_in_a_batch_keeps_the_later(engine: AsyncEngine) -> None:
    ext = _ext("shop")
    rows = [RetailerIn(external_id=ext, name="Old name"), RetailerIn(external_id=ext, name="New name")]
    async with engine.begin() as conn:
        result = await directory.upsert_retailers(conn, rows, actor=ACTOR)
    assert [(r.index, r.field) for r in result.refused] == [(0, "external_id")]
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT name FROM retailers WHERE external_id = :e"), {"e": ext}) == "New name"


async def test_two_batches_racing_on_a_new_row_both_answer_its_id(engine: AsyncEngine) -> None:
    """The second waits on the first's insert, finds it the same and touches nothing: its answer
    still names the row (the statement's own snapshot predates it)."""
    import asyncio

    row = RetailerIn(external_id=_ext("shop"), name="Raced")
    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        made = await directory.upsert_retailers(first, [row], actor=ACTOR)
        await second.begin()
        waiting = asyncio.create_task(directory.upsert_retailers(second, [row], actor=ACTOR))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # on the first's row lock
        await first.commit()
        joined = await waiting
        await second.commit()
    assert joined.upserted[0].id == made.upserted[0].id
    assert (joined.upserted[0].created, joined.upserted[0].changed) == (False, False)


async def test_an_order_id_taken_by_hand_does_not_abort_the_batch(engine: AsyncEngine) -> None:
    """A placement names its order id itself (`POST /v1/orders/{order_id}/placement`): when the
    next id the directory would draw is taken so, the batch is written row by row and succeeds."""
    shop = RetailerIn(external_id=_ext("shop"), name="Shop")
    async with engine.begin() as conn:
        retailer_id = (await directory.upsert_retailers(conn, [shop], actor=ACTOR)).upserted[0].id
        taken = await conn.scalar(text("SELECT nextval(pg_get_serial_sequence('orders', 'id')) + 1"))
        await conn.execute(
            text(
                "INSERT INTO orders (id, retailer_id, status, payment_mode, total_amount)"
                " VALUES (:o, :r, 'CONFIRMED', 'COD', 5)"
            ),
            {"o": taken, "r": retailer_id},
        )
    batch = [
        OrderIn(external_id=_ext("ord"), retailer_external_id=shop.external_id, amount="1", payment_mode="COD")
        for _ in range(2)
    ]
    async with engine.begin() as conn:
        result = await directory.upsert_orders(conn, batch, actor=ACTOR)
    assert not result.refused and [u.created for u in result.upserted] == [True, True]
    assert taken not in [u.id for u in result.upserted]


async def test_a_stripe_id_claimed_after_the_check_refuses_that_row_only(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer may store the same subscription id between the check and the write: the
    database's unique key refuses it, and only that row is refused (the batch is not aborted)."""
    company = CompanyIn(id=f"co-{uuid.uuid4().hex[:8]}", name="Acme")
    sub = f"sub_{uuid.uuid4().hex[:10]}"
    async with engine.begin() as conn:
        await directory.upsert_companies(conn, [company], actor=ACTOR)
        await directory.upsert_members(
            conn,
            [MemberIn(company_id=company.id, external_id="first", name="A", stripe_subscription_id=sub)],
            actor=ACTOR,
        )
    blind = "SELECT company_id, external_id, stripe_customer_id, stripe_subscription_id FROM memberships WHERE false"
    monkeypatch.setattr(directory, "STRIPE_HOLDERS", text(blind))  # the check saw nothing yet
    batch = [
        MemberIn(company_id=company.id, external_id="second", name="B", stripe_subscription_id=sub),
        MemberIn(company_id=company.id, external_id="third", name="C"),
    ]
    async with engine.begin() as conn:
        result = await directory.upsert_members(conn, batch, actor=ACTOR)
    assert [(r.index, r.field, r.code) for r in result.refused] == [(0, "stripe_subscription_id", "stripe_id_taken")]
    assert [u.external_id for u in result.upserted] == ["third"]
