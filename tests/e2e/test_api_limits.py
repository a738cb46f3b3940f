"""Limits at the API's doors (issue #33): a body above API_MAX_BODY_BYTES is 413 before any key
lookup, an anonymous body is 401 unread, JSON nested 200k deep is 400 (with or without an
Idempotency-Key), and a key bound to a company gets nothing of another company on any route."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings
from tests.activities.test_churn import new_member
from tests.e2e.api_harness import api_settings, assert_problem, bound_key_by_hand, http, new_key, running_workers  # noqa: F401 - pytest fixtures, taken as test arguments
from workers.api.app import openapi_document
from workers.api.server import serve_api

OPEN_ROUTES = {"/healthz", "/readyz", "/pay/{token}"}
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
    no company; on churn's, another company's objects are 403 (or 404) and a list holds only its own."""
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
        if not template.startswith("/v1/churn/"):
            assert_problem(response, 403)
            continue
        if response.is_success:
            assert method == "GET" and template == "/v1/churn/cases", (method, path, response.text)
            assert {c["company_id"] for c in response.json()["items"]} <= {ours}
            continue
        assert response.status_code in (403, 404), (method, path, response.status_code, response.text)
    assert walked == len(operations()) > 20
