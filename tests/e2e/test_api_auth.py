"""Who may call what: every route refuses a missing or revoked key (401) and a key without its
scope (403), as problem+json; the committed OpenAPI document is the app's; health and readiness."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.database import create_engine
from config.settings import Settings
from tests.e2e.api_harness import api_settings, assert_problem, http, new_key, running_workers  # noqa: F401 - pytest fixtures, taken as test arguments
from workers.api.app import create_app, openapi_document
from workers.api.auth import SCOPES, revoke_key

DOCUMENT = Path(__file__).parents[2] / "docs" / "openapi.json"
OPEN_ROUTES = {"/healthz", "/readyz", "/pay/{token}", "/manage/{token}"}  # the token is the capability


def routes() -> list[tuple[str, str, str | None]]:
    """(method, path with ids filled in, the scope it needs) for every authenticated route."""
    found = []
    for path, operations in openapi_document()["paths"].items():
        if path in OPEN_ROUTES:
            continue
        filled = re.sub(r"\{company_id\}", "acme", re.sub(r"\{[a-z_]+\}", "1", path))
        for method in operations:
            found.append((method.upper(), filled, path))
    return found


DIRECTORY_PATHS = {"retailers", "shop-orders", "companies", "customers"}
"""The directory's routes (issue #34): at the top level, named by what they hold."""


def needed_scope(method: str, template: str) -> str:
    family = template.split("/")[2]
    if family == "event-subscriptions":  # the events family's other collection
        family = "events"
    if template == "/v1/orders/validate":
        return "orders:read"
    if template == "/v1/shop-orders/{external_id}/checkout-started":
        return "orders:write"  # starts the same clock as /v1/orders/{order_id}/checkout-started
    if family in DIRECTORY_PATHS:
        family = "directory"
    return f"{family}:{'read' if method == 'GET' else 'write'}"


async def test_every_route_is_401_without_a_key_or_with_a_bad_or_revoked_one(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine, "orders:read", name="soon-revoked")
    await revoke_key(engine, "soon-revoked")
    for method, path, _ in routes():
        for auth in ({}, {"Authorization": "Bearer jk_not-a-key"}, headers):
            response = await http.request(method, path, json={}, headers=auth)
            body = assert_problem(response, 401)
            assert "API key" in body["detail"], (method, path, body)


async def test_every_route_is_403_for_a_key_without_its_scope(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    for method, path, template in routes():
        scope = needed_scope(method, template)
        others = [s for s in SCOPES if s != scope]
        response = await http.request(method, path, json={}, headers=await new_key(engine, *others))
        body = assert_problem(response, 403)
        assert scope in body["detail"], (method, path, body)


async def test_the_key_is_stored_hashed_and_its_use_is_recorded(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = await new_key(engine, "credit:read", name="hash-check")
    key = headers["Authorization"].removeprefix("Bearer ")
    response = await http.get("/v1/credit/risk", headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT key_hash, prefix, last_used_at FROM api_keys WHERE name = 'hash-check'"))
        ).one()
    assert (
        key not in row.key_hash and row.key_hash != key and key.startswith(row.prefix) and row.last_used_at is not None
    )


async def test_the_committed_openapi_document_is_the_apps(http: httpx.AsyncClient) -> None:
    served = (await http.get("/openapi.json")).json()
    committed = json.loads(DOCUMENT.read_text())
    assert served == committed, (
        "docs/openapi.json is stale: regenerate it with `.venv/bin/python -m workers.api.app > docs/openapi.json`"
    )
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # The page's scripts come from this API, not a CDN a shop's network may not reach.
    scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', docs.text)
    assert scripts and all(url.startswith("/") for url in scripts), scripts
    for url in scripts:
        asset = await http.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url


async def test_health_and_readiness_answer_without_a_key(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "temporal": "ok", "database": "ok"}


async def test_a_malformed_request_names_the_field_at_fault(http: httpx.AsyncClient, engine: AsyncEngine) -> None:
    headers = await new_key(engine)
    body = assert_problem(await http.get("/v1/credit/risk?limit=0", headers=headers), 422, "query.limit")
    assert body["errors"][0]["field"] == "query.limit"
    assert_problem(await http.get("/v1/orders/abc", headers=headers), 422, "path.order_id")
    assert_problem(
        await http.post(
            "/v1/credit/payments",
            headers=headers,
            content=b"{not json",
        ),
        422,
    )
    assert_problem(await http.get("/v1/nowhere", headers=headers), 404)


async def test_a_lost_database_connection_is_one_503_and_the_retry_goes_through(
    dev_env: WorkflowEnvironment, engine: AsyncEngine, database_url: str, api_settings: Settings
) -> None:
    """The API's pool does not ping before each use (a round trip per request): after the
    database drops a connection (a restart, a failover), the request that meets it answers 503
    problem+json with Retry-After, and the next one gets a fresh connection."""
    api_engine = create_engine(database_url, pool_size=1, pre_ping=False)
    app = create_app(api_settings, api_engine, dev_env.client)
    headers = await new_key(engine, "credit:read")
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60
        ) as client:
            assert (await client.get("/v1/credit/risk", headers=headers)).status_code == 200
            async with api_engine.connect() as conn:  # the pool's one connection
                backend = await conn.scalar(text("SELECT pg_backend_pid()"))
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            lost = await client.get("/v1/credit/risk", headers=headers)
            assert_problem(lost, 503)
            assert lost.headers["retry-after"] == "1"
            assert (await client.get("/v1/credit/risk", headers=headers)).status_code == 200
    finally:
        await api_engine.dispose()
