"""Traces (issue #36): one checkout, from the API request through its workflow and activities to the
Twilio call, is one trace whose spans hang off each other; the provider spans say which call and how
it ended, never a phone number, a body or a token.

The real stack: the product's workers (every family) on the Temporal dev server, the API in process
(httpx's ASGI transport), the Twilio emulator and the Stripe sandbox; tracing started the way the
processes start it (`workers/tracing.py`), its spans kept in memory instead of sent over OTLP.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.payments.gateway import StripeGateway
from config.settings import Settings
from devtools.stripe_sandbox import StripeSandbox
from devtools.twilio_emulator import TwilioEmulator
from schemas import ids
from schemas.orders import OrderSweepRequest
from tests.activities.test_orders import new_order, sent_to
from tests.e2e.api_harness import API_BASE, new_key, stack_settings
from tests.e2e.test_schedules import JOBCTL
from workers import tracing
from workers.api.app import create_app
from workers.log import configure_logging
from workers.temporal_client import connect
from workers.webhook_server import serve_webhooks
from workers.worker import build_workers
from workflows.orders import OrderExpirySweepWorkflow


@pytest.fixture(scope="module")
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """Tracing on for this module, as `jobctl api` and `jobctl worker` start it, into memory."""
    exporter = InMemorySpanExporter()
    provider = tracing.start_tracing(Settings(), "jobctl-test", exporter=exporter)
    assert provider is not None
    yield provider, exporter
    tracing.stop_tracing()  # later modules' clients and apps are not traced


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def traced_settings(emulator: TwilioEmulator, sandbox: StripeSandbox, dev_env: WorkflowEnvironment) -> Settings:
    return stack_settings(
        emulator,
        sandbox,
        order_followup_after=timedelta(seconds=1),  # the follow-up (the Twilio call) a second after checkout
        temporal_address=dev_env.client.service_client.config.target_host,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def traced_client(spans: object, traced_settings: Settings) -> Client:
    """The processes' own `connect`: with tracing on, the client carries the SDK's TracingInterceptor."""
    return await connect(traced_settings)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(
    traced_client: Client, traced_settings: Settings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    async with AsyncExitStack() as stack:
        for worker in build_workers(traced_client, traced_settings, engine, resources=stack):
            await stack.enter_async_context(worker)
        app = create_app(traced_settings, engine, traced_client)
        await stack.enter_async_context(app.router.lifespan_context(app))
        yield await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API_BASE, timeout=60)
        )


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict]]]:
    """The JSON lines the processes write (workers/log.py), kept for the test to read."""
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    configure_logging("console", "WARNING")


def finished(spans: tuple[TracerProvider, InMemorySpanExporter]) -> list[ReadableSpan]:
    provider, exporter = spans
    assert provider.force_flush(10_000)
    return list(exporter.get_finished_spans())


def ancestry(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    """`span`, its parent, the parent's parent, ... up to the root (as far as the spans go)."""
    chain = [span]
    while chain[-1].parent is not None and chain[-1].parent.span_id in by_id:
        chain.append(by_id[chain[-1].parent.span_id])
    return chain


def attribute_values(spans: list[ReadableSpan]) -> str:
    return " ".join(f"{span.name} {dict(span.attributes or {})}" for span in spans)


async def test_a_checkout_is_one_trace_from_the_api_request_through_its_workflow_to_the_twilio_send(
    api: httpx.AsyncClient,
    traced_client: Client,
    engine: AsyncEngine,
    emulator: TwilioEmulator,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    log_lines: Callable[[], list[dict]],
) -> None:
    order_id, _, phone = await new_order(engine)
    headers = await new_key(engine, "orders:write")
    response = await api.post(f"/v1/orders/{order_id}/checkout-started", headers=headers)
    assert response.status_code == 200, response.text
    try:
        async with asyncio.timeout(30):
            while not await sent_to(emulator, phone):  # the follow-up, a second after the checkout
                await asyncio.sleep(0.2)
            while not any(s.name == "twilio messages.create" for s in finished(spans)):
                await asyncio.sleep(0.1)  # the activity's span ends once its Twilio call returned
    finally:
        await traced_client.get_workflow_handle(ids.pending_order(order_id)).terminate("test done")

    recorded = finished(spans)
    by_id = {s.context.span_id: s for s in recorded}
    [request] = [s for s in recorded if s.name == "POST /v1/orders/{order_id}/checkout-started"]
    assert request.kind == SpanKind.SERVER and request.parent is None
    assert request.attributes and request.attributes.get("http.route") == "/v1/orders/{order_id}/checkout-started"
    [send] = [
        s for s in recorded if s.name == "twilio messages.create" and s.context.trace_id == request.context.trace_id
    ]
    # each the parent of the next: the request, the workflow's start (its run and its activities hang
    # off it: the workflow's own spans end as they are made), the activity's schedule and execution,
    # the call to Twilio
    chain = [s.name for s in reversed(ancestry(send, by_id))]
    assert chain == [
        request.name,
        "StartWorkflow:PendingOrderWorkflow",
        "StartActivity:send_message",
        "RunActivity:send_message",
        "twilio messages.create",
    ], chain
    start = ancestry(send, by_id)[-2]
    runs = [s.name for s in recorded if s.parent is not None and s.parent.span_id == start.context.span_id]
    assert "RunWorkflow:PendingOrderWorkflow" in runs, runs
    assert send.kind == SpanKind.CLIENT and send.status.status_code != StatusCode.ERROR
    assert send.attributes is not None
    assert send.attributes["peer.service"] == "twilio" and send.attributes["twilio.channel"] == "sms"
    assert str(send.attributes["twilio.message_sid"]).startswith("SM")
    # nothing in the trace names the recipient or says what the message said
    trace = [s for s in recorded if s.context.trace_id == request.context.trace_id]
    digits = phone.lstrip("+")
    assert digits not in attribute_values(trace)
    body = (await sent_to(emulator, phone))[0]["body"]
    assert body not in attribute_values(trace)
    # the activity's log line names the trace and its span: from a log line to the whole trace
    [sent] = [line for line in log_lines() if line["event"] == "message.sent"]
    assert sent["trace_id"] == format(request.context.trace_id, "032x")
    assert sent["span_id"] == format(send.parent.span_id if send.parent else 0, "016x")


async def test_a_pay_links_token_never_reaches_a_span(
    api: httpx.AsyncClient, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    token = f"tok{uuid.uuid4().hex}"
    response = await api.get(f"/pay/{token}?utm_source=sms")
    assert response.status_code >= 400  # no such link
    [request] = [s for s in finished(spans) if s.name == "GET /pay/{token}"]
    assert request.attributes and request.attributes.get("http.route") == "/pay/{token}"
    recorded = attribute_values(finished(spans))
    assert token not in recorded and "utm_source" not in recorded


async def test_each_stripe_call_is_a_span_saying_how_it_ended(
    spans: tuple[TracerProvider, InMemorySpanExporter], stripe_gateway: StripeGateway, engine: AsyncEngine
) -> None:
    _, retailer_id, _ = await new_order(engine)
    await stripe_gateway.ensure_customer("retailer", retailer_id)
    with pytest.raises(ApplicationError) as refused:
        await stripe_gateway.charge(f"ch_missing{uuid.uuid4().hex[:8]}")
    assert refused.value.type == "StripeInvalidRequest"

    recorded = finished(spans)
    [created] = [s for s in recorded if s.name == "stripe ensure_customer"]
    assert created.kind == SpanKind.CLIENT and created.status.status_code != StatusCode.ERROR
    [missing] = [s for s in recorded if s.name == "stripe charge"]
    assert missing.status.status_code == StatusCode.ERROR
    assert missing.attributes is not None
    assert missing.attributes["error.type"] == "StripeInvalidRequest"
    assert missing.attributes["http.response.status_code"] == 404


async def test_jobctl_api_sends_its_spans_to_the_configured_collector_over_otlp(
    dev_env: WorkflowEnvironment, database_url: str
) -> None:
    """The process's own start and stop (`jobctl api`, SIGTERM): spans reach an OTLP/HTTP endpoint
    (a stand-in collector), under the process's service name, the last batch sent at exit."""
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(collector)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "DATABASE_URL": database_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{runner.addresses[0][1]}",
    }
    process = await asyncio.create_subprocess_exec(
        JOBCTL, "api", "--port", "0", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        url = line.split()[2]  # "API on http://127.0.0.1:NNNN (OpenAPI ...)"
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await runner.cleanup()

    exported = [
        (resource.resource, span)
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    [(resource, health)] = [(r, s) for r, s in exported if s.name == "GET /healthz"]
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "jobctl-api"
    assert health.kind == health.SPAN_KIND_SERVER


async def test_a_workflow_in_the_sandbox_runs_traced_and_continues_its_callers_trace(
    api: httpx.AsyncClient,
    traced_client: Client,
    traced_settings: Settings,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """The checkout's clock runs outside the sandbox; the sweep runs inside it, where the interceptor
    must not break a workflow task (a sandbox violation would fail the run's first task)."""
    handle = await traced_client.start_workflow(
        OrderExpirySweepWorkflow.run,
        OrderSweepRequest(page_size=10, messaging_task_queue=traced_settings.messaging_task_queue),
        id=f"order-expiry-sweep/trace-{uuid.uuid4().hex[:8]}",
        task_queue=traced_settings.task_queue,
    )
    await asyncio.wait_for(handle.result(), 30)

    recorded = finished(spans)
    [start] = [s for s in recorded if s.name == "StartWorkflow:OrderExpirySweepWorkflow"]
    under = {s.name for s in recorded if s.parent is not None and s.parent.span_id == start.context.span_id}
    assert "RunWorkflow:OrderExpirySweepWorkflow" in under, under
    assert any(name.startswith("StartActivity:") for name in under), under


async def test_each_webhook_callback_is_a_server_span_named_by_its_route(
    traced_settings: Settings, engine: AsyncEngine, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    settings = traced_settings.model_copy(
        update={"stripe_webhook_secret": SecretStr("whsec_tracing"), "webhook_base_url": "http://hooks.example"}
    )
    async with serve_webhooks(settings, engine, "127.0.0.1", 0) as url, httpx.AsyncClient(base_url=url) as hooks:
        unsigned = await hooks.post("/webhooks/stripe", content=b"{}")
        assert unsigned.status_code == 400
    [callback] = [s for s in finished(spans) if s.name == "POST /webhooks/stripe"]
    assert callback.kind == SpanKind.SERVER and callback.attributes is not None
    assert callback.attributes["http.response.status_code"] == 400
    assert callback.status.status_code != StatusCode.ERROR  # the caller's fault, not ours
