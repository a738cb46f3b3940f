"""Issue #33 point 7: the fuzz pass an outsider would run, against the real stack.

- Every operation with a key per scope set (each family's read+write pair, and every read scope):
  no server error; status, content type, headers and body as documented (a 401/403 is documented).
- schemathesis' state machine (links inferred from the spec: it declares none) chaining calls.
- Signed, random Stripe events of every type the receiver handles, about objects we never created,
  and signed random Twilio status and inbound forms, posted to a real receiver with every family's
  handlers: never a 5xx.
- A refused request (4xx), and an event about a stranger's object, changes no row of the money and
  state tables; no workflow started during the module had a failed workflow task.

`make test` runs it bounded; `make fuzz` sets FUZZ_SCALE (cases per operation and key, state
machine scenarios and webhook events all scale with it)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import httpx
import pytest_asyncio
import schemathesis
import stripe
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from activities.payments.gateway import StripeGateway
from config.settings import Settings
from tests.activities.test_churn import new_member
from tests.activities.test_credit import new_debit, new_retailer
from tests.activities.test_webhooks import BASE, STRIPE_SECRET, TWILIO_TOKEN, stripe_signed, twilio_signed
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures (api_settings, running_workers, server), taken as test arguments
    API_APPLICATION_NAME,
    api_settings,
    new_key,
    running_workers,
    server,
)
from tests.e2e.test_api_schemathesis import CHECKS
from tests.loyalty_factories import new_customer, order_ref
from workers import families
from workers.api.auth import SCOPES
from workers.webhooks import create_app

LACKS = re.compile(r"lacks the scope ([a-z]+:[a-z]+)")
FUZZ_SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
"""1 in `make test` (bounded: the module adds well under a minute); `make fuzz` raises it."""

FAMILY_PAIRS = sorted({scope.split(":")[0] for scope in SCOPES})
SCOPE_SETS: dict[str, list[str]] = {
    family: [s for s in SCOPES if s.split(":")[0] == family] for family in FAMILY_PAIRS
} | {"read-only": [s for s in SCOPES if s.endswith(":read")]}

WATCHED_TABLES = (
    "credit_transactions",
    "credit_accounts",
    "credit_allocations",
    "payment_returns",
    "payment_links",
    "audit_log",
    "retailers",
    "orders",
    "order_items",
    "pending_orders",
    "companies",
    "recovery_cases",
    "recovery_actions",
    "loyalty_transactions",
    "loyalty_reconciliation_queue",
    "memberships",
    "customers",
    "messaging_brake",
    "recipient_opt_outs",
    "event_subscriptions",
    "event_deliveries",
    "outbound_events",
)
"""The money and state tables a refused request must not write from the API's connections
(api_idempotency_keys, api_keys' last use, processed_webhook_events and the message log are
bookkeeping, not state)."""
MONEY_TABLES = (
    "credit_transactions",
    "credit_accounts",
    "credit_allocations",
    "payment_returns",
    "loyalty_transactions",
    "retailers",
)

STARTED = datetime.now(UTC) - timedelta(seconds=5)
FUZZ_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "derandomize": True,
    "suppress_health_check": list(HealthCheck),
}


async def checksum(engine: AsyncEngine, tables: tuple[str, ...] = WATCHED_TABLES) -> dict[str, str]:
    """Per table: its row count and an order-independent digest of its rows."""
    parts = " UNION ALL ".join(
        f"SELECT '{t}', count(*) || ':' || coalesce(md5(string_agg(md5(x::text), '' ORDER BY md5(x::text))), '')"
        f" FROM {t} x"
        for t in tables
    )
    async with engine.connect() as conn:
        return {str(name): str(digest) for name, digest in (await conn.execute(text(parts))).all()}


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [t for t in before if before[t] != after[t]]


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.refused = 0
        self.statuses: dict[int, int] = {}

    def add(self, status: int) -> None:
        self.cases += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.refused += 400 <= status < 500

    def __str__(self) -> str:
        return f"{self.cases} cases ({self.refused} refused), statuses {dict(sorted(self.statuses.items()))}"


Guard = Callable[[Callable[[], Any]], Any]


def guarded_call(engine: AsyncEngine, loop: asyncio.AbstractEventLoop, tally: Tally) -> Guard:
    """From the schemathesis thread: run `call` (it returns a response); a 4xx must have written no
    row of a watched table from the API's connections. Attributed by the writer (`fuzz_writes`),
    not by a before/after checksum: a workflow an earlier accepted request started may be writing
    the same tables right then (a 202's case ending while the next request is refused)."""

    def sync(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    def run(call: Callable[[], Any]) -> Any:
        mark = sync(scalar(engine, "SELECT coalesce(max(id), 0) FROM fuzz_writes"))
        response = call()
        tally.add(response.status_code)
        if 400 <= response.status_code < 500:
            writes = sync(api_writes_since(engine, mark))
            request = response.request
            assert not writes, (
                f"refused {request.method} {request.url} ({response.status_code}) wrote {writes}:"
                f" body {getattr(request, 'body', None)!r}, answer {response.text[:500]}"
            )
        return response

    return run


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def api_writes_since(engine: AsyncEngine, mark: int) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT tbl, op FROM fuzz_writes WHERE id > :m AND app = :app ORDER BY id"),
            {"m": mark, "app": API_APPLICATION_NAME},
        )
        return [(str(t), str(o)) for t, o in rows.all()]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def write_log(engine: AsyncEngine) -> None:
    """Test-only row triggers on the watched tables (this module's own database): who wrote what."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE fuzz_writes (id bigserial PRIMARY KEY, app text, tbl text, op text,"
                " at timestamptz DEFAULT clock_timestamp())"
            )
        )
        await conn.execute(
            text(
                "CREATE FUNCTION fuzz_log_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " INSERT INTO fuzz_writes (app, tbl, op)"
                " VALUES (current_setting('application_name'), TG_TABLE_NAME, TG_OP); RETURN NULL; END $$"
            )
        )
        for table in WATCHED_TABLES:
            await conn.execute(
                text(
                    f"CREATE TRIGGER fuzz_log_{table} AFTER INSERT OR UPDATE OR DELETE ON {table}"
                    " FOR EACH ROW EXECUTE FUNCTION fuzz_log_write()"
                )
            )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(engine: AsyncEngine, server: str, write_log: None) -> dict[str, Any]:
    """A little of everything, so the lists the state machine starts from have items to follow:
    retailers owing overdue money, a churn case (opened through the API), a loyalty queue item."""
    shops = []
    for limit in ("5000", "800"):
        shop, _ = await new_retailer(engine, limit=Decimal(limit))
        await new_debit(engine, shop, "120.00", date.today() - timedelta(days=9))
        await new_debit(engine, shop, "60.00", date.today() + timedelta(days=5))
        shops.append(shop)
    company, member, _ = await new_member(engine, offsets=[30], cap=5)
    customer = await new_customer(engine, 100)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO loyalty_reconciliation_queue (customer_id, order_reference, points_redeemed, order_total)"
                " VALUES (:c, :o, 10, 20)"
            ),
            {"c": customer, "o": order_ref()},
        )
    async with httpx.AsyncClient(base_url=server, headers=await new_key(engine), timeout=30) as client:
        opened = await client.post("/v1/churn/cases", json={"membership_id": member, "company_id": company})
        assert opened.status_code == 201, opened.text
    # The write log sees the API's own writes (else "a refused request wrote nothing" proves nothing).
    assert await api_writes_since(engine, 0), "the API's writes are not attributed to it"
    return {"retailers": shops, "company": company}


async def test_every_operation_with_a_key_per_scope_set(server: str, engine: AsyncEngine, seeded: dict) -> None:
    keys = {name: await new_key(engine, *scopes) for name, scopes in SCOPE_SETS.items()}
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 28
    tally = Tally()
    guard = guarded_call(engine, asyncio.get_running_loop(), tally)
    ran: set[tuple[str, str]] = set()
    answers: list[tuple[str, str, int, str | None]] = []  # operation, scope set, status, scope it lacked

    def run_all() -> None:
        for operation in operations:
            for name, headers in keys.items():

                @given(case=operation.as_strategy())
                @settings(max_examples=FUZZ_SCALE, phases=[Phase.generate], **FUZZ_SETTINGS)
                def check(case) -> None:  # type: ignore[no-untyped-def]
                    ran.add((operation.label, name))  # noqa: B023 - called in the same iteration
                    response = guard(lambda: case.call(base_url=server, headers=headers, timeout=30))  # noqa: B023 - same iteration
                    lacked = LACKS.search(response.text) if response.status_code == 403 else None
                    answers.append((operation.label, name, response.status_code, lacked and lacked[1]))  # noqa: B023 - run in the same loop iteration
                    case.validate_response(response, checks=CHECKS)

                check()

    await asyncio.to_thread(run_all)
    print(f"\nfuzz, {len(keys)} scope sets x {len(operations)} operations: {tally}")
    assert len(ran) == len(operations) * len(keys)
    # The scopes as an outsider learns them: the 403s name the scope an operation needs. No key may
    # be told it lacks a scope it holds, and no key without an operation's scope may get a 2xx.
    needs = {label: scope for label, _, _, scope in answers if scope}
    wrong = [a for a in answers if a[3] and a[3] in SCOPE_SETS[a[1]]]
    leaked = [a for a in answers if a[0] in needs and a[2] < 300 and needs[a[0]] not in SCOPE_SETS[a[1]]]
    assert not wrong and not leaked, (wrong, leaked)
    unguarded = sorted({a[0] for a in answers if a[0] not in needs and a[2] < 300})
    print(f"scopes learned for {len(needs)} operations; answered 2xx with no scope named: {unguarded}")
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{server}/readyz")).status_code == 200


async def test_stateful_chains_answer_as_documented(server: str, engine: AsyncEngine, seeded: dict) -> None:
    headers = await new_key(engine)
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    tally = Tally()
    guard = guarded_call(engine, asyncio.get_running_loop(), tally)
    base = schema.as_state_machine()
    transitions = schema.statistic.transitions.total

    class Machine(base):  # type: ignore[valid-type, misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": server, "headers": headers, "timeout": 30}

        def call(self, case: Any, **kwargs: Any) -> Any:
            return guard(lambda: case.call(**kwargs))

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    machine_settings = settings(
        max_examples=6 * FUZZ_SCALE, stateful_step_count=5 + FUZZ_SCALE, phases=[Phase.generate], **FUZZ_SETTINGS
    )
    await asyncio.to_thread(Machine.run, settings=machine_settings)
    print(f"\nstateful, {transitions} inferred links: {tally}")
    assert tally.cases > 0


# --------------------------------------------------------------------------- webhooks

STRIPE_EVENTS = {
    "checkout.session.completed": "cs_",
    "checkout.session.async_payment_succeeded": "cs_",
    "checkout.session.async_payment_failed": "cs_",
    "payment_intent.succeeded": "pi_",
    "charge.refunded": "ch_",
    "charge.dispute.created": "dp_",
    "charge.dispute.closed": "dp_",
}
anything = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def stranger_objects(prefix: str, retailers: list[int]) -> st.SearchStrategy[dict[str, Any]]:
    """Stripe-looking objects we never created: ids unknown to the sandbox, metadata that may name a
    real retailer of ours (a forger knows one), amounts and statuses of every shape."""
    retailer = st.sampled_from([str(r) for r in retailers]) | st.text(max_size=6) | st.integers() | st.none()
    metadata = st.fixed_dictionaries(
        {},
        optional={
            "retailer_id": retailer,
            "payment_link_key": st.text(max_size=10),
            "loyalty_customer_id": st.text(max_size=10),
            "loyalty_order_id": st.text(max_size=10),
        },
    )
    ident = st.uuids().map(lambda u: prefix + u.hex[:14])
    return st.fixed_dictionaries(
        {"id": ident},
        optional={
            "object": st.sampled_from(["checkout.session", "payment_intent", "charge", "dispute"]),
            "metadata": metadata | anything,
            "amount": st.integers(-100, 10**9) | anything,
            "amount_total": st.integers(-100, 10**9),
            "amount_refunded": st.integers(-100, 10**9),
            "amount_received": st.integers(0, 10**9),
            "currency": st.sampled_from(["usd", "eur", ""]) | st.text(max_size=4),
            "status": st.sampled_from(["complete", "paid", "succeeded", "won", "lost", "needs_response", "open"]),
            "payment_status": st.sampled_from(["paid", "unpaid", "no_payment_required"]),
            "payment_intent": st.just("pi_" + uuid.uuid4().hex[:14]) | st.none() | anything,
            "charge": st.just("ch_" + uuid.uuid4().hex[:14]) | anything,
            "latest_charge": st.just("ch_" + uuid.uuid4().hex[:14]),
            "customer": st.just("cus_" + uuid.uuid4().hex[:10]) | st.none(),
            "refunds": anything,
            "extra": anything,
        },
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def receiver(
    dev_env: WorkflowEnvironment,
    engine: AsyncEngine,
    api_settings: Settings,
    stripe_api: stripe.StripeClient,
    running_workers: None,
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """The receiver as `jobctl webhooks` builds it: every family's Stripe handlers, the sandbox."""
    deps = ActivityDeps(dev_env.client, api_settings, engine, StripeGateway(stripe_api, engine))
    app = create_app(
        engine,
        stripe_webhook_secret=STRIPE_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        public_base_url=BASE,
        stripe_handlers=families.stripe_handlers(deps),
    )
    async with TestServer(app) as test_server, aiohttp.ClientSession() as http:
        yield http, str(test_server.make_url(""))


async def test_signed_random_webhooks_never_fail_and_move_no_money(
    receiver: tuple[aiohttp.ClientSession, str], engine: AsyncEngine, seeded: dict
) -> None:
    http, url = receiver
    loop = asyncio.get_running_loop()
    statuses: dict[str, dict[int, int]] = {}

    def post(path: str, data: Any, headers: dict[str, str]) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            async with http.post(url.rstrip("/") + path, data=data, headers=headers) as answer:
                return answer.status, await answer.text()

        return asyncio.run_coroutine_threadsafe(go(), loop).result(60)

    def tally(kind: str, status: int) -> None:
        statuses.setdefault(kind, {}).setdefault(status, 0)
        statuses[kind][status] += 1

    def run_all() -> None:
        for event_type, prefix in STRIPE_EVENTS.items():

            @given(obj=stranger_objects(prefix, seeded["retailers"]))
            @settings(max_examples=4 * FUZZ_SCALE, phases=[Phase.generate], **FUZZ_SETTINGS)
            def stripe_event(obj: dict[str, Any]) -> None:
                before = asyncio.run_coroutine_threadsafe(checksum(engine, MONEY_TABLES), loop).result(30)
                event = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": event_type}  # noqa: B023 - run in the same loop iteration
                payload, headers = stripe_signed(event | {"data": {"object": obj}})
                status, body = post("/webhooks/stripe", payload, headers)
                tally(event_type, status)  # noqa: B023 - run in the same loop iteration
                assert status < 500, f"{event_type} {payload} -> {status} {body}"  # noqa: B023 - run in the same loop iteration
                after = asyncio.run_coroutine_threadsafe(checksum(engine, MONEY_TABLES), loop).result(30)
                assert not changed(before, after), f"{payload} changed {changed(before, after)}"

            stripe_event()

        sid = st.uuids().map(lambda u: "SM" + u.hex)
        forms: dict[str, st.SearchStrategy[dict[str, str]]] = {
            "/webhooks/twilio/status": st.fixed_dictionaries(
                {},
                optional={
                    "MessageSid": sid | st.text(max_size=10),
                    "MessageStatus": st.sampled_from(["queued", "sent", "delivered", "failed", "undelivered", "read"])
                    | st.text(max_size=10),
                    "ErrorCode": st.sampled_from(["30003", "21610", ""]) | st.text(max_size=6),
                    "To": st.text(max_size=16),
                },
            ),
            "/webhooks/twilio/inbound": st.fixed_dictionaries(
                {},
                optional={
                    "From": st.sampled_from(["+15550001111", "whatsapp:+15550001111", ""]) | st.text(max_size=16),
                    "Body": st.sampled_from(["STOP", "START", "HELP", " stop ", "yes"]) | st.text(max_size=20),
                    "MessageSid": sid,
                    "To": st.sampled_from(["whatsapp:+15005550006", "+15005550006"]) | st.text(max_size=16),
                },
            ),
        }
        for path, form_strategy in forms.items():

            @given(form=form_strategy.map(lambda f: {k: v.replace("\x00", "") for k, v in f.items()}))
            @settings(max_examples=6 * FUZZ_SCALE, phases=[Phase.generate], **FUZZ_SETTINGS)
            def twilio_form(form: dict[str, str]) -> None:
                status, body = post(path, form, twilio_signed(path, form))  # noqa: B023 - run in the same loop iteration
                tally(path, status)  # noqa: B023 - run in the same loop iteration
                assert status < 500, f"{path} {form} -> {status} {body}"  # noqa: B023 - run in the same loop iteration

            twilio_form()

    await asyncio.to_thread(run_all)
    print(f"\nwebhooks: {sum(sum(s.values()) for s in statuses.values())} deliveries, {json.dumps(statuses)}")
    assert set(STRIPE_EVENTS) <= set(statuses)


async def test_no_workflow_started_during_the_fuzz_had_a_failed_workflow_task(
    dev_env: WorkflowEnvironment, api_settings: Settings
) -> None:
    """Last in the module: every workflow the fuzz started (on this module's queues), its history.

    One cause is not the workflow's code failing and is counted apart: UNHANDLED_COMMAND, the
    server refusing a task that completes the workflow because a signal or update arrived while it
    ran (the task runs again with it). Every other cause (an exception in workflow code, a
    nondeterminism, a payload the worker could not decode...) fails the test."""
    queues = (api_settings.task_queue, api_settings.messaging_task_queue)
    query = " OR ".join(f"TaskQueue = '{q}'" for q in queues)
    seen, failed, raced = 0, [], []
    async for execution in dev_env.client.list_workflows(f"({query}) AND StartTime > '{STARTED.isoformat()}'"):
        seen += 1
        if seen > 500 * FUZZ_SCALE:
            break
        history = await dev_env.client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        for event in history.events:
            if event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                continue
            attributes = event.workflow_task_failed_event_attributes
            story = [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events]
            found = (execution.workflow_type, execution.id, str(attributes), story)
            if attributes.cause == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND:
                raced.append(found)
            else:
                failed.append(found)
    print(
        f"\nworkflows started during the fuzz: {seen}; failed workflow tasks: {len(failed)};"
        f" completions refused for a signal that arrived meanwhile (UNHANDLED_COMMAND): {len(raced)}"
    )
    for workflow_type, workflow_id, _, story in raced:
        print(f"  {workflow_type} {workflow_id}: {' '.join(story)}")
    assert not failed, failed
