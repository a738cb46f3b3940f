"""Data retention: exactly the old rows go or are cleared, the daily cap still counts, money and
ledgers are untouched, and a second run changes nothing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.messaging.outbox import Hold, Recipient, hold_reason
from config.settings import load_settings
from schemas.retention import RetentionRequest, RetentionStatus
from workers import families
from workflows.retention import DataRetentionWorkflow

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
MONEY_AND_LEDGERS = (
    "credit_transactions",
    "credit_accounts",
    "orders",
    "loyalty_transactions",
    "customers",
    "retailers",
)


async def _seed(engine: AsyncEngine) -> dict[str, object]:
    tag = uuid.uuid4().hex[:8]
    async with engine.begin() as conn:
        for n, age in enumerate([40, 31, 45, 5, 29]):
            await conn.execute(
                text(
                    "INSERT INTO processed_webhook_events"
                    " (provider, event_id, event_type, status, received_at, processed_at)"
                    " VALUES ('stripe', :e, 'invoice.paid', 'processed', :at, :at)"
                ),
                {"e": f"evt_{tag}_{age}_{n}", "at": NOW - age * DAY},
            )
        for n, (age, status) in enumerate(
            [(100, "delivered"), (95, "failed"), (0, "sent"), (0, "delivered"), (10, "sent")]
        ):
            await conn.execute(
                text(
                    "INSERT INTO message_log (idempotency_key, recipient_type, recipient_id, channel, template,"
                    " template_version, status, provider_sid, error_code, reason, created_at, sent_at)"
                    " VALUES (:k, 'member', :r, 'sms', 'churn_nudge', 1, :s, :sid, :code, :why, :at, :at)"
                ),
                {
                    "k": f"msg:{tag}:{n}",
                    "r": f"m-{tag}",
                    "s": status,
                    "sid": f"SM{tag}{n}",
                    "code": 30003 if status == "failed" else None,
                    "why": "Unreachable destination handset" if status == "failed" else None,
                    "at": NOW - age * DAY,
                },
            )
        # Three members of one company: ended 400 days ago, ended 10 days ago, active (case closed long ago).
        company = f"co-{tag}"
        await conn.execute(text("INSERT INTO companies (id, name) VALUES (:c, 'Gym')"), {"c": company})
        cases = {}
        for who, status, closed_days in (
            ("old", "CANCELLED", 400),
            ("recent", "CANCELLED", 10),
            ("active", "ACTIVE", 400),
        ):
            member = await conn.scalar(
                text(
                    "INSERT INTO memberships (company_id, name, status, current_period_end)"
                    " VALUES (:c, :n, :s, :end) RETURNING id"
                ),
                {"c": company, "n": f"Member {who}", "s": status, "end": NOW - (closed_days + 20) * DAY},
            )
            cases[who] = await conn.scalar(
                text(
                    "INSERT INTO recovery_cases (company_id, membership_id, status, trigger, opened_at, closed_at)"
                    " VALUES (:c, :m, :s, 'payment_failed', :opened, :closed) RETURNING id"
                ),
                {
                    "c": company,
                    "m": member,
                    "s": "CANCELLED" if status == "CANCELLED" else "RECOVERED",
                    "opened": NOW - (closed_days + 30) * DAY,
                    "closed": NOW - closed_days * DAY,
                },
            )
            for n, actor in enumerate(("sha-of-ops-anna", None)):
                await conn.execute(
                    text(
                        "INSERT INTO recovery_actions"
                        " (case_id, company_id, type, actor_type, actor_id_hash, metadata, idempotency_key, created_at)"
                        " VALUES (:case, :c, 'nudge_sms', :t, :h, CAST(:meta AS jsonb), :k, :at)"
                    ),
                    {
                        "case": cases[who],
                        "c": company,
                        "t": "user" if actor else "system",
                        "h": actor,
                        "meta": json.dumps(
                            {"manual": bool(actor), "channel": "sms", "note": "called her at home", "reason": "x"}
                        ),
                        "k": f"act:{tag}:{who}:{n}",
                        "at": NOW - (closed_days + 5) * DAY,
                    },
                )
        retailer = await conn.scalar(text("INSERT INTO retailers (name) VALUES ('Old shop') RETURNING id"))
        await conn.execute(
            text(
                "INSERT INTO credit_transactions (retailer_id, type, amount, reference, created_at)"
                " VALUES (:r, 'CREDIT', 40, :ref, :at)"
            ),
            {"r": retailer, "ref": f"pi_{tag}", "at": NOW - 800 * DAY},
        )
        # WhatsApp sessions: one closed a day and more ago, one open.
        phones = {"closed": f"+1555{tag_digits(tag)}1", "open": f"+1555{tag_digits(tag)}2"}
        for which, hours in (("closed", 30), ("open", 2)):
            await conn.execute(
                text(
                    "INSERT INTO whatsapp_sessions (phone, sender, last_inbound_at)"
                    " VALUES (:p, 'whatsapp:+15005550006', :at)"
                ),
                {"p": phones[which], "at": NOW - timedelta(hours=hours)},
            )
    return {"tag": tag, "cases": cases, "recipient": f"m-{tag}", "sessions": phones}


def tag_digits(tag: str) -> str:
    return str(int(tag, 16) % 10**6).zfill(6)


async def _money_and_ledgers(engine: AsyncEngine) -> dict[str, str | None]:
    async with engine.connect() as conn:
        return {
            t: await conn.scalar(text(f"SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM {t} x"))
            for t in MONEY_AND_LEDGERS
        }


async def _cap_holds(engine: AsyncEngine, recipient: str, cap: int) -> str | None:
    hold = Hold(
        key="msg:next",
        recipient=Recipient("member", recipient, "M", "+15550000000", "sms", "UTC"),
        channel="sms",
        daily_cap=cap,
        quiet_hours=False,
        now=NOW,
    )
    async with engine.connect() as conn:
        return await hold_reason(conn, hold)


async def _run(env: WorkflowEnvironment, task_queue: str, record_history=None) -> RetentionStatus:  # type: ignore[no-untyped-def]
    handle = await env.client.start_workflow(
        # as_of: the time-skipping server's clock runs ahead of the seeded rows' ages
        DataRetentionWorkflow.run,
        RetentionRequest(page_size=2, as_of=NOW),
        id=f"retention/{uuid.uuid4()}",
        task_queue=task_queue,
    )
    result = await handle.result()
    assert await handle.query(DataRetentionWorkflow.status) == result  # the counts, for operators
    if record_history:
        await record_history(handle, "data_retention")
    return result


async def test_retention_clears_exactly_the_old_rows_keeps_the_cap_and_money_and_runs_idempotently(
    engine: AsyncEngine, time_skipping_env: WorkflowEnvironment, task_queue: str, record_history
) -> None:
    seeded = await _seed(engine)
    tag, recipient = seeded["tag"], str(seeded["recipient"])
    money_before = await _money_and_ledgers(engine)
    assert await _cap_holds(engine, recipient, cap=2) == "daily_cap"
    family = families.by_name("retention")
    deps = ActivityDeps(client=time_skipping_env.client, settings=load_settings(), engine=engine)
    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=family.workflows(),
        activities=family.activities(deps),
    ):
        first = await _run(time_skipping_env, task_queue, record_history)
        second = await _run(time_skipping_env, task_queue)

    assert (first.webhook_events_deleted, first.message_payloads_cleared, first.recovery_actions_anonymised) == (
        3,
        2,
        2,
    )
    assert first.whatsapp_sessions_deleted == 1 and second.whatsapp_sessions_deleted == 0
    assert first.step == "done" and first.pages >= 5  # pages of two: 2+1, 2+0, 2+0
    assert (second.webhook_events_deleted, second.message_payloads_cleared, second.recovery_actions_anonymised) == (
        0,
        0,
        0,
    )

    async with engine.connect() as conn:
        events = (
            await conn.scalars(
                text("SELECT event_id FROM processed_webhook_events WHERE event_id LIKE :p ORDER BY 1"),
                {"p": f"evt_{tag}_%"},
            )
        ).all()
        messages = (
            await conn.execute(
                text(
                    "SELECT status, provider_sid, error_code, reason, created_at < :old AS old FROM message_log"
                    " WHERE recipient_id = :r ORDER BY id"
                ),
                {"r": recipient, "old": NOW - 90 * DAY},
            )
        ).all()
        actions = (
            await conn.execute(
                text(
                    "SELECT case_id, actor_type, actor_id_hash, metadata FROM recovery_actions"
                    " WHERE idempotency_key LIKE :p ORDER BY id"
                ),
                {"p": f"act:{tag}:%"},
            )
        ).all()
    assert sorted(e.split("_")[2] for e in events) == ["29", "5"]
    assert len(messages) == 5 and [m.status for m in messages] == ["delivered", "failed", "sent", "delivered", "sent"]
    assert all((m.provider_sid, m.error_code, m.reason) == (None, None, None) for m in messages if m.old)
    assert all(m.provider_sid is not None for m in messages if not m.old)
    assert (
        await _cap_holds(engine, recipient, cap=2) == "daily_cap" and await _cap_holds(engine, recipient, cap=3) is None
    )

    cases = seeded["cases"]
    anonymised = [a for a in actions if a.case_id == cases["old"]]
    assert [a.actor_id_hash for a in anonymised] == ["anonymised", None]
    assert all(a.metadata == {"manual": a.actor_type == "user", "channel": "sms"} for a in anonymised)
    untouched = [a for a in actions if a.case_id != cases["old"]]
    assert len(untouched) == 4 and all(a.metadata.get("note") == "called her at home" for a in untouched)
    assert {a.actor_id_hash for a in untouched} == {"sha-of-ops-anna", None}

    assert await _money_and_ledgers(engine) == money_before
    async with engine.connect() as conn:
        sessions = (
            await conn.scalars(
                text("SELECT phone FROM whatsapp_sessions WHERE phone = ANY(:p)"),
                {"p": list(seeded["sessions"].values())},
            )
        ).all()
    assert sessions == [seeded["sessions"]["open"]]
