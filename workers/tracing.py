"""Traces (issue #36): OpenTelemetry spans from the API, the webhook receiver and the workers, exported
over OTLP/HTTP to a collector (Jaeger, Tempo, an OpenTelemetry Collector) when one is configured.

Off by default. A process (`jobctl worker`, `jobctl api`, `jobctl webhooks`) calls `start_tracing`
at start: with OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set it installs
a tracer provider whose spans go out in batches, and from then on

- `workers/temporal_client.py`'s `connect` puts the SDK's `TracingInterceptor` on the client, so
  every workflow the process starts or signals carries the trace in its headers and the workers
  (which take the client's interceptors) continue it: `StartWorkflow` -> `RunWorkflow` ->
  `StartActivity` -> `RunActivity`, one trace from an API request to the activity;
- `instrument_api` wraps the FastAPI app (`opentelemetry-instrumentation-fastapi`): a server span
  per request, named by its route (`POST /v1/orders/{order_id}/checkout-started`);
- the provider calls are spans of their own (`activities/tracing.py`: Twilio, Stripe);
- every log line written while a span is current carries its `trace_id` and `span_id`
  (`workers/log.py`).

Workflow code runs in the SDK's sandbox: the interceptor is built for it (spans made outside
through an extern, none while replaying), so workflows need no change. Without a provider none of
this is installed: no interceptor, no middleware, and `activities/tracing.py`'s spans are no-ops.

What leaves the process is bounded: route templates, not paths (a `/pay/{token}` link's token
never reaches a span), no query strings, no headers, no client address; Temporal's spans name
workflow and activity types, never their inputs; the providers' spans say which call and how it
ended, never a phone number or a body.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

# The SDK and the instrumentations are imported when tracing starts: `connect` and the API import
# this module, and a `jobctl` command that traces nothing should not pay for them.
if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span
    from temporalio.client import Interceptor

    from config.settings import Settings

log = structlog.get_logger(__name__)

_provider: TracerProvider | None = None

# Attributes the HTTP instrumentation sets from the request that may carry a token (a pay or manage
# link's path), a query string or the caller's address: each is replaced by the route or removed.
_URL_ATTRIBUTES = ("http.target", "http.url", "url.path", "url.full")
_DROPPED_ATTRIBUTES = ("url.query", "net.peer.ip", "net.peer.port", "client.address", "client.port")


def traces_endpoint(settings: Settings) -> str | None:
    """Where spans go: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else OTEL_EXPORTER_OTLP_ENDPOINT's
    `/v1/traces` (the OTLP/HTTP convention); None: tracing is off."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    return None


def start_tracing(settings: Settings, service: str, *, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Install this process's tracer provider when tracing is configured; None (nothing installed)
    otherwise, or when OTEL_SDK_DISABLED=true. `service` is the default `service.name`
    (OTEL_SERVICE_NAME wins). `exporter`: where spans go instead of OTLP (tests). A second call
    returns the provider the first installed. Call `stop_tracing` before the process exits: it
    sends what is still buffered."""
    global _provider
    if _provider is not None:
        return _provider
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = traces_endpoint(settings)
    if exporter is None and endpoint is None:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Headers (OTEL_EXPORTER_OTLP_HEADERS), timeout and compression: the exporter reads its own variables.
        exporter = OTLPSpanExporter(endpoint=endpoint)
    name = settings.otel_service_name or service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the providers' spans (activities/tracing.py) use the global one
    _provider = provider
    log.info("tracing.started", service=name, endpoint=endpoint)
    return provider


def stop_tracing() -> None:
    """Send the spans still buffered and stop; `connect` and `create_app` add no tracing afterwards."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def active_provider() -> TracerProvider | None:
    """The provider `start_tracing` installed, None while tracing is off."""
    return _provider


def client_interceptors() -> list[Interceptor]:
    """For `Client.connect`: the SDK's tracing interceptor while tracing is on (the client's workers
    take it too), else nothing."""
    if _provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(_provider.get_tracer("temporalio"))]


def instrument_api(app: FastAPI) -> None:
    """A server span per request while tracing is on, named by the route; see `_redact_request`."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        server_request_hook=_redact_request,
        exclude_spans=["receive", "send"],  # one span per request, not one per ASGI message
    )


def _redact_request(span: Span, scope: dict[str, Any]) -> None:
    """The server span names the route template (`/pay/{token}`), never the path it was called with,
    nor the query string or the caller's address."""
    if not span.is_recording():
        return
    route = _route_template(scope)
    attributes = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, route)
    for key in _DROPPED_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, "")


def _route_template(scope: dict[str, Any]) -> str:
    """The matching route's path template, or `unmatched` (a 404's path is the caller's text)."""
    from starlette.routing import Match

    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


def webhook_middleware() -> Callable[..., Any] | None:
    """For the webhook receiver's aiohttp app: a server span per callback, named by its route
    (`POST /webhooks/stripe`), with the response's status; None while tracing is off."""
    if _provider is None:
        return None
    from aiohttp import web
    from opentelemetry import trace

    tracer = _provider.get_tracer("jobctl.webhooks")

    @web.middleware
    async def traced(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        with tracer.start_as_current_span(
            f"{request.method} {route}",
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route},
            record_exception=False,  # a handler's exception text may quote the payload
            set_status_on_exception=False,
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as answer:  # aiohttp's way to answer 400 and the like
                answered(span, answer.status)
                raise
            except BaseException as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                raise
            answered(span, response.status)
            return response

    def answered(span: Span, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status}"))

    return traced


__all__ = [
    "active_provider",
    "client_interceptors",
    "instrument_api",
    "start_tracing",
    "stop_tracing",
    "traces_endpoint",
    "webhook_middleware",
]
