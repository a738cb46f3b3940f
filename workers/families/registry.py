"""What a job family contributes, declared in one place per family.

A family module (`workers/families/churn.py`, ...) builds one `Family`. The worker, `schedules
apply`, the webhook receiver, the CLI, the HTTP API, the replay suite and the test workers iterate
`workers.families.FAMILIES`, so adding a family is one new module and one line there.

Everything but the CLI is a function, called only by the process that needs it: `jobctl --help`
imports no workflow, activity or SDK it does not use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer
    from fastapi import APIRouter

    from activities.deps import ActivityDeps
    from config.settings import Settings
    from services import StripeHandler
    from workers.schedules import ScheduleDefinition


def _none(*_: Any) -> Sequence[Any]:
    return ()


@dataclass(frozen=True)
class Family:
    name: str
    cli: Sequence[tuple[str, typer.Typer]] = ()
    """(command group name, Typer app): mounted on `jobctl`."""
    workflows: Callable[[], Sequence[type]] = _none
    """Workflow classes; registered on the `jobs` queue."""
    activities: Callable[[ActivityDeps], Sequence[Callable[..., Any]]] = _none
    """Activities on the `jobs` queue (database and Stripe)."""
    messaging_activities: Callable[[ActivityDeps], Sequence[Callable[..., Any]]] = _none
    """Activities on the `messaging` queue (Twilio, under the queue's rate limit)."""
    schedules: Callable[[], Sequence[ScheduleDefinition]] = _none
    stripe_handlers: Callable[[ActivityDeps], Mapping[str, StripeHandler]] = field(default=lambda *_: {})
    """Stripe event type -> handler, for the webhook receiver (an event type belongs to one family);
    built from the receiver's deps (its Temporal client, engine, settings and one Stripe gateway)."""
    routes: Callable[[], Sequence[APIRouter]] = _none
    """HTTP routers, mounted by `jobctl api` (`workers/api/app.py`); each route names its scope."""
    scopes: Mapping[str, str] = field(default_factory=dict)
    """The API key scopes its routes require (`family:read`, `family:write`) -> what each allows."""
    requires: Callable[[Settings], Mapping[str, Sequence[str]]] = field(default=lambda *_: {})
    """What its activities lack in these settings, by queue (`jobs`, `messaging`): one phrase per
    problem, naming the setting (`STRIPE_SECRET_KEY not set`). Its builders (`activities`,
    `messaging_activities`) always return every activity the workflows route to their queue, so a
    worker polling a queue with anything missing refuses to start (`workers.worker.require_whole`),
    never polls it with some activities unregistered."""
    settings: Sequence[str] = ()
    """The `Settings` fields only this family reads (its settings group); `PROCESS_SETTINGS` holds
    the ones every process shares. Each field belongs to exactly one (`tests/unit`)."""


PROCESS_SETTINGS: tuple[str, ...] = (
    "database_url",
    "database_pool_size",
    "temporal_address",
    "temporal_namespace",
    "temporal_api_key",
    "temporal_tls_cert",
    "temporal_tls_key",
    "task_queue",
    "messaging_task_queue",
    "api_max_body_bytes",
    "business_timezone",
    "payload_encryption_key",
    "codec_server_token",
    "codec_cors_origins",
    # a real cluster (issue #35)
    "temporal_tls_server_ca",
    "temporal_tls_server_name",
    "codec_oidc_issuer",
    "codec_oidc_audience",
    "codec_oidc_jwks_url",
    "codec_oidc_jwks_ttl_seconds",
    # the business console, served by the API process (issue #37)
    "console_secret",
    "console_session_hours",
    "console_oidc_issuer",
    "console_oidc_name",
    "console_oidc_client_id",
    "console_oidc_client_secret",
    "console_oidc_roles_claim",
    "console_oidc_role_map",
    "console_local_login",
    "temporal_ui_url",
    "log_format",
    "log_level",
    "metrics_bind",
    # traces (workers/tracing.py)
    "otel_exporter_otlp_endpoint",
    "otel_exporter_otlp_traces_endpoint",
    "otel_service_name",
    "worker_deployment_name",
    "worker_build_id",
    "public_base_url",
    "webhook_base_url",
    # the dev stack (`jobctl dev`)
    "jobctl_home",
    "temporal_ui_port",
    "twilio_emulator_port",
    "webhooks_port",
    "stripe_sandbox_port",
)
"""Settings of the processes themselves: connections, queues, logs, metrics, the public URLs."""


def routes_of(module: str) -> Callable[[], Sequence[APIRouter]]:
    """`workers/api/routes/<module>.py`'s router, imported only when the API is built (not by the
    worker or `jobctl --help`, which never load FastAPI)."""
    return lambda: [importlib.import_module(f"workers.api.routes.{module}").api]
