"""The HTTP API's application: each family's routers (from the registry), problem+json errors,
health and readiness.

`create_app` takes its settings, database engine and Temporal client (the process, or a test,
owns them), so the same app runs under uvicorn and in the test suite against the real stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from workers import console
from workers.api import contract, problems
from workers.api.auth import SCOPES
from workers.api.limits import BodyLimit
from workers.api.routes import Stack
from workers.api.routes.pay import PayLinkLimits
from workers.business_metrics import BusinessMetrics
from workers.families import FAMILIES, all_schedules
from workers.http_metrics import HttpMetrics, RequestMetrics
from workers.process import readiness
from workers.tracing import instrument_api

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.client import Client

    from config.settings import Settings

DESCRIPTION = (
    """Durable background jobs on Temporal, for a shop's backend.

Authenticate with an API key (`jobctl api-keys create`) as `Authorization: Bearer <key>` (or
`X-API-Key`); `/healthz`, `/readyz`, `/pay/{token}` and `/manage/{token}` need none (nor
`/metrics`, Prometheus text, not in this document). Each route needs one scope; a key
bound to a company holds churn, directory and events scopes only and sees only that company's churn
data, company, members and events. Every POST accepts `Idempotency-Key`: the same key and body
replays the first answer for 24 hours (IDEMPOTENCY_RETENTION_HOURS), another body is 422
`idempotency_key_reused`, and a retry while the first is still running 409 `idempotency_key_in_use`.
A body above 1 MB (API_MAX_BODY_BYTES) is 413, JSON nested past the parser 400. Amounts are decimal
strings with two decimals (`"10.50"`), in and out. A company is `company_id` everywhere (listCases's
`company` is its deprecated former name).

Errors are RFC 9457 problem details (`application/problem+json`): `code` is a stable snake_case
name for programs to branch on and `type` the URI made from it
(`"""
    + problems.PROBLEM_TYPE_BASE
    + """credit-paused` for `credit_paused`); `detail` is for people and may change; `field` and
`errors` name the fields at fault; `request_id` is the request's id (the response's `X-Request-ID`: the
caller's own when well-formed, 1-64 of `A-Za-z0-9._:-`), in every log line about it. The codes:

"""
    + problems.codes_table()
    + """

Scopes: """
    + "; ".join(f"`{s}` {d}" for s, d in SCOPES.items())
)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    temporal: str
    database: str


def create_app(settings: Settings, engine: AsyncEngine, client: Client) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """The process's one Stripe gateway (the pay route's), opened at startup, closed at shutdown."""
        from activities.payments.gateway import open_stripe_gateway

        gateway = open_stripe_gateway(settings, engine)
        app.state.stack = replace(app.state.stack, stripe=gateway)
        try:
            yield
        finally:
            app.state.stack = replace(app.state.stack, stripe=None)
            if gateway is not None:
                await gateway.close()

    # `/docs` (Swagger UI) and `/redoc` serve their scripts from this process, not from a CDN: on a
    # network that reaches no CDN (this stack's dev machines, many shops' servers) FastAPI's own
    # pages are blank.
    app = FastAPIOffline(
        title="jobctl",
        version="1",
        description=DESCRIPTION,
        docs_url="/docs",
        openapi_url="/openapi.json",
        lifespan=lifespan,
        generate_unique_id_function=contract.operation_id,
    )
    # Outside everything else: a body above the limit is refused before it is parsed or a key looked up.
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    # Outermost (added last): every answer, a 413 included, is counted and carries the request id.
    http_metrics = HttpMetrics("api")
    app.add_middleware(RequestMetrics, metrics=http_metrics)
    business = BusinessMetrics(
        engine,
        client,
        schedule_ids=[s.schedule_id for s in all_schedules()],
        task_queues=[settings.task_queue, settings.messaging_task_queue],
    )
    http_metrics.registry.register(business)
    app.state.business_metrics = business
    app.state.stack = Stack(settings, engine, client)
    app.state.engine = engine
    app.state.pay_limits = PayLinkLimits(settings)
    app.state.manage_limits = PayLinkLimits(settings)  # /manage/{token}: the same throttles, its own budget
    problems.install(app)
    tags: dict[str, str | None] = {"health": "Liveness and readiness, for load balancers and orchestrators: no key."}
    for family in FAMILIES:
        for family_router in family.routes():
            app.include_router(family_router)
            for tag in family_router.tags:
                tags.setdefault(str(tag), contract.tag_description(family_router))
    console.mount(app)  # /console: the business console's pages (issue #37), outside the OpenAPI document
    app.openapi_tags = [{"name": name, "description": text} if text else {"name": name} for name, text in tags.items()]
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract.finish(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", response_model=Health, tags=["health"], operation_id="getHealth", summary="Liveness")
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus: the HTTP metrics and the business gauges (read at most every 15 s), no key."""
        if engine is not None:
            await business.refresh()
        return Response(http_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["health"],
        operation_id="getReadiness",
        summary="Readiness",
        responses={503: {"model": Readiness, "description": "Temporal or the database does not answer (which says)"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: Temporal and the database both answer (503 otherwise, saying which)."""
        problems = await readiness(client, engine)
        temporal, database = (f"unavailable: {p}" if p else "ok" for p in (problems["temporal"], problems["database"]))
        ready = temporal == database == "ok"
        body = Readiness(status="ready" if ready else "not ready", temporal=temporal, database=database)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    instrument_api(app)  # a span per request while tracing is on (workers/tracing.py)
    return app


def openapi_document() -> dict:
    """The OpenAPI document, without a stack (for `docs/openapi.json`)."""
    from config.settings import Settings

    return create_app(Settings(), None, None).openapi()  # type: ignore[arg-type]


if __name__ == "__main__":  # python -m workers.api.app > docs/openapi.json
    import json

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
