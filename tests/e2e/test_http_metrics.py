"""Metrics and request ids on every HTTP process (issue #36): the API and the webhook receiver
count requests by route *template*, never by id; every problem+json body and response carries the
request id; the API's business gauges follow the database; the receiver answers /healthz, /readyz."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest_asyncio
import structlog
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings
from tests.e2e.api_harness import (  # noqa: F401 - pytest fixtures, taken as test arguments
    api_settings,
    assert_problem,
    http,
    new_key,
    running_workers,
)
from workers.api.app import create_app
from workers.webhooks import create_app as create_webhook_app

# What an id looks like in a label value: a UUID, a long hex or digit run (Stripe/Twilio ids, tokens,
# phone numbers), a provider id prefix.
ID_SHAPES = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-|[0-9a-f]{16,}|\+?\d[\d \-]{6,}\d|^(?:cs|pi|ch|cus|evt|SM|MM)_?[A-Za-z0-9]{8,}"
)
# The only id-like label: `company` on jobctl_churn_open_cases is a tenant's short slug, one per
# tenant (bounded by the businesses using jobctl, not by their members).
TENANT_LABELS = {("jobctl_churn_open_cases", "company")}


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def value(exposition: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    return sum(
        v
        for (n, ls), v in samples(exposition).items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def assert_bounded(exposition: str, ids: list[str], configured: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """No label value looks like an id or carries one of `ids`; `configured` are values set by
    configuration (this test's random task queue names)."""
    for (name, labels), _ in samples(exposition).items():
        for label, text_ in labels:
            if (name, label) in TENANT_LABELS or label == "le" or text_ in configured:
                continue
            assert not ID_SHAPES.search(text_), f"{name}{{{label}={text_!r}}} looks like an id"
            assert not any(i in text_ for i in ids), f"{name}{{{label}={text_!r}}} carries an id"


async def test_requests_are_counted_by_route_template_never_by_id(
    http: httpx.AsyncClient, engine: AsyncEngine, api_settings: Settings
) -> None:
    headers = await new_key(engine, "directory:read", "directory:write")
    ids: list[str] = []

    async def exercise(n: int) -> None:
        for _ in range(n):
            shop = f"shop-{uuid.uuid4().hex[:12]}"
            phone = f"+1415555{uuid.uuid4().int % 10_000:04d}"
            ids.extend([shop, phone])
            created = await http.put(f"/v1/retailers/{shop}", json={"name": "S", "phone": phone}, headers=headers)
            assert created.status_code == 201, created.text
            assert (await http.get(f"/v1/retailers/{shop}", headers=headers)).status_code == 200
            missing = f"nope-{uuid.uuid4()}"
            ids.append(missing)
            assert (await http.get(f"/v1/retailers/{missing}", headers=headers)).status_code == 404
            assert (await http.get(f"/no/such/{uuid.uuid4()}/{phone}")).status_code == 404
            token = uuid.uuid4().hex
            ids.append(token)
            assert (await http.get(f"/pay/{token}")).status_code == 404

    await exercise(3)
    first = (await http.get("/metrics")).text
    await exercise(6)
    scraped = await http.get("/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    again = scraped.text

    routes = {dict(ls)["route"] for (n, ls) in samples(again) if n == "jobctl_http_requests_total"}
    assert {"/v1/retailers/{external_id}", "/pay/{token}", "unmatched"} <= routes, routes
    assert value(again, "jobctl_http_requests_total", route="/v1/retailers/{external_id}", method="PUT") >= 9
    assert (
        value(
            again, "jobctl_http_requests_total", route="/v1/retailers/{external_id}", method="GET", status_class="4xx"
        )
        >= 9
    )
    assert value(again, "jobctl_http_request_duration_seconds_count", route="/pay/{token}", method="GET") >= 9
    assert_bounded(again, ids, {api_settings.task_queue, api_settings.messaging_task_queue})
    # Twice the requests on twice the ids: not one more HTTP series.
    http_series = {k for k in samples(again) if k[0].startswith("jobctl_http_")}
    assert http_series == {k for k in samples(first) if k[0].startswith("jobctl_http_")} | {
        k for k in http_series if dict(k[1]).get("route") == "/metrics"
    }


async def test_every_answer_carries_the_request_id_and_problems_quote_it(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    headers = await new_key(engine, "directory:read")
    mine = "req-" + uuid.uuid4().hex
    missing = await http.get("/v1/retailers/nobody", headers={**headers, "X-Request-ID": mine})
    body = assert_problem(missing, 404)
    assert missing.headers["x-request-id"] == mine and body["request_id"] == mine

    # The lines logged while answering carry it (the directory's own log line here).
    writer = await new_key(engine, "directory:write")
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        put = await http.put(
            f"/v1/retailers/logged-{uuid.uuid4().hex[:8]}", json={"name": "L"}, headers={**writer, "X-Request-ID": mine}
        )
    assert put.status_code == 201 and put.headers["x-request-id"] == mine
    assert any(line.get("request_id") == mine for line in logs), logs

    # Malformed (spaces, too long): replaced by a new id, never echoed as given.
    for bad in ("has spaces <script>", "x" * 65):
        refused = await http.get("/v1/retailers/nobody", headers={"X-Request-ID": bad})
        body = assert_problem(refused, 401)
        assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"]), refused.headers
        assert body["request_id"] == refused.headers["x-request-id"]

    # None given: a new one, different each time; successful answers carry it too.
    a, b = await http.get("/healthz"), await http.get("/healthz")
    assert a.headers["x-request-id"] != b.headers["x-request-id"]
    too_large = await http.post("/v1/orders", content=b"x" * 2_000_000, headers={"X-Request-ID": mine})
    assert assert_problem(too_large, 413)["request_id"] == mine


async def test_business_gauges_follow_the_database(
    engine: AsyncEngine, dev_env: WorkflowEnvironment, api_settings: Settings
) -> None:
    app = create_app(api_settings, engine, dev_env.client)
    app.state.business_metrics.max_age = 0  # every scrape reads (15 s otherwise)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    before = (await http.get("/metrics")).text
    tag = uuid.uuid4().hex[:10]
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO retailers (name, credit_status) VALUES ('paused', 'PAUSED'), ('active', 'ACTIVE')")
        )
        await conn.execute(
            text(
                "INSERT INTO message_log (idempotency_key, recipient_type, recipient_id, channel, template,"
                " template_version, status, reason, error_code, updated_at) VALUES"
                " (:k1, 'retailer', '1', 'sms', 'credit_paused', 1, 'deferred', 'quiet_hours', NULL, :held_at),"
                " (:k2, 'retailer', '1', 'sms', 'credit_paused', 1, 'failed', 'refused', 21610, now())"
            ),
            {"k1": f"held-{tag}", "k2": f"failed-{tag}", "held_at": datetime.now(UTC) - timedelta(hours=3)},
        )
        await conn.execute(
            text(
                "INSERT INTO processed_webhook_events (provider, event_id, event_type, status)"
                " VALUES ('stripe', :e, 'charge.refunded', 'failed')"
            ),
            {"e": f"evt_{tag}"},
        )
    after = (await http.get("/metrics")).text

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("jobctl_retailers_total") == 2 and delta("jobctl_retailers_paused") == 1
    assert 0 < value(after, "jobctl_retailers_paused_ratio") <= 1
    assert delta("jobctl_messages_held", reason="quiet_hours") == 1
    assert value(after, "jobctl_messages_held_oldest_seconds") >= 3 * 3600 - 60
    assert delta("jobctl_messages_failed", error_code="21610") == 1
    assert delta("jobctl_webhook_events_failed", source="stripe") == 1
    assert value(after, "jobctl_messaging_brake_on") == 0
    assert value(after, "jobctl_business_metrics_up", source="database") == 1
    assert value(after, "jobctl_business_metrics_up", source="temporal") == 1
    names = {n for n, _ in samples(after)}
    for gauge in (
        "jobctl_open_debits",
        "jobctl_order_clocks_pending",
        "jobctl_loyalty_needs_review_items",
        "jobctl_loyalty_needs_review_points",
        "jobctl_task_queue_backlog",
    ):
        assert gauge in names, gauge
    assert {dict(ls)["bucket"] for n, ls in samples(after) if n == "jobctl_open_debits"} >= {"current", "60+"}


@pytest_asyncio.fixture(loop_scope="session")
async def webhooks(engine: AsyncEngine) -> AsyncIterator[str]:
    app = create_webhook_app(engine, stripe_webhook_secret="whsec_test", twilio_auth_token="0" * 32)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_the_webhook_receiver_answers_health_readiness_and_metrics(webhooks: str) -> None:
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await _exercise_webhooks(webhooks)
    # One access line per request (not for the scrape itself), by route template: no phone, no path.
    access = [line for line in logs if line["event"] == "http.request"]
    assert {(line["route"], line["status"]) for line in access} >= {("/webhooks/stripe", 400), ("unmatched", 404)}
    assert all("+1415" not in str(line) for line in logs), logs
    refused = [line for line in logs if line["event"] == "webhook.refused"]
    assert refused and refused[0]["request_id"].startswith("hook-"), refused  # the handler's own lines too


async def _exercise_webhooks(webhooks: str) -> None:
    async with httpx.AsyncClient(base_url=webhooks) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["database"] == "ok"
        mine = "hook-" + uuid.uuid4().hex
        refused = await client.post("/webhooks/stripe", content=b"{}", headers={"X-Request-ID": mine})
        assert refused.status_code == 400 and refused.headers["x-request-id"] == mine
        phone_path = await client.get("/webhooks/+14155550123")
        assert phone_path.status_code == 404 and re.fullmatch(r"[0-9a-f]{32}", phone_path.headers["x-request-id"])
        scraped = (await client.get("/metrics")).text
    assert (
        value(
            scraped,
            "jobctl_http_requests_total",
            process="webhooks",
            route="/webhooks/stripe",
            method="POST",
            status_class="4xx",
        )
        == 1
    )
    assert value(scraped, "jobctl_http_requests_total", process="webhooks", route="unmatched") == 1
    assert value(scraped, "jobctl_http_request_duration_seconds_count", route="/readyz") == 1
    assert_bounded(scraped, ["+14155550123"])
