"""Outbound events: written in the change's transaction (once), delivered signed, in order, once.

The acceptance of issue #34 part 3: a subscriber down for an hour, then up, receives every event
once (de-duplicated by id) and per object in order; a wrong signature is refused by the example
receiver; bad subscription input is refused naming the field, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.churn.cases import ChurnActivities
from activities.credit import ledger
from activities.credit.admin import change_status
from activities.credit.guardrails import apply_guardrails
from activities.deps import ActivityDeps
from activities.events.delivery import EventDeliveryActivities
from activities.events.outbox import emit
from activities.loyalty.queue import LoyaltyQueueActivities, insert_queue_item
from config.settings import load_settings
from devtools.event_receiver import EventReceiver
from schemas import ids
from schemas.churn import CaseAction
from schemas.credit import RecordPayment
from schemas.events import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    DeliverEvents,
    DeliveryOutcome,
    EventDeliverySweep,
    signature,
)
from schemas.loyalty import FailedPointsApplication, MarkNeedsReview, ReopenItem
from services import events as service
from tests.loyalty_factories import new_customer, order_ref
from tests.unit.test_cli_input import jobctl
from workers import families
from workflows.events import EventDeliverySweepWorkflow, EventDeliveryWorkflow


async def _retailer(engine: AsyncEngine, limit: int = 1000) -> int:
    async with engine.begin() as conn:
        retailer = await conn.scalar(
            text("INSERT INTO retailers (name, phone, preferred_channel) VALUES ('Shop', :phone, 'sms') RETURNING id"),
            {"phone": f"+1555{uuid.uuid4().int % 10**7:07d}"},
        )
        await conn.execute(
            text("INSERT INTO credit_accounts (retailer_id, credit_limit, available_credit) VALUES (:r, :l, :l)"),
            {"r": retailer, "l": limit},
        )
    return retailer


async def _events(engine: AsyncEngine, object_type: str, object_id: object) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    text(
                        "SELECT id, event_id, type, payload, company_id FROM outbound_events"
                        " WHERE object_type = :t AND object_id = :o ORDER BY id"
                    ),
                    {"t": object_type, "o": str(object_id)},
                )
            ).all()
        )


async def _pay(engine: AsyncEngine, retailer: int, reference: str, amount: str) -> None:
    async with engine.begin() as conn:
        await ledger.record_credit(
            conn,
            RecordPayment(retailer_id=retailer, amount=Decimal(amount), reference=reference, actor="test"),
            notes="test",
            action="payment_recorded",
        )


async def test_credit_and_payment_changes_write_one_event_each_in_their_own_transaction(engine: AsyncEngine) -> None:
    retailer = await _retailer(engine)
    await change_status(engine, retailer, "pause", reason="Call Ann Smith on +15551234567", actor="ops-ann")
    await change_status(engine, retailer, "unpause", reason="paid", actor="ops-ann")
    await change_status(engine, retailer, "block", reason="fraud", actor="ops-ann")
    types = [e.type for e in await _events(engine, "retailer", retailer)]
    assert types == ["credit.paused", "credit.resumed", "credit.blocked"]
    paused = (await _events(engine, "retailer", retailer))[0]
    assert paused.payload == {"retailer_id": retailer, "credit_status": "PAUSED", "by": "admin"}
    assert paused.event_id.startswith("evt_") and len(paused.event_id) == 36  # no reason, actor, name or phone

    await _pay(engine, retailer, f"pay-{uuid.uuid4().hex[:8]}", "25.00")
    reference = f"pay-{uuid.uuid4().hex[:8]}"
    await _pay(engine, retailer, reference, "10.00")
    await _pay(engine, retailer, reference, "10.00")  # a retried activity replays the same payment: no new event
    async with engine.connect() as conn:
        recorded = (
            await conn.execute(
                text(
                    "SELECT object_id, payload FROM outbound_events WHERE type = 'payment.recorded'"
                    " AND payload ->> 'reference' = :ref"
                ),
                {"ref": reference},
            )
        ).all()
    assert len(recorded) == 1 and recorded[0].payload["amount"] in (10, "10.00", 10.0)

    rolled_back = f"pay-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await ledger.record_credit(
                conn,
                RecordPayment(retailer_id=retailer, amount=Decimal("5"), reference=rolled_back, actor="test"),
                notes="test",
                action="payment_recorded",
            )
            raise RuntimeError("the change fails after the write")
    async with engine.connect() as conn:
        assert not await conn.scalar(
            text("SELECT count(*) FROM outbound_events WHERE payload ->> 'reference' = :r"), {"r": rolled_back}
        )


async def test_the_guardrails_set_based_pause_writes_its_event(engine: AsyncEngine) -> None:
    retailer = await _retailer(engine, limit=100)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO credit_transactions (retailer_id, type, amount, due_date, reference)"
                " VALUES (:r, 'DEBIT', 500, current_date, :ref)"
            ),
            {"r": retailer, "ref": f"debit-{uuid.uuid4().hex[:8]}"},
        )
    async with engine.begin() as conn:
        await apply_guardrails(conn, date.today(), f"guardrails-test-{uuid.uuid4().hex[:6]}", [retailer])
    async with engine.begin() as conn:  # the same run again: no change, no event
        await apply_guardrails(conn, date.today(), f"guardrails-test-{uuid.uuid4().hex[:6]}", [retailer])
    events = await _events(engine, "retailer", retailer)
    assert [(e.type, e.payload["by"]) for e in events] == [("credit.paused", "system")]
    assert events[0].payload["reason"] == "outstanding above the credit limit"


async def test_a_closed_churn_case_writes_one_event_under_its_company(engine: AsyncEngine) -> None:
    company = f"co{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO companies (id, name) VALUES (:c, :c)"), {"c": company})
        membership = await conn.scalar(
            text("INSERT INTO memberships (company_id, name) VALUES (:c, 'Member') RETURNING id"), {"c": company}
        )
        case = await conn.scalar(
            text(
                "INSERT INTO recovery_cases (company_id, membership_id, trigger, status)"
                " VALUES (:c, :m, 'manual', 'OPEN') RETURNING id"
            ),
            {"c": company, "m": membership},
        )
    activities = ChurnActivities(engine)
    action = CaseAction(
        case_id=case,
        company_id=company,
        type="case_recovered",
        idempotency_key=f"recovered:{case}",
        close_as="RECOVERED",
    )
    assert await activities.record_action(action)
    assert not await activities.record_action(action)  # the activity retried: nothing more
    events = await _events(engine, "churn_case", case)
    assert [(e.type, e.company_id) for e in events] == [("churn.case.closed", company)]
    assert events[0].payload == {"case_id": case, "membership_id": membership, "status": "RECOVERED"}


async def test_a_loyalty_item_sent_to_review_writes_an_event_each_time_it_goes(engine: AsyncEngine) -> None:
    customer = await new_customer(engine, 10)
    item, _ = await insert_queue_item(
        engine, FailedPointsApplication(customer_id=customer, order_id=order_ref(), order_total=Decimal("5"))
    )
    queue = LoyaltyQueueActivities(engine)
    review = MarkNeedsReview(item_id=item.item_id, reason="Stripe says nothing")
    await queue.mark_needs_review(review)
    await queue.mark_needs_review(review)  # retried: it is there already, nothing more
    await queue.reopen_item(ReopenItem(item_id=item.item_id, actor_id="ops"))
    await queue.mark_needs_review(review)  # to review again: a second event
    events = await _events(engine, "loyalty_item", item.item_id)
    assert [e.type for e in events] == ["loyalty.item.needs_review"] * 2
    assert set(events[0].payload) == {"item_id", "customer_id", "order_id", "attempts"}


async def test_emit_refuses_an_unknown_type_and_writes_a_key_once(engine: AsyncEngine) -> None:
    key = uuid.uuid4().hex
    async with engine.begin() as conn:
        with pytest.raises(ValueError, match="unknown outbound event type"):
            await emit(conn, "credit.exploded", "retailer", 1, {}, dedupe_key=key)
        first = await emit(conn, "order.expired", "order", 1, {"order_id": 1}, dedupe_key=key)
        again = await emit(conn, "order.expired", "order", 1, {"order_id": 1}, dedupe_key=key)
    assert first is not None and again is None


# --------------------------------------------------------------------------- the example receiver


async def test_the_example_receiver_refuses_a_wrong_signature_and_keeps_an_event_once() -> None:
    secret = "whsec_" + "a" * 64
    body = json.dumps({"id": "evt_" + "1" * 32, "type": "credit.paused", "created": 1, "object": {}}).encode()
    now = int(time.time())
    async with EventReceiver(secret) as receiver, aiohttp.ClientSession() as http:

        async def post(signature_header: str | None) -> int:
            headers = {"Content-Type": "application/json", EVENT_ID_HEADER: "evt_" + "1" * 32}
            if signature_header is not None:
                headers[SIGNATURE_HEADER] = signature_header
            async with http.post(receiver.url, data=body, headers=headers) as response:
                return response.status

        assert await post(signature("whsec_" + "b" * 64, now, body)) == 400  # another secret
        assert await post(signature(secret, now - 3600, body)) == 400  # an hour old: a replayed capture
        assert await post(signature(secret, now, body).replace("v1=", "v1=0")) == 400  # tampered
        assert await post(None) == 400
        assert await post(f"t={now},v0=abc") == 400
        assert receiver.rejected == 5 and receiver.events == []
        assert await post(signature(secret, now, body)) == 200
        assert await post(signature(secret, now, body)) == 200  # delivered twice: kept once
        assert len(receiver.events) == 1 and receiver.duplicates == 1


# --------------------------------------------------------------------------- subscriptions


@pytest.mark.parametrize(
    ("url", "types", "field"),
    [
        ("ftp://shop.example/hook", ["credit.paused"], "url"),
        ("https://", ["credit.paused"], "url"),
        ("https://user:pw@shop.example/hook", ["credit.paused"], "url"),
        ("https://shop.example/ho ok", ["credit.paused"], "url"),
        ("https://shop.example:99999/hook", ["credit.paused"], "url"),
        ("https://shop.example/hook", [], "event_types"),
        ("https://shop.example/hook", ["credit.paused", "credit.exploded"], "event_types"),
    ],
)
async def test_bad_subscription_input_is_refused_naming_the_field_and_stores_nothing(
    engine: AsyncEngine, url: str, types: list[str], field: str
) -> None:
    async with engine.connect() as conn:
        before = await conn.scalar(text("SELECT count(*) FROM event_subscriptions"))
    with pytest.raises(service.EventsRefused) as refused:
        await service.create_subscription(engine, None, url, types, created_by="test")
    assert refused.value.field == field
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM event_subscriptions")) == before


async def test_a_company_bound_subscription_takes_its_companys_event_types_only(engine: AsyncEngine) -> None:
    company = f"co{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO companies (id, name) VALUES (:c, :c)"), {"c": company})
    with pytest.raises(service.EventsRefused, match="carry no company") as refused:
        await service.create_subscription(
            engine, None, "https://shop.example/hook", ["credit.paused"], created_by="t", company_id=company
        )
    assert refused.value.field == "event_types"
    created = await service.create_subscription(
        engine, None, "https://shop.example/hook", ["churn.case.closed"], created_by="t", company_id=company
    )
    assert created.secret.startswith("whsec_") and created.workflow_id is None
    listed = await service.list_subscriptions(engine, company_id=company)
    assert [s.id for s in listed] == [created.id] and "secret" not in listed[0].model_dump()
    await service.delete_subscription(engine, None, created.id, company_id=company)
    with pytest.raises(service.UnknownSubscription):
        await service.delete_subscription(engine, None, created.id, company_id=company)


# --------------------------------------------------------------------------- delivery


async def _wait_for(condition: Any, env: WorkflowEnvironment, *, step: timedelta, real_seconds: float = 60) -> None:
    """Skip workflow time by `step` until `condition()` holds (at most `real_seconds` of real time)."""
    deadline = time.monotonic() + real_seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached"
        await env.sleep(step)
        await asyncio.sleep(0.05)


async def test_a_subscriber_down_for_an_hour_then_up_gets_every_event_once_per_object_in_order(
    engine: AsyncEngine, time_skipping_env: WorkflowEnvironment, task_queue: str, record_history
) -> None:
    env = time_skipping_env
    settings = load_settings(
        task_queue=task_queue,
        event_poll_seconds=5,
        event_retry_initial_seconds=1,
        event_retry_max_seconds=600,
    )
    family = families.by_name("events")
    deps = ActivityDeps(client=env.client, settings=settings, engine=engine)
    async with (
        deps.resources,
        EventReceiver("unset") as receiver,
        Worker(env.client, task_queue=task_queue, workflows=family.workflows(), activities=family.activities(deps)),
    ):
        receiver.down = True
        sub = await service.create_subscription(
            engine,
            env.client,
            receiver.url,
            ["credit.paused", "credit.resumed", "credit.blocked", "payment.recorded"],
            created_by="test",
            poll_seconds=settings.event_poll_seconds,
            task_queue=task_queue,
        )
        receiver.secret = sub.secret
        assert sub.workflow_id == ids.event_delivery(sub.id)
        a, b = await _retailer(engine), await _retailer(engine)
        for retailer, action in ((a, "pause"), (b, "pause"), (a, "unpause"), (b, "unpause")):  # interleaved
            await change_status(engine, retailer, action, reason="r", actor="o")  # type: ignore[arg-type]
        await change_status(engine, a, "block", reason="r", actor="o")
        await _pay(engine, b, f"pay-{uuid.uuid4().hex[:8]}", "12.50")
        emitted = [e.event_id for r in (a, b) for e in await _events(engine, "retailer", r)]
        async with engine.connect() as conn:
            emitted_in_order = list(
                (
                    await conn.scalars(
                        text("SELECT event_id FROM outbound_events WHERE id > :floor ORDER BY id"),
                        {"floor": sub.delivered_through},
                    )
                ).all()
            )
        assert len(emitted_in_order) == 6 and set(emitted) <= set(emitted_in_order)

        async def refused_for_an_hour() -> bool:
            return receiver.refused_while_down >= 8  # 1+2+4+...+512 s of back-off: about an hour

        await _wait_for(refused_for_an_hour, env, step=timedelta(minutes=5))
        assert receiver.events == []
        async with engine.connect() as conn:
            head = (
                await conn.execute(
                    text("SELECT status, attempts, last_status FROM event_deliveries WHERE subscription_id = :s"),
                    {"s": sub.id},
                )
            ).all()
        assert len(head) == 1 and head[0].status == "pending" and head[0].last_status == 503  # the head blocks

        receiver.down = False

        async def all_delivered() -> bool:
            return len(receiver.events) >= len(emitted_in_order)

        await _wait_for(all_delivered, env, step=timedelta(minutes=5))
        assert [e["id"] for e in receiver.events] == emitted_in_order  # once each, in order of occurrence
        per_object: dict[str, list[str]] = {}
        for event in receiver.events:
            per_object.setdefault(str(event["object"].get("retailer_id")), []).append(event["type"])
        assert per_object[str(a)] == ["credit.paused", "credit.resumed", "credit.blocked"]
        assert per_object[str(b)] == ["credit.paused", "credit.resumed", "payment.recorded"]

        replayed = receiver.events[0]["id"]
        await service.replay_event(engine, env.client, replayed, sub.id)

        async def duplicate_seen() -> bool:
            return receiver.duplicates >= 1

        await _wait_for(duplicate_seen, env, step=timedelta(seconds=5))
        assert len(receiver.events) == len(emitted_in_order)  # the receiver de-duplicated it by id

        sweep_handle = await env.client.start_workflow(
            EventDeliverySweepWorkflow.run,
            EventDeliverySweep(poll_seconds=5),
            id=f"event-delivery-sweep/{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        assert (await sweep_handle.result()).started == 0  # its run is running
        await record_history(sweep_handle, "event_delivery_sweep")

        await service.delete_subscription(engine, env.client, sub.id)
        handle = env.client.get_workflow_handle_for(EventDeliveryWorkflow.run, ids.event_delivery(sub.id))
        ended = await handle.result()
        assert ended.state == "stopped" and ended.delivered >= 7
        assert await handle.query(EventDeliveryWorkflow.status) == ended
        await record_history(handle, "event_delivery")


# --------------------------------------------------------------------------- the CLI


def test_the_cli_creates_lists_replays_and_deletes_a_subscription(database_url: str) -> None:
    """Temporal away: the subscription is stored and says its run is left to the sweep."""
    env = {"DATABASE_URL": database_url, "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    created = jobctl(
        "events",
        "subscriptions",
        "create",
        "--url",
        "https://shop.example/h",
        "--types",
        "order.failed",
        "--json",
        **env,
    )
    assert created.returncode == 0, created.stderr
    sub = json.loads(created.stdout)
    assert sub["secret"].startswith("whsec_") and sub["workflow_id"] is None
    listed = jobctl("events", "subscriptions", "list", **env)
    assert listed.returncode == 0 and "https://shop.example/h" in listed.stdout and "whsec_" not in listed.stdout
    assert jobctl("events", "list", "--type", "order.failed", "--json", **env).returncode == 0
    unknown = jobctl("events", "replay", "evt_" + "0" * 32, "--subscription", str(sub["id"]), **env)
    assert unknown.returncode == 2 and "no event evt_" in unknown.stderr
    deleted = jobctl("events", "subscriptions", "delete", str(sub["id"]), **env)
    assert deleted.returncode == 0, deleted.stderr
    again = jobctl("events", "subscriptions", "delete", str(sub["id"]), **env)
    assert again.returncode == 2 and f"no active subscription {sub['id']}" in again.stderr


async def test_an_idle_subscriptions_cursor_passes_settled_events_it_does_not_take(engine: AsyncEngine) -> None:
    """The low-water mark moves past what the subscription does not take once it is settled (five
    minutes old), so an idle poll does not rescan them for ever; never past a fresh one."""
    sub = await service.create_subscription(
        engine, None, "http://127.0.0.1:9/never", ["loyalty.item.needs_review"], created_by="t"
    )
    async with engine.begin() as conn:
        old = await conn.scalar(
            text(
                "INSERT INTO outbound_events (type, object_type, object_id, payload, dedupe_key, occurred_at)"
                " SELECT 'order.expired', 'order', g::text, '{}', :k || g, now() - interval '1 hour'"
                " FROM generate_series(1, 3) g RETURNING id"
            ),
            {"k": uuid.uuid4().hex},
        )
        fresh = await emit(conn, "order.expired", "order", 4, {}, dedupe_key=uuid.uuid4().hex)
    delivery = EventDeliveryActivities(engine, load_settings())
    outcome = await delivery.deliver(DeliverEvents(subscription_id=sub.id))
    assert outcome == DeliveryOutcome()  # nothing for it
    async with engine.connect() as conn:
        cursor = await conn.scalar(
            text("SELECT delivered_through FROM event_subscriptions WHERE id = :s"), {"s": sub.id}
        )
    assert fresh is not None and old is not None and old <= cursor < fresh


async def test_a_replay_ahead_of_the_events_turn_is_refused(engine: AsyncEngine) -> None:
    """Sent before the events ahead of it, a replay would pass them: it waits for its turn instead."""
    sub = await service.create_subscription(engine, None, "http://127.0.0.1:9/never", ["order.failed"], created_by="t")
    async with engine.begin() as conn:
        await emit(conn, "order.failed", "order", 5, {}, dedupe_key=uuid.uuid4().hex)
    listed = await service.list_events(engine, type="order.failed", object_id="5")
    (event,) = [e for e in listed if e.id > sub.delivered_through]
    with pytest.raises(service.EventsRefused, match="has not had its turn"):
        await service.replay_event(engine, None, event.event_id, sub.id)
    with pytest.raises(service.UnknownEvent):
        await service.replay_event(engine, None, "evt_" + "f" * 32, sub.id)


@pytest.mark.parametrize(
    ("action", "reference", "new", "event_type", "object_type", "payload"),
    [
        (
            "pending_order_expired",
            "order:{o}",
            {"status": "EXPIRED"},
            "order.expired",
            "order",
            {"order_id": "{o}"},
        ),
        (
            "order_failed",
            "order:{o}",
            {"order_status": "FAILED", "reversed_amount": "250.00", "returned_to_balance": "0"},
            "order.failed",
            "order",
            {"order_id": "{o}", "reversed_amount": "250.00", "returned_to_balance": "0"},
        ),
        (
            "payment_refunded",
            "refund:ch_1:10.00",
            {"payment": "pay-1", "credit_transaction_id": 77, "amount": "10.00", "refunded_amount": "10.00"},
            "payment.refunded",
            "payment",
            {"payment_id": 77, "reference": "pay-1", "kind": "refund", "amount": "10.00", "refunded_amount": "10.00"},
        ),
        (
            "payment_dispute_lost",
            "dispute_lost:dp_1:5.00",
            {"payment": "pay-1", "credit_transaction_id": 77, "amount": "5.00", "refunded_amount": "15.00"},
            "payment.refunded",
            "payment",
            {
                "payment_id": 77,
                "reference": "pay-1",
                "kind": "dispute_lost",
                "amount": "5.00",
                "refunded_amount": "15.00",
            },
        ),
        (
            "payment_disputed",
            "dispute:dp_1",
            {"disputed": True, "dispute_id": "dp_1", "payment": "pay-1", "credit_transaction_id": 77},
            "payment.disputed",
            "payment",
            {"payment_id": 77, "reference": "pay-1", "dispute_id": "dp_1"},
        ),
        (
            "credit_limits_changed",
            None,
            {"credit_limit": "2000.00"},
            "credit.limits_changed",
            "retailer",
            {"new": {"credit_limit": "2000.00"}},
        ),
    ],
)
async def test_each_audited_action_becomes_its_event(
    engine: AsyncEngine,
    action: str,
    reference: str | None,
    new: dict[str, Any],
    event_type: str,
    object_type: str,
    payload: dict[str, Any],
) -> None:
    """The trigger's mapping, action by action (the ledger's own paths are exercised above)."""
    retailer = await _retailer(engine)
    order = uuid.uuid4().int % 10**9
    ref = reference.format(o=order) if reference else None
    async with engine.begin() as conn:
        audit_id = await ledger.audit(conn, retailer, action, actor="admin-ann", reference=ref, new=new, reason="free")
        other = await ledger.audit(conn, retailer, "reminder_sent", actor="system", new={"x": 1})  # not catalogued
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT type, object_type, object_id, payload FROM outbound_events WHERE dedupe_key IN (:a, :b)"),
                {"a": f"audit:{audit_id}", "b": f"audit:{other}"},
            )
        ).all()
    assert len(rows) == 1
    (row,) = rows
    expected = {k: (int(v.format(o=order)) if v == "{o}" else v) for k, v in payload.items()}
    assert (row.type, row.object_type) == (event_type, object_type)
    assert row.payload == {"retailer_id": retailer, **expected}
    assert "free" not in json.dumps(row.payload) and "admin-ann" not in json.dumps(row.payload)
    object_ids = {"order": str(order), "payment": "77", "retailer": str(retailer)}
    assert row.object_id == object_ids[object_type]
