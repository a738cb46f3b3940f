"""One way to reach Temporal: local dev server or Temporal Cloud, same data converter."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from config.settings import Settings, SettingsError
from workers.codec import data_converter


def tls_config(settings: Settings) -> TLSConfig | bool:
    """mTLS when a client certificate is configured, plain TLS for API keys, none locally."""
    if settings.temporal_tls_cert or settings.temporal_tls_key:
        if not (settings.temporal_tls_cert and settings.temporal_tls_key):
            raise SettingsError("TEMPORAL_TLS_CERT: set together with TEMPORAL_TLS_KEY")
        return TLSConfig(
            client_cert=_read_pem(settings.temporal_tls_cert, "TEMPORAL_TLS_CERT"),
            client_private_key=_read_pem(settings.temporal_tls_key, "TEMPORAL_TLS_KEY"),
        )
    return settings.temporal_api_key is not None


def _read_pem(value: str, name: str) -> bytes:
    """Accept the PEM itself or a path to it (what secret mounts give you)."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value)
    if not path.is_file():
        raise SettingsError(f"{name}: no such file {value!r}")
    return path.read_bytes()


@lru_cache(maxsize=4)
def metrics_runtime(bind: str) -> Runtime:
    """One SDK runtime per process serving Prometheus metrics (SDK and business) at `bind`."""
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=bind, histogram_bucket_overrides={"job_duration": JOB_DURATION_BUCKETS_MS}
            )
        )
    )


# Jobs run from under a second (a payment) to hours (a nightly sweep, a 24-hour order clock).
JOB_DURATION_BUCKETS_MS = [
    ms * 1000.0 for ms in (1, 5, 30, 60, 300, 900, 3600, 3 * 3600, 24 * 3600, 7 * 86400, 30 * 86400)
]


async def connect(settings: Settings, *, lazy: bool = False) -> Client:
    """Pydantic payloads (Decimal amounts stay exact) for every client and worker. `lazy`: connect
    at the first call, so a command refused before it needs Temporal never needs it reachable."""
    return await Client.connect(
        settings.temporal_address,
        lazy=lazy,
        namespace=settings.temporal_namespace,
        api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
        tls=tls_config(settings),
        data_converter=data_converter(
            settings.payload_encryption_key.get_secret_value() if settings.payload_encryption_key else None
        ),
        runtime=metrics_runtime(settings.metrics_bind) if settings.metrics_bind else None,
    )
