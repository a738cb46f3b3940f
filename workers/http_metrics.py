"""Request ids and HTTP metrics for every process that serves HTTP (the API, the webhook receiver,
the codec server), one way for each web framework.

Each request gets an id: the caller's `X-Request-ID` when it is well-formed (`REQUEST_ID`: 1 to 64
letters, digits, `.`, `_`, `-`, `:`), a new one otherwise. It is bound into structlog's contextvars
for the request (every log line carries `request_id`), echoed in the response's `X-Request-ID` and
written into every problem+json body (`workers/api/problems.py`).

Each process keeps its own registry (`HttpMetrics.registry`), served at its `/metrics`:

- `jobctl_http_requests_total{process, route, method, status_class}`
- `jobctl_http_request_duration_seconds{process, route, method}` (a histogram)

`route` is the route's *template* (`/v1/retailers/{external_id}`), never the path: a path that
matches no route is `unmatched`, so ids in paths never become series. `method` is one of the
standard methods or `other`; `status_class` is `2xx` ... `5xx`.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Seconds: the API's target is p95 < 100 ms (docs/OPERATIONS.md), so the buckets are dense below it.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def request_id(supplied: str | None) -> str:
    """The caller's id when well-formed, else a new one (32 hex digits)."""
    if supplied and REQUEST_ID.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being answered (None outside one)."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def status_class(status: int) -> str:
    return f"{min(max(status // 100, 1), 5)}xx"


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class HttpMetrics:
    """One process's request counter and latency histogram, in its own registry."""

    def __init__(self, process: str, registry: CollectorRegistry | None = None) -> None:
        self.process = process
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "jobctl_http_requests",
            "HTTP requests answered, by route template, method and status class",
            ["process", "route", "method", "status_class"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "jobctl_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["process", "route", "method"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method_label(method)
        self.requests.labels(self.process, route, method, status_class(status)).inc()
        self.duration.labels(self.process, route, method).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# --- ASGI (the API) ----------------------------------------------------------------------------


def asgi_route(scope: Scope) -> str:
    """The template of the route that answered (the router leaves it in the scope), or `unmatched`."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)  # without `:path` convertors
    return path if isinstance(path, str) and path else UNMATCHED


class RequestMetrics:
    """ASGI middleware, outermost: binds the request id, echoes it, counts and times the request.

    The id stays bound when the app raises, so the server's 500 (answered outside this
    middleware) still carries it; uvicorn runs each request in its own task, whose context ends
    with it."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = request_id(headers.get("x-request-id"))
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                raw = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*raw, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.observe(asgi_route(scope), scope["method"], status, time.perf_counter() - started)
        structlog.contextvars.unbind_contextvars("request_id")


# --- aiohttp (the webhook receiver, the codec server) --------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def aiohttp_route(request: web.Request) -> str:
    match_info = request.match_info
    if match_info.http_exception is not None:
        return UNMATCHED
    resource = match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def aiohttp_middleware(metrics: HttpMetrics, *, access_log: bool = True) -> Any:
    """aiohttp middleware: the request id (bound, echoed), the metrics and one access log line per
    request (`http.request`: method, route template, status, ms; no path, no query, no body)."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id(request.headers.get(REQUEST_ID_HEADER))
        route = aiohttp_route(request)
        started = time.perf_counter()
        status = 500
        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                response = await handler(request)
                status = response.status
                response.headers[REQUEST_ID_HEADER] = rid
                return response
            except web.HTTPException as error:
                status = error.status
                error.headers[REQUEST_ID_HEADER] = rid
                raise
            finally:
                elapsed = time.perf_counter() - started
                metrics.observe(route, request.method, status, elapsed)
                if access_log and route != "/metrics":
                    log.info(
                        "http.request",
                        process=metrics.process,
                        method=method_label(request.method),
                        route=route,
                        status=status,
                        duration_ms=round(elapsed * 1000, 1),
                    )

    return observe


def aiohttp_metrics_handler(metrics: HttpMetrics) -> Handler:
    async def serve(_request: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return serve
