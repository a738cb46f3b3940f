"""Limits at the API's doors (issue #33): a body above API_MAX_BODY_BYTES is 413 before any key
lookup, an anonymous body is 401 unread, JSON nested 200k deep is 400 (with or without an
Idempotency-Key), a key bound to a company gets nothing of another company on any route, a pay link
opened over and over is 429 and costs one Stripe retrieve, and an Idempotency-Key past its
retention is new again and deleted by the retention job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.credit.paylinks import debits_fingerprint, new_token
from activities.retention import RetentionActivities
from config.settings import Settings
from devtools.stripe_sandbox import StripeSandbox
from schemas.retention import RetentionPage
from tests.activities.test_churn import new_member
from tests.activities.test_credit import new_debit, new_retailer
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    API_BASE,
    api_settings,
    assert_problem,
    bound_key_by_hand,
    http,
    new_key,
    running_workers,
)
from workers.api.app import create_app, openapi_document
from workers.api.auth import create_key
from workers.api.server import serve_api

OPEN_ROUTES = {"/healthz", "/readyz", "/pay/{token}", "/manage/{token}"}
TWO_MB = b'{"x":"' + b"a" * 2_000_000 + b'"}'
DEEP = b"[" * 200_000 + b"]" * 200_000


def operations() -> list[tuple[str, str]]:
    """(method, path template) of every authenticated operation in the OpenAPI document."""
    return [
        (method.upper(), path)
        for path, ops in openapi_document()["paths"].items()
        if path not in OPEN_ROUTES
        for method in ops
    ]


async def test_a_body_above_the_limit_is_413_before_the_key_is_looked_up(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine, "credit:write")
    for auth in ({}, {"Authorization": "Bearer jk_not-a-key"}, headers):
        assert_problem(await http.post("/v1/credit/payments", content=TWO_MB, headers=auth), 413)
    async with engine.connect() as conn:  # authenticate() touches a key's first use: it never ran
        used = await conn.scalar(
            text("SELECT last_used_at FROM api_keys WHERE key_hash = encode(sha256(CAST(:k AS bytea)), 'hex')"),
            {"k": headers["Authorization"].removeprefix("Bearer ")},
        )
    assert used is None


async def _raw_post(url: str, headers: str, chunks: list[bytes], wait_s: float) -> bytes:
    """A chunked POST over a socket: send the headers and `chunks`, then read the answer (never the
    rest of a body): the server must answer without waiting for a body that never ends."""
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST /v1/credit/payments HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n{headers}\r\n".encode()
        )
        for chunk in chunks:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            try:
                await writer.drain()
            except ConnectionError:
                break  # the server stopped reading: its answer is waiting
        return await asyncio.wait_for(reader.read(4096), wait_s)
    finally:
        writer.close()


async def test_an_anonymous_body_is_401_unread_and_a_streamed_one_is_cut_at_the_limit(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, api_settings: Settings
) -> None:
    headers = await new_key(engine, "credit:write")
    async with serve_api(api_settings, engine, dev_env.client, "127.0.0.1", 0) as url:
        # The body never ends: a 401 proves the server did not wait to read it.
        anonymous = await _raw_post(url, "", [b"[" * 1000], wait_s=5)
        assert anonymous.startswith(b"HTTP/1.1 401"), anonymous[:200]
        bad = await _raw_post(url, "Authorization: Bearer jk_nope\r\n", [b"[" * 1000], wait_s=5)
        assert bad.startswith(b"HTTP/1.1 401"), bad[:200]
        # A valid key's streamed body is counted as it comes: refused once past 1 MB, not buffered.
        streamed = await _raw_post(
            url, f"Authorization: {headers['Authorization']}\r\n", [b" " * 65536] * 40, wait_s=10
        )
        assert streamed.startswith(b"HTTP/1.1 413") and b"application/problem+json" in streamed, streamed[:300]


async def test_json_nested_200k_deep_is_400_on_every_post_with_and_without_an_idempotency_key(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine)
    writes = [(m, re.sub(r"\{[a-z_]+\}", "1", p)) for m, p in operations() if m in ("POST", "PUT")]
    assert len(writes) > 10
    for method, path in writes:
        for extra in ({}, {"Idempotency-Key": f"deep-{uuid.uuid4().hex}"}):
            response = await http.request(
                method, path, content=DEEP, headers=headers | extra | {"Content-Type": "application/json"}
            )
            assert_problem(response, 400, "body")


async def test_a_company_bound_key_gets_nothing_of_another_company_on_any_route(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Walks every operation of the OpenAPI document with a key bound to one company holding every
    scope (as a key created before creation refused that would): 403 on every route whose data has
    no company; on churn's, another company's objects are 403 (or 404) and a list holds only its own;
    on the events', a list holds only its company's events and subscriptions."""
    ours, _, _ = await new_member(engine, offsets=[30])
    theirs, their_member, _ = await new_member(engine, offsets=[30])
    key = await bound_key_by_hand(engine, ours)
    async with engine.begin() as conn:
        their_case = await conn.scalar(
            text(
                "INSERT INTO recovery_cases (company_id, membership_id, status, trigger)"
                " VALUES (:c, :m, 'OPEN', 'manual') RETURNING id"
            ),
            {"c": theirs, "m": their_member},
        )
    own = (await http.get(f"/v1/churn/companies/{ours}/settings", headers=key)).json()
    valid_settings = {k: v for k, v in own.items() if k != "company_id"}  # a body that validates
    walked = 0
    for method, template in operations():
        path = template.replace("{company_id}", theirs).replace("{case_id}", str(their_case))
        path = re.sub(r"\{[a-z_]+\}", "1", path)
        body = {"/v1/churn/cases": {"membership_id": their_member, "company_id": theirs}}.get(template, {})
        if method == "PUT":
            body = valid_settings
        response = await http.request(method, path, json=body, headers=key)
        walked += 1
        if template.startswith(("/v1/events", "/v1/event-subscriptions")):  # confined like churn's
            if response.is_success:
                assert method == "GET", (method, path, response.text)
                listed = response.json()
                items = listed if isinstance(listed, list) else listed["items"]
                assert {i["company_id"] for i in items} <= {ours}
            else:
                assert response.status_code in (404, 422), (method, path, response.status_code, response.text)
            continue
        if not template.startswith("/v1/churn/"):
            assert_problem(response, 403)
            continue
        if response.is_success:
            assert method == "GET" and template == "/v1/churn/cases", (method, path, response.text)
            assert {c["company_id"] for c in response.json()["items"]} <= {ours}
            continue
        assert response.status_code in (403, 404), (method, path, response.status_code, response.text)
    assert walked == len(operations()) > 20


async def _stripe_retrieves(sandbox: StripeSandbox) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox.url}/_sandbox/stats") as response:
        stats = await response.json()
    return sum(
        n for endpoint, n in stats["by_endpoint"].items() if endpoint.startswith("GET ") and "sessions" in endpoint
    )


@contextlib.asynccontextmanager
async def _pay_api(app: Any, address: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(address, 4321))
    async with httpx.AsyncClient(transport=transport, base_url=API_BASE, timeout=60) as client:
        yield client


async def test_a_hammered_pay_link_is_429_with_retry_after_and_costs_one_stripe_retrieve(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, api_settings: Settings, sandbox: StripeSandbox
) -> None:
    shop, _ = await new_retailer(engine)
    owed = await new_debit(engine, shop, "9.00", date.today() + timedelta(days=1200))
    token = new_token()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO payment_links (retailer_id, token, url, fingerprint, amount, currency, debit_ids)"
                " VALUES (:r, :t, :u, :f, 9, 'usd', ARRAY[CAST(:d AS bigint)])"
            ),
            {"r": shop, "t": token, "u": f"{API_BASE}/pay/{token}", "f": debits_fingerprint([owed], "usd"), "d": owed},
        )
    app = create_app(api_settings, engine, dev_env.client)  # its own throttles, fresh
    async with app.router.lifespan_context(app), _pay_api(app, "10.0.0.1") as browser:
        first = await browser.get(f"/pay/{token}")  # makes the session: no retrieve
        assert first.status_code == 303, first.text
        before = await _stripe_retrieves(sandbox)
        answers = [await browser.get(f"/pay/{token}") for _ in range(40)]
        answers += await asyncio.gather(*(browser.get(f"/pay/{token}") for _ in range(20)))
        retrieves = await _stripe_retrieves(sandbox) - before
        statuses = [a.status_code for a in answers]
        assert statuses.count(303) == api_settings.pay_link_token_per_minute - 1, statuses  # the first took one
        throttled = [a for a in answers if a.status_code == 429]
        assert len(throttled) == 60 - statuses.count(303)
        assert_problem(throttled[0], 429)
        assert all(1 <= int(a.headers["retry-after"]) <= 60 for a in throttled)
        page = await browser.get(f"/pay/{token}", headers={"Accept": "text/html"})
        assert page.status_code == 429 and "retry-after" in page.headers and "Too many" in page.text
        assert retrieves <= 1, retrieves  # all within PAY_LINK_STRIPE_CACHE_SECONDS of the one
        # Another address, guessing tokens: its own throttle, above PAY_LINK_ADDRESS_PER_MINUTE.
        async with _pay_api(app, "10.0.0.2") as guesser:
            guessed = [
                (await guesser.get(f"/pay/{new_token()}")).status_code
                for _ in range(api_settings.pay_link_address_per_minute + 30)
            ]
        # Refilled at 2 a second meanwhile: a few more than the burst get through, then 429s.
        assert (
            api_settings.pay_link_address_per_minute <= guessed.count(404) < len(guessed) and guessed.count(429) >= 20
        )


async def _remember(engine: AsyncEngine, key_id: int, key: str, age: timedelta) -> None:
    """A stored answer to `key`, `age` old: `{"old": true}` for any request (hash 'x')."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO api_idempotency_keys (api_key_id, idempotency_key, request_hash, status_code,"
                " response_body, created_at) VALUES (:k, :i, 'x', 200, CAST('{\"old\": true}' AS jsonb), now() - :age)"
            ),
            {"k": key_id, "i": key, "age": age},
        )


async def test_an_idempotency_key_past_its_retention_is_new_and_the_retention_job_deletes_it(
    http: httpx.AsyncClient, engine: AsyncEngine, api_settings: Settings
) -> None:
    name = f"idem-{uuid.uuid4().hex[:8]}"
    secret, key_id = await create_key(engine, name, ["credit:write"])
    headers = {"Authorization": f"Bearer {secret}"}
    retention = timedelta(hours=api_settings.idempotency_retention_hours)
    await _remember(engine, key_id, "kept", retention - timedelta(hours=1))
    await _remember(engine, key_id, "expired", retention + timedelta(minutes=1))
    await _remember(engine, key_id, "gone", retention + timedelta(days=3))
    # Within its retention a key's other request is 422; past it, the key is new: the request runs.
    path, body = "/v1/credit/retailers/999999999/pause", {"reason": "issue 33"}
    assert_problem(await http.post(path, json=body, headers=headers | {"Idempotency-Key": "kept"}), 422)
    assert_problem(await http.post(path, json=body, headers=headers | {"Idempotency-Key": "expired"}), 404)

    deleted = await RetentionActivities(engine).delete_idempotency_keys(
        RetentionPage(older_than=datetime.now(UTC) - retention, limit=500)
    )
    assert deleted >= 1
    async with engine.connect() as conn:
        left = (
            await conn.scalars(
                text("SELECT idempotency_key FROM api_idempotency_keys WHERE api_key_id = :k"), {"k": key_id}
            )
        ).all()
    assert left == ["kept"]  # "expired" was released by its 404, "gone" deleted


async def test_a_claim_left_by_a_killed_request_is_409_then_taken_over_after_the_abandoned_seconds(
    http: httpx.AsyncClient, engine: AsyncEngine, api_settings: Settings
) -> None:
    """An API process killed mid-request leaves its key claimed with no answer: a retry is 409
    `idempotency_key_in_use` until IDEMPOTENCY_ABANDONED_SECONDS, then runs again."""
    from starlette.requests import Request

    from workers.api.idempotency import request_hash

    secret, key_id = await create_key(engine, f"idem-{uuid.uuid4().hex[:8]}", ["credit:write"])
    headers = {"Authorization": f"Bearer {secret}"}
    path, body = "/v1/credit/retailers/999999999/pause", {"reason": "issue 36"}
    digest = request_hash(
        Request({"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": []}),
        json.dumps(body).encode(),
    )
    abandoned = timedelta(seconds=api_settings.idempotency_abandoned_seconds)
    async with engine.begin() as conn:
        for key, age in (("running", abandoned - timedelta(seconds=30)), ("killed", abandoned + timedelta(seconds=1))):
            await conn.execute(
                text(
                    "INSERT INTO api_idempotency_keys (api_key_id, idempotency_key, request_hash, created_at)"
                    " VALUES (:k, :i, :h, now() - :age)"
                ),
                {"k": key_id, "i": key, "h": digest, "age": age},
            )
    running = await http.post(path, json=body, headers=headers | {"Idempotency-Key": "running"})
    assert assert_problem(running, 409)["code"] == "idempotency_key_in_use"
    # The killed request's claim is taken over: the request runs (the retailer is unknown: 404).
    assert_problem(await http.post(path, json=body, headers=headers | {"Idempotency-Key": "killed"}), 404)
